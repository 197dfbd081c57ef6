"""Tests for imagenet_plus.release: layout, split, shuffle, bytes copied, loaders read it, safety."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from conftest import FAKE_CLASSES, write_fake_run
from release_fixtures import check_cli_error, check_subprocess_error, make_release, run_cli, write_fake_scores
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError
from imagenet_plus.release import ReleaseConfig, num_shards_for, run_release, split_evenly
from imagenet_plus.select import SelectConfig, run_select
from imagenet_plus.shards import iter_shard

WNIDS = [c["id"] for c in FAKE_CLASSES]


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 8 generated, 6 kept per class: 4 train + 2 validation each; shards of at most 4."""
    tmp = tmp_path_factory.mktemp("release")
    return make_release(tmp, per_class=8, quota=6, val_per_class=2, shard_size=4, imagefolder=tmp / "imagefolder")


def _all_samples(rel: Path, split: str) -> list[dict]:
    info = json.loads((rel / "_info.json").read_text())
    return [s for f in info["splits"][split]["filenames"] for s in iter_shard(rel / f)]


def test_num_shards_have_many_divisors() -> None:
    assert [num_shards_for(n, 10) for n in (0, 5, 10, 11, 25, 35, 81, 200)] == [0, 1, 1, 2, 4, 4, 16, 24]
    assert num_shards_for(3, 1) == 3  # never more shards than samples
    assert [len(c) for c in split_evenly(list(range(10)), 4)] == [3, 3, 2, 2]


def test_layout_and_info(rel: Path) -> None:
    info = json.loads((rel / "_info.json").read_text())
    assert (rel / "README.md").is_file()
    train, val = info["splits"]["train"], info["splits"]["validation"]
    assert train["filenames"] == [f"data/train-{i:05d}.tar" for i in range(4)]
    assert val["filenames"] == ["data/validation-00000.tar", "data/validation-00001.tar"]
    assert train["num_samples"] == 12 == sum(train["shard_lengths"]) and val["num_samples"] == 6
    assert sorted(p.name for p in (rel / "data").iterdir()) == sorted(Path(f).name for f in train["filenames"]
                                                                      + val["filenames"])
    assert [c["id"] for c in info["classes"]] == WNIDS
    assert not list(rel.parent.glob("*.partial"))
    # timm's webdataset reader understands _info.json
    from timm.data.readers.reader_wds import _load_info, _parse_split_info

    assert _parse_split_info("train", _load_info(str(rel))).num_samples == 12


def test_split_shuffle_bytes_and_json(rel: Path) -> None:
    train, val = _all_samples(rel, "train"), _all_samples(rel, "validation")
    per_class = {c: [0, 0] for c in WNIDS}
    for s in train:
        per_class[json.loads(s["json"])["class_id"]][0] += 1
    for s in val:
        per_class[json.loads(s["json"])["class_id"]][1] += 1
    assert per_class == {c: [4, 2] for c in WNIDS}
    assert not {s["__key__"] for s in train} & {s["__key__"] for s in val}
    # shuffled across classes: the first train shard mixes classes (a sorted order would give one class)
    first = [json.loads(s["json"])["label"] for s in iter_shard(rel / "data/train-00000.tar")]
    assert len(set(first)) > 1
    # image bytes copied from the generated shards, not re-encoded
    generated = {s["__key__"]: s["jpg"] for t in sorted((rel.parent / "run/generated").glob("*.tar"))
                 for s in iter_shard(t)}
    kept = json.loads((rel.parent / "run/selection.json").read_text())["kept"]
    assert sum(kept.values()) == 18
    for s in train + val:
        assert s["jpg"] == generated[s["__key__"]]
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["label"] == WNIDS.index(meta["class_id"])
        assert meta["prompt"].startswith("a photo of") and isinstance(meta["seed"], int)
        assert meta["scores"]["clip_score"] > 0 and meta["scores"]["classifier_top1"] is None
        assert 0 <= meta["scores"]["composite"] <= 1


def test_load_dataset_local_and_streaming(rel: Path) -> None:
    import datasets
    from PIL import Image

    info = json.loads((rel / "_info.json").read_text())
    ds = datasets.load_dataset(str(rel))
    assert set(ds) == {"train", "validation"}
    for split in ("train", "validation"):
        assert ds[split].num_rows == info["splits"][split]["num_samples"]
    feats = ds["train"].features
    assert isinstance(feats["cls"], datasets.ClassLabel) and feats["cls"].names == WNIDS
    assert isinstance(feats["jpg"], datasets.Image)
    row = ds["train"][0]
    assert isinstance(row["jpg"], Image.Image) and row["jpg"].size == (32, 32)
    assert row["json"]["class_id"] == WNIDS[row["cls"]]
    assert row["json"]["class_name"] in {c["name"] for c in FAKE_CLASSES}
    assert row["json"]["scores"]["isc_kl"] > 0
    assert not list(rel.rglob("*.arrow")), "no datasets cache inside the release"

    stream = datasets.load_dataset(str(rel), split="train", streaming=True)
    rows = list(stream)
    assert len(rows) == info["splits"]["train"]["num_samples"]
    assert stream.features["cls"].names == WNIDS
    assert isinstance(rows[0]["jpg"], Image.Image) and "scores" in rows[0]["json"]
    assert sorted(r["__key__"] for r in rows) == sorted(ds["train"]["__key__"])


