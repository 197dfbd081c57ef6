"""Pipeline loading: tiny SD/FLUX/SD3 round trips through from_pretrained, argument mapping per family,
dtypes, compile, clear errors for absent models and impossible offload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagenet_plus.errors import ModelUnavailable, UserError
from imagenet_plus.models.diffusion import DiffusersSource, load_pipeline, model_location


def test_tiny_random_is_saved_once_and_loaded_back(tmp_path):
    pipe = load_pipeline("tiny-random", torch.device("cpu"), "float32")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert model_location("tiny-random") == model_location("tiny-random")
    src = DiffusersSource(pipe, steps=2, guidance=2.0, width=32, height=32)
    imgs, nsfw = src(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert [im.size for im in imgs] == [(32, 32)] * 2 and nsfw == [False, False]
    # an image depends on its own seed and prompt, not on the batch it is in
    alone, _ = src(["a photo of a dog"], [""], [2])
    np.testing.assert_allclose(np.asarray(alone[0], np.float32), np.asarray(imgs[1], np.float32), atol=2)
    # save_pretrained → from_pretrained reproduces images exactly
    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusersSource(load_pipeline(str(tmp_path / "copy"), torch.device("cpu"), "float32"), 2, 2.0, 32, 32)
    imgs2, _ = again(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, imgs2))


def test_absent_models_are_errors_not_fallbacks(tmp_path):
    with pytest.raises(UserError, match="model path not found: ./missing/model"):
        load_pipeline("./missing/model", torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"), torch.device("cpu"))
    # a Hub id while offline (the tests run with HF_HUB_OFFLINE=1): named as not cached, how to get it
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE is set and model 'nobody/no-such-model' is not in "
                                               "the local cache.*hf download nobody/no-such-model"):
        load_pipeline("nobody/no-such-model", torch.device("cpu"))


# --------------------------------------------------------------------------------------------------
# FLUX.1 and SD 3.5: tiny pipelines of the real architectures, argument mapping, dtype, compile

TINY = ["tiny-random", "tiny-random-flux", "tiny-random-sd3"]


def test_tiny_flux_and_sd3_are_the_real_architectures():
    import json
    from pathlib import Path

    flux = json.loads((Path(model_location("tiny-random-flux")) / "model_index.json").read_text())
    assert flux["_class_name"] == "FluxPipeline"
    assert flux["transformer"][1] == "FluxTransformer2DModel" and flux["text_encoder_2"][1] == "T5EncoderModel"
    assert flux["scheduler"][1] == "FlowMatchEulerDiscreteScheduler"
    sd3 = json.loads((Path(model_location("tiny-random-sd3")) / "model_index.json").read_text())
    assert sd3["_class_name"] == "StableDiffusion3Pipeline"
    assert sd3["text_encoder"][1] == sd3["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    assert sd3["text_encoder_3"][1] == "T5EncoderModel" and sd3["transformer"][1] == "SD3Transformer2DModel"
    for name in ("tiny-random-flux", "tiny-random-sd3"):
        pipe = load_pipeline(name, torch.device("cpu"), "float32")
        assert pipe.vae.config.latent_channels == 16
        # the T5 tokenizer was built offline and loads back as a T5 tokenizer, one id per character + </s>
        tok = pipe.tokenizer_2 if name == "tiny-random-flux" else pipe.tokenizer_3
        assert "T5" in type(tok).__name__
        ids = tok("a cat").input_ids
        assert ids[-1] == tok.eos_token_id and len(ids) == len("▁a▁cat") + 1
        assert tok.unk_token_id not in ids


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-random-flux", "tiny-random-sd3"])
def test_tiny_transformer_pipelines_are_deterministic_per_image(tmp_path, model):
    pipe = load_pipeline(model, torch.device("cpu"), "float32")
    src = DiffusersSource(pipe, steps=2, guidance=3.5, width=32, height=32, max_sequence_length=32)
    imgs, nsfw = src(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert [im.size for im in imgs] == [(32, 32)] * 2 and nsfw == [False, False]
    assert not np.array_equal(np.asarray(imgs[0]), np.asarray(imgs[1]))
    alone, _ = src(["a photo of a dog"], [""], [2])
    np.testing.assert_allclose(np.asarray(alone[0], np.float32), np.asarray(imgs[1], np.float32), atol=2)
    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusersSource(load_pipeline(str(tmp_path / "copy"), torch.device("cpu"), "float32"), 2, 3.5, 32, 32,
                            max_sequence_length=32)
    assert again.family == src.family
    imgs2, _ = again(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, imgs2))


def test_arguments_are_mapped_per_family():
    from imagenet_plus.models.diffusion import pipeline_kwargs

    base = dict(steps=4, guidance=0.0, width=64, height=48, max_sequence_length=256)
    flux = pipeline_kwargs("flux", negatives=["", ""], **base)
    assert flux == {"num_inference_steps": 4, "guidance_scale": 0.0, "height": 48, "width": 64,
                    "max_sequence_length": 256}
    sd3 = pipeline_kwargs("sd3", negatives=["blurry", "blurry"], **base)
    assert sd3["negative_prompt"] == ["blurry", "blurry"] and sd3["max_sequence_length"] == 256
    sd = pipeline_kwargs("sd", negatives=["blurry"], **base)
    assert "max_sequence_length" not in sd and sd["negative_prompt"] == ["blurry"]
    with pytest.raises(UserError, match="flux"):
        pipeline_kwargs("flux", negatives=["blurry"], **base)


def test_the_pipeline_family_is_read_from_the_loaded_class():
    pipe = load_pipeline("tiny-random-flux", torch.device("cpu"), "float32")
    assert DiffusersSource(pipe, 1, 0.0, 32, 32).family == "flux"
    with pytest.raises(UserError, match="not a sd3 pipeline"):
        DiffusersSource(pipe, 1, 0.0, 32, 32, family="sd3")
    # a negative prompt for a model whose family was unknown at config time is refused once loaded
    with pytest.raises(UserError, match="negative-prompt"):
        DiffusersSource(pipe, 1, 0.0, 32, 32).check_arguments("some/flux-finetune", "blurry")


@pytest.mark.parametrize("model", TINY)
def test_bfloat16_loads_every_component_in_bfloat16(model):
    pipe = load_pipeline(model, torch.device("cpu"), "bfloat16")
    modules = {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    expected = {"tiny-random": {"unet", "vae", "text_encoder"},
                "tiny-random-flux": {"transformer", "vae", "text_encoder", "text_encoder_2"},
                "tiny-random-sd3": {"transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"}}[model]
    assert set(modules) == expected
    for name, module in modules.items():
        dtypes = {p.dtype for p in module.parameters()}
        dtypes |= {b.dtype for b in module.buffers() if b.is_floating_point()}
        assert dtypes == {torch.bfloat16}, f"{model}: {name} has {dtypes}"
    # and float32 really is float32 (the check above can fail)
    pipe32 = load_pipeline(model, torch.device("cpu"), "float32")
    assert {p.dtype for p in pipe32.vae.parameters()} == {torch.float32}


def test_offload_is_refused_without_a_gpu():
    with pytest.raises(UserError, match=r"--offload model .*\(no CUDA GPU\)"):
        load_pipeline("tiny-random", torch.device("cpu"), offload="model")
    with pytest.raises(UserError, match="--offload sequential"):
        load_pipeline("tiny-random", torch.device("cpu"), offload="sequential")


#: Largest pixel difference (0-255) accepted between the compiled and the eager path.
COMPILE_TOLERANCE = 2


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_compiled_pipeline_gives_the_same_images(model):
    """--compile's recipe (fused QKV, channels-last, torch.compile of denoiser and VAE decoder) on the CPU.

    Traced with the ``aot_eager`` backend: the same graphs inductor receives, without minutes of C++ kernel
    builds on a 2-core CI machine (inductor on CPU took 3-5 minutes per tiny pipeline here).
    """
    from imagenet_plus.models.diffusion import compile_pipeline

    args = (["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    eager = DiffusersSource(load_pipeline(model, torch.device("cpu"), "float32"), 2, 2.0, 32, 32)
    pipe = load_pipeline(model, torch.device("cpu"), "float32")
    done = compile_pipeline(pipe, torch.device("cpu"), backend="aot_eager")
    assert "compile:denoiser" in done and "compile:vae-decoder" in done
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert denoiser._compiled_call_impl is not None and pipe.vae.decoder._compiled_call_impl is not None
    if model != "tiny-random-sd3":  # SD 3.5's dual attention runs unfused
        assert "fused-qkv:denoiser" in done
    compiled = DiffusersSource(pipe, 2, 2.0, 32, 32)
    a, _ = eager(*args)
    b, _ = compiled(*args)
    for x, y in zip(a, b):
        diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()
        assert diff <= COMPILE_TOLERANCE


def test_card_license_follows_the_model_and_unknown_models_need_one():
    from imagenet_plus.models.registry import model_license

    assert model_license("black-forest-labs/FLUX.1-schnell")[0] == "apache-2.0"
    lic, name, link, note = model_license("black-forest-labs/FLUX.1-dev")
    assert (lic, name) == ("other", "flux-1-dev-non-commercial-license")
    assert link.endswith("FLUX.1-dev/blob/main/LICENSE.md")
    for sd35 in ("large", "large-turbo", "medium"):
        lic, name, link, _ = model_license(f"stabilityai/stable-diffusion-3.5-{sd35}")
        assert (lic, name) == ("other", "stabilityai-ai-community") and f"stable-diffusion-3.5-{sd35}/" in link
    # every preset has a known license
    from imagenet_plus.models.registry import MODELS

    for model in MODELS:
        model_license(model, required=True)
    # an unknown model: 'other' with a warning note for the card, an error when publishing…
    assert model_license("someone/new-model")[0] == "other"
    with pytest.raises(UserError, match="license of model 'someone/new-model' is unknown"):
        model_license("someone/new-model", required=True)
    # …unless the publisher names one
    assert model_license("someone/new-model", "mit", required=True)[:3] == ("mit", None, None)
    assert model_license("someone/new-model", "other:my-terms:https://example.org/terms", required=True)[:3] == (
        "other", "my-terms", "https://example.org/terms")
    with pytest.raises(UserError, match="other:NAME:LINK"):
        model_license("someone/new-model", "other:only-a-name")


def test_a_build_without_weights_is_never_published(tmp_path):
    """transformers 5 saves nothing on ranks other than 0 under torch.distributed: such builds are detected."""
    import json

    from imagenet_plus.models.tiny import weights_missing, write_once

    def build(folder, with_text_encoder=True):
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "config.json").write_text("{}")
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "P", "unet": ["diffusers", "U"], "text_encoder": ["transformers", "T"],
             "safety_checker": [None, None]}))
        if with_text_encoder:
            (folder / "text_encoder").mkdir()
            (folder / "text_encoder" / "config.json").write_text("{}")
            (folder / "text_encoder" / "model.safetensors").write_bytes(b"x")

    complete, partial = tmp_path / "complete", tmp_path / "partial"
    build(complete)
    build(partial, with_text_encoder=False)
    assert weights_missing(complete) == [] and weights_missing(partial) == [partial / "text_encoder"]
    (complete / "text_encoder" / "model.safetensors").unlink()
    assert weights_missing(complete) == [complete / "text_encoder"]
    # a process whose build lacks weights waits for another's complete build instead of publishing its own
    import threading

    target = tmp_path / "cache" / "model"
    target.mkdir(parents=True)
    threading.Timer(0.5, lambda: (target / ".complete").write_text("ok\n")).start()
    assert write_once(target, lambda f: build(f, with_text_encoder=False)) == target
    assert not (target / "unet").exists()  # the incomplete build was thrown away
