"""Test set-up: offline switches before any Hugging Face import, caches in a temp folder, no sockets
except loopback (the upload test runs its own loopback server)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

# Offline switches must be set before huggingface_hub / datasets / transformers are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="imagenet-plus-tests-"))
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf_home")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf_datasets")
os.environ.setdefault("TORCH_HOME", str(_SESSION_TMP / "torch_home"))
# The imagenet-plus cache (tiny models, WordNet folder) is shared by the whole session.
os.environ["IMAGENET_PLUS_CACHE"] = str(_SESSION_TMP / "imagenet_plus_cache")
os.environ.pop("HF_TOKEN", None)
os.environ["MPLBACKEND"] = "Agg"

_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in ("127.0.0.1", "localhost", "::1") and not str(host).startswith("127."):
            raise OSError(f"tests may not open network connections (tried {address!r})")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """A folder shared by the whole test session (the imagenet-plus cache lives below it)."""
    return _SESSION_TMP


# ---------------------------------------------------------------------------------------------
# A fake run folder written straight to the data contract (no diffusion model): fast fixtures for
# the stages downstream of generate. Images are a class colour plus noise, so classes differ.
FAKE_CLASSES = [
    {"label": 0, "id": "n01440764", "name": "tench", "lemmas": ["tench", "Tinca tinca"],
     "definition": "freshwater dace-like game fish of Europe and western Asia", "hypernym": "cyprinid",
     "group": "noun.animal"},
    {"label": 1, "id": "n02102040", "name": "English springer", "lemmas": ["English springer"],
     "definition": "a breed of springer spaniel", "hypernym": "springer spaniel", "group": "noun.animal"},
    {"label": 2, "id": "n03000684", "name": "chain saw", "lemmas": ["chain saw", "chainsaw"],
     "definition": "portable power saw", "hypernym": "power saw", "group": "noun.artifact"},
]


def write_fake_run(root: Path, per_class: int = 8, shard_size: int = 10, size: int = 64, seed: int = 0,
                   classes: list[dict] | None = None) -> Path:
    """Write RUN/run.yaml, RUN/classes.json and RUN/generated/*.tar (+ .json) following the schema."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from imagenet_plus.contract import RunRecord, Segment, ShardStats, make_key, shard_name
    from imagenet_plus.io.tar import PartialTarWriter

    classes = classes or FAKE_CLASSES
    root = Path(root)
    (root / "generated").mkdir(parents=True, exist_ok=True)
    config = {"classes": "fake", "images_per_class": per_class, "model": "fake", "steps": 1, "guidance": 0.0,
              "resolution": size, "seed": seed, "shard_size": shard_size, "image_format": "jpg"}
    initial = Segment("initial", tuple((c["label"], 0, per_class) for c in classes))
    RunRecord(config=config, config_hash="fake", versions={}, num_classes=len(classes),
              num_images=len(classes) * per_class, segments=(initial,)).write(root / "run.yaml")
    (root / "classes.json").write_text(json.dumps(classes, indent=2))
    rng = np.random.default_rng(seed)
    plan = [(c, i) for c in classes for i in range(per_class)]
    for s in range(0, len(plan), shard_size):
        name = shard_name(s // shard_size)
        with PartialTarWriter(root / "generated" / f"{name}.tar") as w:
            for c, i in plan[s:s + shard_size]:
                lab = c["label"]
                colour = np.array([(lab * 97) % 256, (lab * 57 + 80) % 256, (lab * 31 + 160) % 256])
                img = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                meta = {"class_id": c["id"], "class_name": c["name"], "label": c["label"],
                        "prompt": f"a photo of a {c['name']}", "negative_prompt": "", "seed": int(rng.integers(2**31)),
                        "model": "fake", "scheduler": "none", "steps": 1, "guidance": 0.0, "width": size,
                        "height": size, "attempt": 0, "nsfw": False, "strategy": "name", "index": i}
                w.write({"__key__": make_key(c["id"], i), "jpg": buf.getvalue(), "cls": str(c["label"]).encode(),
                         "json": json.dumps(meta, sort_keys=True).encode()})
        chunk = plan[s:s + shard_size]
        ShardStats(shard=name, count=len(chunk), first_key=make_key(chunk[0][0]["id"], chunk[0][1]),
                   last_key=make_key(chunk[-1][0]["id"], chunk[-1][1]), failures=0, failed_keys=[],
                   regenerated={"nsfw": 0, "black": 0}, seconds=0.0, images_per_second=None, rank=0,
                   model="fake").write(root / "generated" / f"{name}.json")
    return root


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A run folder with 3 classes × 8 images in 3 shards (no model involved)."""
    return write_fake_run(tmp_path / "run")


def fake_score_summary(per_class: dict[str, dict], **metrics) -> "ScoreSummary":  # noqa: F821, UP037
    """A ``summary.json`` record as ``score`` writes it, built through the contract (every key present).

    Args:
        per_class: class id → the :class:`~imagenet_plus.contract.ClassScores` fields to set (``count`` at least;
            the others default to plausible values).
        metrics: dataset-level fields to set (``fid=…``, ``reference={…}``, ``models={…}``: the rest default).
    """
    from imagenet_plus.contract import ClassScores, DatasetMetrics, ScoreSummary, SummaryModels
    from imagenet_plus.pipeline.config import config_to_dict
    from imagenet_plus.score.config import ScoreConfig

    classes = {cid: ClassScores(**{"fid": 50.0, "vendi": 3.0, "clip_score_mean": 28.0, "classifier_top1_rate": None,
                                   "classifier_top5_rate": None, "duplicates": 0, **v}) for cid, v in per_class.items()}
    run = {"shards": metrics.pop("shards", []), "bad_shards": [], "reference": metrics.pop("reference", None),
           "reference_arg": metrics.pop("reference_arg", None), "config": config_to_dict(ScoreConfig()),
           "versions": {}}
    models = {"clip": "tiny-random", "inception_weights": "tiny-random", "classifier": "tiny-random",
              "nsfw_detector": "none", "inception_weights_id": "tiny-random", **metrics.pop("models", {})}
    values = {"fid": 123.4, "kid_mean": 0.05, "kid_std": 0.01, "inception_score_mean": 3.2, "inception_score_std": 0.1,
              "clip_score_mean": 28.5, "precision": 0.6, "recall": 0.4, "duplicates": 0, "classifier_top1_rate": None,
              "classifier_top5_rate": None, "num_images": sum(c.count for c in classes.values()), **metrics}
    return ScoreSummary.of(DatasetMetrics(**values, per_class=classes), models=SummaryModels(**models), **run)


# ---------------------------------------------------------------------------------------------
# A real S3 API on loopback (moto's server mode), for the object-storage tests.


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (random port) with the bucket ``bucket``; AWS_ENDPOINT_URL and dummy keys set
    in ``os.environ`` while the module's tests run; stopped after."""
    from s3_server import s3_server

    with s3_server() as server:
        server.make_bucket("bucket")
        yield server


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``generate`` (subprocess, fake model, the safety tests' arguments): what every interrupted or
    refused-then-resumed run of those tests must equal. Read only."""
    from safety_helpers import class_file, fake_cli, generate_args

    folder = tmp_path_factory.mktemp("reference")
    run = folder / "run"
    proc = fake_cli(*generate_args(run, class_file(folder)))
    assert proc.returncode == 0, proc.stderr
    return run
