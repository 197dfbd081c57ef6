"""Issue 20, item 4: no network is named in seconds, the same way for every model loader; cached models still load.

"No network" is a Hub endpoint on a closed loopback port (``HF_ENDPOINT``; connections are refused at once, as
on a machine without network or behind a firewall that rejects) with ``HF_HUB_OFFLINE`` off, and an empty cache.
Every loader (the diffusers pipeline, CLIP and the NSFW detector through transformers, a timm classifier,
torch-fidelity's default weights) must then stop with one ``ModelUnavailable`` line saying the Hub cannot be
reached and the model is not in the local cache, how to download it, within seconds (asserted < 10 s; the times
measured are printed). With the model's files in the Hugging Face cache (written in the cache's documented layout:
``models--ORG--NAME/refs/main`` and ``snapshots/COMMIT/``), the same unreachable Hub loads it from the cache.

The console script is checked end to end in a subprocess: ``generate`` with a Hub model offline (before the fix:
a diffusers deprecation warning, six retry lines, ~25 s, a blame on model_index.json, and a run.yaml that locked
the folder to that model) and ``publish --dry-run`` (before: 26 s of retries, the cause repeated twice).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagenet_plus.errors import ModelUnavailable

#: The bound the issue sets for the error (what was measured is printed: a few tenths of a second in process).
LIMIT_S = 10.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): a connection there is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """The Hub at a closed loopback port, with huggingface_hub's offline switch off (conftest turns it on)."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def put_in_hub_cache(repo_id: str, folder: Path) -> Path:
    """Copy ``folder`` into the Hugging Face cache as the main revision of the model repo ``repo_id``."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def _timed_refusal(load, endpoint: str, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as err:
        load()
    seconds = time.perf_counter() - start
    message = err.value.message
    assert message.startswith(f"cannot reach the Hugging Face Hub at {endpoint} (offline?) and {what} is not in "
                              "the local cache"), message
    assert "hf download" in message and "or pass a local folder" in message and "\n" not in message
    assert seconds < LIMIT_S
    print(f"{what}: ModelUnavailable after {seconds:.2f} s")
    return seconds


def test_every_hub_loader_names_the_missing_network_in_seconds(unreachable_hub: str) -> None:
    import torch

    from imagenet_plus.models.diffusion import load_pipeline
    from imagenet_plus.score.scorers.classifier import ClassifierScorer
    from imagenet_plus.score.scorers.clip import ClipScorer
    from imagenet_plus.score.scorers.nsfw import NsfwScorer

    cpu = torch.device("cpu")
    _timed_refusal(lambda: load_pipeline("stabilityai/sd-turbo", cpu), unreachable_hub, "model 'stabilityai/sd-turbo'")
    _timed_refusal(lambda: ClipScorer("openai/clip-vit-large-patch14"), unreachable_hub,
                   "CLIP model 'openai/clip-vit-large-patch14'")
    _timed_refusal(lambda: NsfwScorer("Falconsai/nsfw_image_detection"), unreachable_hub,
                   "NSFW detector 'Falconsai/nsfw_image_detection'")
    _timed_refusal(lambda: ClassifierScorer("convnext_base.fb_in22k_ft_in1k"), unreachable_hub,
                   "classifier 'convnext_base.fb_in22k_ft_in1k'")
    _timed_refusal(lambda: ClassifierScorer("hf-hub:timm/resnet18.a1_in1k"), unreachable_hub,
                   "classifier 'hf-hub:timm/resnet18.a1_in1k'")


def test_torch_fidelity_weights_offline_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default Inception weights: not cached and github.com unreachable → one line; cached → loaded, offline."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from huggingface_hub import constants

    from imagenet_plus.score.scorers.inception import InceptionScorer, tiny_inception_weights

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=r"cannot reach github.com \(offline\?\) and torch-fidelity's "
                                               r"InceptionV3 weights file is not in the local cache .*--inception"):
        InceptionScorer(None)  # conftest refuses every non-loopback connection: github.com cannot be reached
    assert time.perf_counter() - start < LIMIT_S
    cached = tmp_path / "hub" / "checkpoints" / Path(fe.URL_INCEPTION_V3).name
    cached.parent.mkdir(parents=True)
    shutil.copyfile(tiny_inception_weights(), cached)
    scorer = InceptionScorer(None)  # torch-fidelity's own loader reads the cached checkpoint
    reference = InceptionScorer(str(tiny_inception_weights()))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(scorer.forward(images)[0], reference.forward(images)[0])


def test_cached_hub_models_load_with_the_hub_unreachable(unreachable_hub: str) -> None:
    """A Hub id whose files are in the Hugging Face cache loads from there: no request, the same weights."""
    import torch

    from imagenet_plus.models.diffusion import load_pipeline, model_location
    from imagenet_plus.score.scorers.classifier import ClassifierScorer, tiny_classifier_dir
    from imagenet_plus.score.scorers.clip import ClipScorer, tiny_clip_dir
    from imagenet_plus.score.scorers.nsfw import NsfwScorer, tiny_nsfw_dir

    cpu = torch.device("cpu")
    put_in_hub_cache("cached/tiny-sd", Path(model_location("tiny-random")))
    start = time.perf_counter()
    pipe = load_pipeline("cached/tiny-sd", cpu, "float32")
    folder = load_pipeline(model_location("tiny-random"), cpu, "float32")
    assert time.perf_counter() - start < 60
    for name, module in folder.components.items():
        if isinstance(module, torch.nn.Module):
            for (k, a), (_, b) in zip(module.state_dict().items(), pipe.components[name].state_dict().items()):
                assert torch.equal(a, b), (name, k)

    put_in_hub_cache("cached/tiny-clip", tiny_clip_dir())
    texts = ["a photo of a tench", "a photo of a goldfish"]
    np.testing.assert_array_equal(ClipScorer("cached/tiny-clip").embed_texts(texts).numpy(),
                                  ClipScorer(str(tiny_clip_dir())).embed_texts(texts).numpy())
    put_in_hub_cache("cached/tiny-nsfw", tiny_nsfw_dir())
    assert NsfwScorer("cached/tiny-nsfw").model.config.id2label == {0: "normal", 1: "nsfw"}

    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    expected = ClassifierScorer(str(tiny_classifier_dir())).probabilities(images)
    put_in_hub_cache("cached/tiny-timm", tiny_classifier_dir())  # an hf-hub: timm model (config.json + weights)
    torch.testing.assert_close(ClassifierScorer("hf-hub:cached/tiny-timm").probabilities(images), expected)
    # a timm name whose pretrained weights live on the Hub as timm/NAME: the cached weights file is used
    weights_only = put_in_hub_cache("timm/test_convnext.r160_in1k", tiny_classifier_dir())
    (weights_only / "config.json").unlink()
    cached = ClassifierScorer("test_convnext.r160_in1k")
    reference = ClassifierScorer(str(tiny_classifier_dir()))
    for (k, a), (_, b) in zip(cached.model.state_dict().items(), reference.model.state_dict().items()):
        assert torch.equal(a, b), k


def _cli(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "imagenet_plus", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    return proc, time.perf_counter() - start


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """The user's environment with no network: the Hub at a closed port, offline switches off, an empty HF cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                              "HF_DATASETS_OFFLINE")}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf_home")}


