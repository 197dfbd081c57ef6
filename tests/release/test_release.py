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
from imagenet_plus.contract import INFO_NAME
from imagenet_plus.errors import UserError
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.release import ReleaseConfig, run_release
from imagenet_plus.release.plan import num_shards_for, split_evenly
from imagenet_plus.select import SelectConfig, run_select

WNIDS = [c["id"] for c in FAKE_CLASSES]


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 8 generated, 6 kept per class: 4 train + 2 validation each; shards of at most 4."""
    tmp = tmp_path_factory.mktemp("release")
    return make_release(tmp, per_class=8, quota=6, val_per_class=2, shard_size=4, imagefolder=tmp / "imagefolder")


def _all_samples(rel: Path, split: str) -> list[dict]:
    info = json.loads((rel / INFO_NAME).read_text())
    return [s for f in info["splits"][split]["filenames"] for s in iter_shard(rel / f)]


def test_num_shards_have_many_divisors() -> None:
    assert [num_shards_for(n, 10) for n in (0, 5, 10, 11, 25, 35, 81, 200)] == [0, 1, 1, 2, 4, 4, 16, 24]
    assert num_shards_for(3, 1) == 3  # never more shards than samples
    assert [len(c) for c in split_evenly(list(range(10)), 4)] == [3, 3, 2, 2]


def test_layout_and_info(rel: Path) -> None:
    info = json.loads((rel / INFO_NAME).read_text())
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

    info = json.loads((rel / INFO_NAME).read_text())
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

    info = json.loads((rel / INFO_NAME).read_text())
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
    import imagenet_plus.release.card as card

    run = _selected_run(tmp_path)
    out = tmp_path / "rel"

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(card, "render_card", boom)
    with pytest.raises(RuntimeError):
        run_release(run, out, ReleaseConfig(val_per_class=1))
    assert not out.exists()
    monkeypatch.undo()
    run_release(run, out, ReleaseConfig(val_per_class=1))  # the leftover REL.partial is replaced
    assert (out / INFO_NAME).is_file() and not (tmp_path / "rel.partial").exists()


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
    from imagenet_plus.io.tar import PartialTarWriter

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


def _release_under_file_limit(run: Path, out: Path, limit: int, pythonpath: str | None = None):  # type: ignore[no-untyped-def]
    """Run select + release in a subprocess whose soft RLIMIT_NOFILE is ``limit``."""
    import subprocess
    import sys

    code = (
        "import resource, sys\n"
        "from imagenet_plus.release import ReleaseConfig, run_release\n"
        "from imagenet_plus.select import SelectConfig, run_select\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        f"run_select({str(run)!r}, SelectConfig(per_class=30))\n"
        f"run_release({str(run)!r}, {str(out)!r}, ReleaseConfig(val_per_class=2, shard_size=16, "
        f"imagefolder={str(out) + '_if'!r}))\n"
    )
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_release_with_more_shards_than_open_files(tmp_path: Path) -> None:
    """102 generated shards (and 102 scores files), at most 64 open files: select and release still succeed."""
    run = write_fake_run(tmp_path / "run", per_class=34, shard_size=1, size=8)
    write_fake_scores(run)
    assert len(list((run / "generated").glob("*.tar"))) == 102
    proc = _release_under_file_limit(run, tmp_path / "rel", 64)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "rel" / INFO_NAME).read_text())
    assert info["splits"]["train"]["num_samples"] == 84 and info["splits"]["validation"]["num_samples"] == 6
    generated = {s["__key__"]: s["jpg"] for t in sorted((run / "generated").glob("*.tar")) for s in iter_shard(t)}
    released = _all_samples(tmp_path / "rel", "train") + _all_samples(tmp_path / "rel", "validation")
    assert len({s["__key__"] for s in released}) == 90
    assert all(s["jpg"] == generated[s["__key__"]] for s in released)
    assert len(list((tmp_path / "rel_if").rglob("*.JPEG"))) == 90


def _small_class_run(tmp_path: Path) -> Path:
    """3 classes × 4 images; tench keeps 1 (3 flagged NSFW), the others 4."""
    run = write_fake_run(tmp_path / "run", per_class=4, shard_size=10, size=16)
    write_fake_scores(run, nsfw_keys=tuple(f"n01440764_{i:06d}" for i in (1, 2, 3)))
    run_select(run, SelectConfig(per_class=4))
    return run


@pytest.mark.parametrize("policy", ["train", "drop"])
def test_small_classes_go_to_train_or_are_dropped(tmp_path: Path, policy: str) -> None:
    run = _small_class_run(tmp_path)
    with pytest.raises(UserError, match="class n01440764 has only 1 kept"):
        run_release(run, tmp_path / "refused", ReleaseConfig(val_per_class=1))
    out = run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, small_classes=policy))
    train = [json.loads(s["json"])["class_id"] for s in _all_samples(out, "train")]
    val = [json.loads(s["json"])["class_id"] for s in _all_samples(out, "validation")]
    assert sorted(val) == ["n02102040", "n03000684"]
    assert train.count("n02102040") == train.count("n03000684") == 3
    assert train.count("n01440764") == (1 if policy == "train" else 0)
    card = (out / "README.md").read_text()
    line = next(ln for ln in card.splitlines() if "too few images for a validation image" in ln)
    assert "n01440764" in line and ("all their images are in train" in line) == (policy == "train")
    assert f"| 0 | n01440764 | tench | {1 if policy == 'train' else 0} | 0 |" in card


def test_wordnet_config_sends_small_classes_to_train() -> None:
    """configs/wordnet-objects.yaml keeps one validation image per class and never aborts on a small class."""
    import yaml

    from imagenet_plus.pipeline.config import config_from_mapping

    path = Path(__file__).resolve().parents[2] / "configs" / "wordnet-objects.yaml"
    section = dict(yaml.safe_load(path.read_text())["release"])
    section.pop("out")
    cfg = config_from_mapping(ReleaseConfig, section, str(path))
    assert cfg.val_per_class == 1 and cfg.small_classes == "train"


def test_bad_small_classes_value() -> None:
    with pytest.raises(UserError, match="small-classes"):
        ReleaseConfig(small_classes="keep")


@pytest.mark.parametrize("where", ["classes.json", "selection.parquet"])
@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "/abs"])
def test_unsafe_class_ids_are_refused_before_writing(tmp_path: Path, where: str, bad: str) -> None:
    import pandas as pd

    run = _selected_run(tmp_path, per_class=3)
    if where == "classes.json":
        classes = json.loads((run / "classes.json").read_text())
        classes[0]["id"] = bad
        (run / "classes.json").write_text(json.dumps(classes))
    else:
        sel = pd.read_parquet(run / "selection.parquet")
        first = sel.index[sel["kept"]][0]
        sel.loc[first, "class_id"] = bad
        sel.to_parquet(run / "selection.parquet", index=False)
    result = CliRunner().invoke(app, ["release", str(run), "--out", str(tmp_path / "rel"), "--val-per-class", "1",
                                      "--imagefolder", str(tmp_path / "if")])
    check_cli_error(result, where, repr(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_unsafe_key_is_refused(tmp_path: Path) -> None:
    import pandas as pd

    run = _selected_run(tmp_path, per_class=3)
    sel = pd.read_parquet(run / "selection.parquet")
    sel.loc[sel.index[sel["kept"]][0], "key"] = "../../n01440764_000000"
    sel.to_parquet(run / "selection.parquet", index=False)
    with pytest.raises(UserError, match="selection.parquet: key '../../n01440764_000000' is not a safe name"):
        run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, imagefolder=str(tmp_path / "if")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_key_kept_twice_is_refused(tmp_path: Path) -> None:
    import pandas as pd

    run = _selected_run(tmp_path, per_class=3)
    sel = pd.read_parquet(run / "selection.parquet")
    kept = sel[sel["kept"]]
    pd.concat([sel, kept.iloc[:1]]).to_parquet(run / "selection.parquet", index=False)
    with pytest.raises(UserError, match=f"selection.parquet: key '{kept['key'].iloc[0]}' is listed twice"):
        run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_release_freshness(tmp_path: Path) -> None:
    """Current after a run (its fingerprint in _info.json); another seed or a new selection is not current."""
    from imagenet_plus.contract import RunPaths, StageState
    from imagenet_plus.pipeline.freshness import fingerprint, is_current, what_changed
    from imagenet_plus.release import stage_inputs

    run = _selected_run(tmp_path)
    paths, out = RunPaths(run), tmp_path / "rel"
    cfg = ReleaseConfig(val_per_class=1, shard_size=4)
    inputs = stage_inputs(run, out, cfg)
    assert not is_current(paths, inputs) and what_changed(paths, inputs) == ["never finished"]
    run_release(run, out, cfg)
    assert is_current(paths, inputs) and what_changed(paths, inputs) == []
    state = StageState.read(paths.stage_state("release"))
    info = json.loads((out / INFO_NAME).read_text())
    assert info["fingerprint"] == state.fingerprint == fingerprint(paths, inputs)
    assert state.facts["samples"] == {"train": 15, "validation": 3}
    # an image folder asked for later is an output not there yet: written alone, the release left as it is
    folder_cfg = ReleaseConfig(val_per_class=1, shard_size=4, imagefolder=str(tmp_path / "if"))
    assert not is_current(paths, stage_inputs(run, out, folder_cfg))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run_release(run, out, folder_cfg)
    assert is_current(paths, stage_inputs(run, out, folder_cfg)) and is_current(paths, inputs)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert len(list((tmp_path / "if").rglob("*.JPEG"))) == 18
    # another seed: not current, and the settings are what changed; its release into the same folder is refused
    other = stage_inputs(run, out, ReleaseConfig(val_per_class=1, shard_size=4, seed=1))
    assert not is_current(paths, other) and what_changed(paths, other) == ["settings"]
    with pytest.raises(UserError, match="different release"):
        run_release(run, out, ReleaseConfig(val_per_class=1, shard_size=4, seed=1))
    # a deleted output: not current; the same settings release it again
    (out / "README.md").unlink()
    assert not is_current(paths, inputs)
    # a new selection: not current
    run_select(run, SelectConfig(per_class=5))
    assert not is_current(paths, inputs) and "files" in what_changed(paths, inputs)


def test_release_record_is_rewritten_when_the_folder_already_holds_it(tmp_path: Path) -> None:
    """A release folder made from these inputs whose RUN/state record was lost: nothing rewritten, record back."""
    from imagenet_plus.contract import RunPaths
    from imagenet_plus.pipeline.freshness import is_current
    from imagenet_plus.release import stage_inputs

    run = _selected_run(tmp_path)
    out, cfg = tmp_path / "rel", ReleaseConfig(val_per_class=1, shard_size=4)
    run_release(run, out, cfg)
    RunPaths(run).stage_state("release").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run_release(run, out, cfg)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert is_current(RunPaths(run), stage_inputs(run, out, cfg))


def test_cli_lists_each_release_option_once() -> None:
    """Options come from ReleaseConfig's settings: each once in --help, with the command's own --out."""
    import re

    from imagenet_plus.pipeline.config import flag_name, settings_of

    result = CliRunner().invoke(app, ["release", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    options = re.findall(r"(?m)^\s+(--[a-z-]+)", result.output)
    assert sorted(options) == sorted({*options}), options
    assert set(options) == {"--out", "--help", *(flag_name(n) for n in settings_of(ReleaseConfig))}
    flags = {"--val-per-class", "--shard-size", "--imagefolder", "--seed", "--small-classes", "--license"}
    assert flags <= set(options)
