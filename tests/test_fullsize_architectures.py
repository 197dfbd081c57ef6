"""The full-size architectures of ``benchmarks/architectures/*.json`` against published parameter counts.

Each config is built on the meta device (no memory, no initialisation) and its size compared with the figure
its publisher (or the library that hosts it) states; the figures are facts written here, not values computed
by the code under test. Also: ``benchmarks/fullsize.py`` refuses an unknown model in one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import architectures  # noqa: E402
import fullsize  # noqa: E402

from imagenet_plus.errors import UserError  # noqa: E402

#: Published sizes (millions) of each model of each pipeline, and where the figure is stated.
PUBLISHED_M = {
    "sd-turbo": {
        "unet": 865.9,  # SD 2.x UNet, 865.9 M (diffusers' count of stabilityai/stable-diffusion-2-1 and sd-turbo)
        "vae": 83.7,  # SD's KL-f8 VAE, 83.65 M (CompVis latent-diffusion kl-f8; SD 1.x/2.x/XL vae)
        "text_encoder": 340.4,  # OpenCLIP ViT-H/14 text tower cut at layer 23 of 24: 340.4 M (680.8 MB in fp16)
    },
    "sdxl": {
        "unet": 2567.5,  # SDXL paper (Podell et al. 2023): "2.6B parameters in the UNet"; diffusers: 2,567,463,684
        "vae": 83.7,
        "text_encoder": 123.1,  # OpenAI CLIP ViT-L/14 text tower: 123.06 M
        "text_encoder_2": 694.7,  # OpenCLIP ViT-bigG/14 text tower with projection: 694.66 M (1.39 GB in fp16)
    },
    "flux-schnell": {
        "transformer": 11900.0,  # Black Forest Labs: "a 12 billion parameter rectified flow transformer"; 11.9 B
        "vae": 83.8,  # 16-channel KL-f8 VAE (no quant convs): 83.8 M
        "text_encoder": 123.1,
        "text_encoder_2": 4762.3,  # T5 v1.1 XXL encoder: 4.76 B (9.52 GB in bf16)
    },
    "sd35-medium": {
        # Stability AI: "MMDiT-X ... 2.5 billion parameters" (two significant digits: see the tolerance below);
        # the checkpoint holds 2.47 B numbers, 226 M of them the 384x384 positional embedding.
        "transformer": 2500.0,
        "vae": 83.8,
        "text_encoder": 123.7,  # CLIP ViT-L/14 text tower with its 768x768 projection: 123.65 M
        "text_encoder_2": 694.7,
        "text_encoder_3": 4762.3,
    },
}
SCORERS_M = {
    "clip-vit-l-14": 427.6,  # openai/clip-vit-large-patch14: 428 M parameters (427,616,513)
    # torchvision's inception_v3 is 27.16 M with its auxiliary head (weights meta "num_params": 27161264); without
    # it, 23.8 M; torch-fidelity's port has no auxiliary head and 1008 logits (+16 k).
    "inception-v3": 23.8,
    "convnext-base": 88.6,  # timm convnext_base: 88.6 M params (ConvNeXt paper, Liu et al. 2022: 89 M)
}


def _tolerance(published_m: float) -> float:
    """1 %, or 2 % for a figure published with two significant digits (2.5 B)."""
    return 0.02 if published_m == 2500.0 else 0.01


@pytest.mark.parametrize("name", architectures.PIPELINES)
def test_pipeline_models_match_published_sizes(name: str) -> None:
    counts = architectures.pipeline_parameter_counts(name)
    assert set(counts) == set(PUBLISHED_M[name])
    for part, published in PUBLISHED_M[name].items():
        assert counts[part] / 1e6 == pytest.approx(published, rel=_tolerance(published)), (name, part, counts[part])


def test_scorers_match_published_sizes() -> None:
    counts = architectures.scorer_parameter_counts()
    for name, published in SCORERS_M.items():
        assert counts[name] / 1e6 == pytest.approx(published, rel=0.01), (name, counts[name])


def test_meta_build_allocates_nothing() -> None:
    pipe = architectures.build_pipeline("sd-turbo", meta=True)
    assert {p.device.type for p in pipe.unet.parameters()} == {"meta"}
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_unknown_model_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="unknown model 'sd9'"):
        fullsize.parse_args(["--model", "sd9"])
    with pytest.raises(SystemExit) as exc:
        fullsize.main(["--model", "sd9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown model 'sd9'") and "sd-turbo" in err


def test_unknown_model_from_the_command_line() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fullsize.py"), "--model", "dalle"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown model 'dalle' (choose from sd-turbo, sdxl, flux-schnell, sd35-medium)"
    ]
    assert done.stdout == ""


@pytest.mark.slow
def test_model_larger_than_host_memory_is_skipped_with_a_message() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fullsize.py"), "--model", "sdxl",
                           "--host-memory-gib", "8"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "fullsize_skipped=1"
    assert lines[-2].startswith("skipped: sdxl needs 12.9 GiB for its float32 weights")