@pytest.mark.slow
def test_generate_offline_is_one_line_in_seconds_and_leaves_no_run_yaml(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    run = tmp_path / "R"
    classes = tmp_path / "classes.csv"
    classes.write_text("name,id\nred apple,red_apple\nbanana,banana\n")
    args = ["generate", "--out", str(run), "--classes", str(classes), "--images-per-class", "1"]
    proc, seconds = _cli(*args, "--model", "stabilityai/sd-turbo", env=env)
    print(f"generate --model stabilityai/sd-turbo offline: exit {proc.returncode} after {seconds:.1f} s "
          "(whole command, start-up included)")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Hugging Face Hub at "), proc.stderr
    assert "model 'stabilityai/sd-turbo' is not in the local cache" in lines[0] and "Retry" not in proc.stderr
    assert seconds < LIMIT_S + 20  # start-up (torch, the class set) comes on top of the error's own seconds
    assert not (run / "run.yaml").exists()
    # the next attempt, with another model, is not refused: the folder was not tied to the first one
    proc, _ = _cli(*args, "--model", "tiny-random", "--resolution", "32", "--steps", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny-random" in (run / "run.yaml").read_text()


@pytest.mark.slow
def test_publish_dry_run_offline_is_quick_and_says_it_once(tmp_path: Path) -> None:
    from release_fixtures import make_release

    rel = make_release(tmp_path / "made", per_class=6, quota=4, val_per_class=1, shard_size=4, license="apache-2.0")
    env = _offline_env(tmp_path)
    proc, seconds = _cli("publish", str(rel), "--repo-id", "user/name", "--dry-run", env=env)
    print(f"publish --dry-run offline: exit {proc.returncode} after {seconds:.1f} s (whole command)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Retry" not in proc.stderr and proc.stdout.count("cannot reach") == 1
    assert f"cannot reach the Hugging Face Hub at {env['HF_ENDPOINT']} (offline?): repo not listed" in proc.stdout
    assert seconds < LIMIT_S + 20


def test_publish_checks_the_token_before_reading_the_release(tmp_path: Path) -> None:
    """No token: said at once, before the shards are read to their end (here a truncated one)."""
    from release_fixtures import make_release

    from imagenet_plus.errors import UserError
    from imagenet_plus.publish import PublishConfig, run_publish

    rel = make_release(tmp_path, per_class=6, quota=4, val_per_class=1, shard_size=4, license="apache-2.0")
    shard = rel / "data" / "train-00000.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(UserError, match="^no Hugging Face token"):
        run_publish(rel, PublishConfig(repo_id="user/name"))
    with pytest.raises(UserError, match="train-00000.tar"):  # a dry run needs no token: the shard is read
        run_publish(rel, PublishConfig(repo_id="user/name", dry_run=True))


def test_hub_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagenet_plus.errors import UserError
    from imagenet_plus.models.hub import DEFAULT_PROBE_TIMEOUT, probe_timeout

    monkeypatch.delenv("IMAGENET_PLUS_HUB_TIMEOUT", raising=False)
    assert probe_timeout() == DEFAULT_PROBE_TIMEOUT
    monkeypatch.setenv("IMAGENET_PLUS_HUB_TIMEOUT", "0.5")
    assert probe_timeout() == 0.5
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv("IMAGENET_PLUS_HUB_TIMEOUT", bad)
        with pytest.raises(UserError, match=f"IMAGENET_PLUS_HUB_TIMEOUT='{bad}': expected a positive number"):
            probe_timeout()
