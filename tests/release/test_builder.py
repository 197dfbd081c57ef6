"""Tests for builder_script/imagenet_plus_builder.py: typed columns, prepared and streaming; never a script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import FAKE_CLASSES
from release_fixtures import make_release

from imagenet_plus.contract import INFO_NAME

BUILDER = Path(__file__).resolve().parents[2] / "builder_script" / "imagenet_plus_builder.py"
WNIDS = [c["id"] for c in FAKE_CLASSES]


def _module():  # type: ignore[no-untyped-def]
    """Import the builder as its docstring says (datasets re-imports the module by name)."""
    if "imagenet_plus_builder" not in sys.modules:
        spec = importlib.util.spec_from_file_location("imagenet_plus_builder", BUILDER)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["imagenet_plus_builder"] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules["imagenet_plus_builder"]


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_release(tmp_path_factory.mktemp("builder"), per_class=6, quota=5, val_per_class=1, shard_size=4)


def _check_row(row: dict, info: dict) -> None:
    from PIL import Image

    assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
    assert row["class_id"] == WNIDS[row["label"]]
    assert row["key"].startswith(row["class_id"] + "_")
    assert row["prompt"].startswith("a photo of") and isinstance(row["seed"], int)
    assert row["clip_score"] > 0 and 0 <= row["composite"] <= 1 and row["classifier_top1"] is None


def test_prepared_dataset_has_typed_columns(rel: Path, tmp_path: Path) -> None:
    import datasets

    info = json.loads((rel / INFO_NAME).read_text())
    builder = _module().ImagenetPlusBuilder(data_dir=str(rel), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    train = builder.as_dataset(split="train")
    assert train.num_rows == info["splits"]["train"]["num_samples"]
    assert builder.as_dataset(split="validation").num_rows == info["splits"]["validation"]["num_samples"]
    f = train.features
    assert isinstance(f["image"], datasets.Image)
    assert isinstance(f["label"], datasets.ClassLabel) and f["label"].names == WNIDS
    assert f["seed"] == datasets.Value("int64") and f["clip_score"] == datasets.Value("float64")
    assert f["classifier_top5"] == datasets.Value("bool") and f["prompt"] == datasets.Value("string")
    for row in train:
        _check_row(row, info)
    assert not list(rel.rglob("*.arrow")), "the cache stays outside the release"


def test_streaming_dataset_has_typed_columns(rel: Path, tmp_path: Path) -> None:
    import datasets

    info = json.loads((rel / INFO_NAME).read_text())
    builder = _module().ImagenetPlusBuilder(data_dir=str(rel), cache_dir=str(tmp_path / "cache"))
    stream = builder.as_streaming_dataset(split="train")
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    assert len(rows) == info["splits"]["train"]["num_samples"]
    assert stream.features["label"].names == WNIDS
    for row in rows:
        _check_row(row, info)
    # the same keys as the packaged webdataset path
    ref = datasets.load_dataset(str(rel), split="train", streaming=True)
    assert sorted(r["key"] for r in rows) == sorted(r["__key__"] for r in ref)


def test_builder_is_refused_as_a_script(tmp_path: Path) -> None:
    """What the docstring says: datasets >= 4 runs no dataset scripts, so the builder must be imported."""
    import datasets

    with pytest.raises(RuntimeError, match="Dataset scripts are no longer supported"):
        datasets.load_dataset(str(BUILDER), data_dir=str(tmp_path))