def test_split_dataset_by_node_partitions_train(rel: Path) -> None:
    import datasets
    from datasets.distributed import split_dataset_by_node

    stream = datasets.load_dataset(str(rel), split="train", streaming=True)
    assert stream.num_shards == 4
    parts = [[r["__key__"] for r in split_dataset_by_node(stream, rank=r, world_size=2)] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 6
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(r["__key__"] for r in stream)


def test_webdataset_reads_same_counts(rel: Path) -> None:
    import webdataset as wds

    info = json.loads((rel / "_info.json").read_text())
    for split in ("train", "validation"):
        urls = [str(rel / f) for f in info["splits"][split]["filenames"]]
        ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json")
        items = list(ds)
        assert len(items) == info["splits"][split]["num_samples"]
        assert all(0 <= c < 3 for _, c, _ in items)


def test_imagefolder_export(rel: Path) -> None:
    from torchvision.datasets import ImageFolder

    folder = rel.parent / "imagefolder"
    train, val = ImageFolder(str(folder / "train")), ImageFolder(str(folder / "val"))
    assert train.classes == WNIDS and val.classes == WNIDS
    assert len(train) == 12 and len(val) == 6
    assert all(p.endswith(".JPEG") for p, _ in train.samples)
    # the same key has the same bytes as in the shards
    sample = _all_samples(rel, "validation")[0]
    cid = json.loads(sample["json"])["class_id"]
    assert (folder / "val" / cid / f"{sample['__key__']}.JPEG").read_bytes() == sample["jpg"]


def _selected_run(tmp_path: Path, per_class: int = 6) -> Path:
    run = write_fake_run(tmp_path / "run", per_class=per_class, shard_size=10, size=16)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=per_class))
    return run


def test_same_release_is_a_noop_and_different_is_refused(tmp_path: Path) -> None:
    run = _selected_run(tmp_path)
    out = tmp_path / "rel"
    cfg = ReleaseConfig(val_per_class=1, shard_size=4)
    run_release(run, out, cfg)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run_release(run, out, cfg)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    result = CliRunner().invoke(app, ["release", str(run), "--out", str(out), "--val-per-class", "2"])
    check_cli_error(result, str(out), "different release")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # a folder with other files in it is refused too
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    proc = run_cli("release", str(run), "--out", str(other))
    check_subprocess_error(proc, str(other), "not empty")
    assert (other / "keep.txt").read_text() == "mine"


def test_failure_leaves_no_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagenet_plus.release as release

    run = _selected_run(tmp_path)
    out = tmp_path / "rel"

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(release, "render_card", boom)
    with pytest.raises(RuntimeError):
        run_release(run, out, ReleaseConfig(val_per_class=1))
    assert not out.exists()
    monkeypatch.undo()
    run_release(run, out, ReleaseConfig(val_per_class=1))  # the leftover REL.partial is replaced
    assert (out / "_info.json").is_file() and not (tmp_path / "rel.partial").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run", per_class=3, shard_size=10, size=16)
    with pytest.raises(UserError, match="before release"):
        run_release(run, tmp_path / "rel", ReleaseConfig())
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=3))
    with pytest.raises(UserError, match="class n01440764 has only 3 kept"):
        run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=3))
    assert not (tmp_path / "rel").exists()
    with pytest.raises(UserError, match="shard-size"):
        ReleaseConfig(shard_size=0)


def test_png_runs_keep_png(tmp_path: Path) -> None:
    """A run written as PNG releases ``png`` members and ``.png`` files (bytes still copied)."""
    from PIL import Image

    run = write_fake_run(tmp_path / "run", per_class=3, shard_size=10, size=16)
    from imagenet_plus.shards import PartialTarWriter

    for tar in sorted((run / "generated").glob("*.tar")):
        samples = list(iter_shard(tar))
        os.remove(tar)
        with PartialTarWriter(tar) as w:
            for s in samples:
                buf = io.BytesIO()
                Image.open(io.BytesIO(s.pop("jpg"))).save(buf, format="PNG")
                w.write({**s, "png": buf.getvalue()})
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=3))
    out = run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, imagefolder=str(tmp_path / "if")))
    s = next(iter_shard(out / "data/train-00000.tar"))
    assert set(s) == {"__key__", "png", "cls", "json"}
    assert len(list((tmp_path / "if").rglob("*.png"))) == 9
    assert "- name: png\n    dtype: image" in (out / "README.md").read_text()
