"""Generate config: YAML + flags, validation naming the key."""

from __future__ import annotations

import pytest

from imagenet_plus.errors import UserError
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.pipeline.config import split_config_file


def test_file_keys_are_flags_and_flags_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("images-per-class: 4\nmodel: tiny-random\nbatch_size: 2\nprompt-strategy: [name, diverse]\n"
                 "score:\n  clip_model: tiny-random\n")
    cfg = load_generate_config(f, {"batch_size": 3, "seed": None})
    assert cfg.images_per_class == 4 and cfg.batch_size == 3 and cfg.model == "tiny-random"
    assert cfg.prompt_strategy == ("name", "diverse")
    assert split_config_file(f)[1] == {"score": {"clip_model": "tiny-random"}}


def test_resolved_fills_presets_and_hash_ignores_batch_and_count():
    cfg = GenerateConfig(model="stabilityai/sd-turbo").resolved()
    assert (cfg.steps, cfg.guidance, cfg.resolution) == (1, 0.0, 512)
    a = GenerateConfig(model="tiny-random", batch_size=2, images_per_class=3)
    b = GenerateConfig(model="tiny-random", batch_size=7, images_per_class=9)
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != GenerateConfig(model="tiny-random", seed=1).config_hash()


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        ({"images_per_class": 0}, "images-per-class"),
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch-size"),
        ({"resolution": 500}, "resolution"),
        ({"prompt_strategy": "name,fancy"}, "fancy"),
        ({"image_format": "gif"}, "image-format"),
        ({"quality": 101}, "quality"),
        ({"images_per_class": "many"}, "images_per_class"),
        ({"dtype": "float8"}, "dtype"),
    ],
)
def test_invalid_values_name_the_key(overrides, culprit):
    with pytest.raises(UserError, match=culprit):
        load_generate_config(None, overrides)


def test_unknown_key_and_malformed_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("imagez-per-class: 3\n")
    with pytest.raises(UserError, match=r"unknown key 'imagez-per-class'"):
        load_generate_config(f)
    f.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=r"malformed YAML \(line"):
        load_generate_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_generate_config(f)
    with pytest.raises(UserError, match="config file not found"):
        load_generate_config(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------------
# Presets and families (FLUX.1, SD 3.5)


@pytest.mark.parametrize(
    "model, family, steps, guidance, resolution, max_len",
    [
        ("black-forest-labs/FLUX.1-schnell", "flux", 4, 0.0, 1024, 256),
        ("black-forest-labs/FLUX.1-dev", "flux", 50, 3.5, 1024, 512),
        ("stabilityai/stable-diffusion-3.5-large", "sd3", 28, 3.5, 1024, 256),
        ("stabilityai/stable-diffusion-3.5-large-turbo", "sd3", 4, 0.0, 1024, 256),
        ("stabilityai/stable-diffusion-3.5-medium", "sd3", 40, 4.5, 1024, 256),
        ("stabilityai/sd-turbo", "sd", 1, 0.0, 512, None),
        ("tiny-random-flux", "flux", 2, 3.5, 32, 64),
    ],
)
def test_presets_of_the_model_cards(model, family, steps, guidance, resolution, max_len):
    cfg = GenerateConfig(model=model).resolved()
    assert (cfg.family, cfg.steps, cfg.guidance, cfg.resolution, cfg.max_sequence_length) == (
        family, steps, guidance, resolution, max_len)
    # explicit settings win, and what was used is what run.yaml records (the resolved config)
    cfg = GenerateConfig(model=model, steps=3, resolution=512).resolved()
    assert (cfg.steps, cfg.resolution) == (3, 512)


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"model": "black-forest-labs/FLUX.1-schnell", "negative_prompt": "blurry"}, "'negative-prompt' is not"),
        ({"model": "tiny-random-flux", "negative_prompt": "default"}, "flux pipelines have no negative prompt"),
        ({"model": "someone/new-model"}, "model 'someone/new-model' has no preset: give 'steps'"),
        ({"model": "stabilityai/sd-turbo", "max_sequence_length": 77}, "'max-sequence-length' is for T5-based"),
        ({"model": "black-forest-labs/FLUX.1-schnell", "guidance": 3.5}, "'guidance' must be 0"),
        ({"model": "stabilityai/stable-diffusion-3.5-medium", "resolution": 520}, "multiple of 16"),
        ({"model": "stabilityai/sd-turbo", "family": "flux"}, "'family' 'flux' contradicts"),
        ({"model": "x/y", "steps": 4, "family": "dalle"}, "'family' must be one of"),
        ({"offload": "gpu"}, "'offload' must be one of none, model, sequential"),
    ],
)
def test_settings_a_family_cannot_take_are_refused(kwargs, culprit):
    with pytest.raises(UserError, match=culprit):
        GenerateConfig(**kwargs).resolved()


def test_sd3_takes_a_negative_prompt_and_unknown_models_use_family_defaults(tmp_path):
    cfg = GenerateConfig(model="stabilityai/stable-diffusion-3.5-large", negative_prompt="blurry").resolved()
    assert cfg.negative_prompt == "blurry"
    cfg = GenerateConfig(model="someone/flux-finetune", steps=8, family="flux").resolved()
    assert (cfg.guidance, cfg.resolution, cfg.max_sequence_length) == (3.5, 1024, 512)
    # a local folder's family comes from its model_index.json
    folder = tmp_path / "my-sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    cfg = GenerateConfig(model=str(folder), steps=10).resolved()
    assert cfg.family == "sd3" and cfg.max_sequence_length == 256
    flux = tmp_path / "my-flux"
    flux.mkdir()
    (flux / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(UserError, match="'negative-prompt' is not supported"):
        GenerateConfig(model=str(flux), steps=10, negative_prompt="blurry").resolved()


def test_offload_and_compile_do_not_change_the_hash():
    a = GenerateConfig(model="tiny-random")
    assert a.config_hash() == GenerateConfig(model="tiny-random", offload="model", compile=True).config_hash()
    assert a.config_hash() != GenerateConfig(model="tiny-random", max_sequence_length=None, steps=3).config_hash()
