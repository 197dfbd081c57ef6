"""Tests for imagenet_plus.contract: every format written and read back, checked by the real readers."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from imagenet_plus import contract
from imagenet_plus.contract import (
    ReleaseInfo,
    ReleasePaths,
    RunPaths,
    SelectionSummary,
    SplitInfo,
    make_key,
    release_shard_name,
    run_paths,
    score_schema,
    score_table,
    shard_name,
    split_member_name,
)
from imagenet_plus.errors import UserError


def _summary() -> SelectionSummary:
    return SelectionSummary(
        thresholds={"clip_score_min": 20.0, "drop_nsfw": True}, per_class_quota=5,
        pass_rate={"a": 0.5, "b": 1.0}, kept={"a": 3, "b": 5}, short={"a": 2}, dropped_classes=[],
        flagged_classes=["b"], reasons={"kept": 8, "over_quota": 2, "nsfw": 4, "clip_score<20": 1},
        num_kept=8, num_scored=15)


def test_selection_summary_round_trip(tmp_path: Path) -> None:
    s = _summary()
    path = tmp_path / contract.SELECTION_JSON
    s.write(path)
    assert json.loads(path.read_text())["per_class_quota"] == 5  # plain JSON on disk
    back = SelectionSummary.read(path)
    assert back == s
    assert back.num_passed == 10  # kept + over_quota, the reasons that passed every threshold
    data = json.loads(path.read_text())
    del data["short"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="lacks key\\(s\\) short"):
        SelectionSummary.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        SelectionSummary.read(path)


def _info(filenames: list[str]) -> ReleaseInfo:
    return ReleaseInfo(
        name="rel", fingerprint="abc", created="2026-01-01T00:00:00Z", image_ext="jpg", num_classes=2,
        classes=[{"label": 0, "id": "a", "name": "A"}, {"label": 1, "id": "b", "name": "B"}], config_hash="h",
        splits={"train": SplitInfo("train", 7, filenames, [4, 3][: len(filenames)])})


def test_release_info_round_trip_and_timm_reads_it(tmp_path: Path) -> None:
    from timm.data.readers.reader_wds import _load_info, _parse_split_info

    info = _info([release_shard_name("train", 0), release_shard_name("train", 1)])
    rel = ReleasePaths(tmp_path)
    info.write(rel.info_json)
    assert rel.info_json.name == contract.INFO_NAME
    back = ReleaseInfo.read(rel.info_json)
    assert back == info and isinstance(back.splits["train"], SplitInfo)
    # timm's webdataset reader, an independent client of the format
    split = _parse_split_info("train", _load_info(str(tmp_path)))
    assert split.num_samples == 7 and list(split.filenames) == ["data/train-00000.tar", "data/train-00001.tar"]
    assert list(split.shard_lengths) == [4, 3]


@pytest.mark.parametrize("name", ["../train-00000.tar", "/etc/passwd", "data/../../x.tar", "data\\x.tar", "C:x.tar",
                                  "", "./data/x.tar"])
def test_release_info_refuses_escaping_filenames(tmp_path: Path, name: str) -> None:
    path = tmp_path / contract.INFO_NAME
    _info([name]).write(path)
    with pytest.raises(UserError, match="not a plain relative path"):
        ReleaseInfo.read(path)


def test_release_info_refuses_mismatched_lengths(tmp_path: Path) -> None:
    path = tmp_path / contract.INFO_NAME
    data = _info(["data/train-00000.tar"]).to_dict()
    data["splits"]["train"]["shard_lengths"] = [1, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="1 filenames but 2 shard_lengths"):
        ReleaseInfo.read(path)


def _score_columns(n: int = 2) -> dict[str, list]:
    values = {"string": ["x", None], "int64": [1, None], "double": [0.5, None], "bool": [True, None]}
    cols = {f.name: values[str(f.type)][:n] for f in score_schema()}
    cols["key"] = ["a_000000", "a_000001"][:n]
    return cols


def test_score_table_round_trips_through_parquet(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    table = score_table(_score_columns())
    path = tmp_path / "00000.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(score_schema())
    assert back.column_names == list(contract.SCORE_COLUMNS)
    df = pd.read_parquet(path)
    assert df["key"].tolist() == ["a_000000", "a_000001"]
    assert df["clip_score"].iloc[0] == 0.5 and pd.isna(df["clip_score"].iloc[1])
    contract.check_score_columns(df.columns, path)  # every required column is there
    assert set(contract.REQUIRED_SCORE_COLUMNS) <= set(contract.SCORE_COLUMNS)
    assert set(contract.RELEASE_SCORE_FIELDS) - {contract.COMPOSITE} <= set(contract.SCORE_COLUMNS)


def test_score_table_refuses_unknown_and_missing_columns() -> None:
    with pytest.raises(UserError, match="score column\\(s\\) sharpness are not in the score schema"):
        score_table({**_score_columns(), "sharpness": [1.0, 2.0]})
    cols = _score_columns()
    del cols["isc_kl"]
    with pytest.raises(UserError, match="lacks column\\(s\\) isc_kl"):
        score_table(cols)
    with pytest.raises(UserError, match="lacks column\\(s\\) dup_of"):
        contract.check_score_columns([c for c in contract.SCORE_COLUMNS if c != "dup_of"], "s.parquet")


def test_run_paths_and_keys(tmp_path: Path) -> None:
    assert make_key("n01440764", 7) == "n01440764_000007" and shard_name(7) == "00007"
    for bad in ("a.b", "a/b", "..", "a b"):
        with pytest.raises(UserError, match="invalid sample key"):
            make_key(bad, 0)
    paths = RunPaths(tmp_path)
    assert paths.generated_tar(3) == tmp_path / "generated" / "00003.tar"
    files = paths.score_files("00003")
    assert (files.parquet.name, files.clip.name) == ("00003.parquet", "00003.clip.npy")
    assert files.parquet.parent == paths.scores and paths.summary_json.parent == paths.scores
    assert ReleasePaths(tmp_path).shard("validation", 2) == tmp_path / release_shard_name("validation", 2)
    with pytest.raises(UserError, match="not a run directory"):
        run_paths(tmp_path)
    paths.run_yaml.write_text("config: {}\n")
    assert run_paths(tmp_path) == paths
    # the done rule: a tar is done only with its stats json; clean_partials removes the rest
    paths.generated.mkdir()
    paths.generated_tar(0).write_bytes(b"")
    paths.generated_tar(0).with_suffix(".json").write_text("{}")
    paths.generated_tar(1).write_bytes(b"")
    (paths.generated / ("00002.tar" + contract.PARTIAL_SUFFIX)).write_bytes(b"")
    assert contract.done_shards(paths.generated) == [paths.generated_tar(0)]
    assert sorted(p.name for p in contract.clean_partials(paths.generated)) == ["00001.tar", "00002.tar.partial"]
    assert sorted(p.name for p in paths.generated.iterdir()) == ["00000.json", "00000.tar"]


def test_split_member_name_agrees_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    from imagenet_plus.io.tar import PartialTarWriter

    tar = tmp_path / "00000.tar"
    samples = [{"__key__": "n01440764_000000", "jpg": b"1", "cls": b"0", "json": b"{}"},
               {"__key__": "my-class_000001", "png": b"2", "cls": b"1", "seg.png": b"3"},
               {"__key__": "x_000002", "webp": b"4", "json": b"{}"}]
    with PartialTarWriter(tar) as w:
        for s in samples:
            w.write(s)
    with tarfile.open(tar) as tf:
        names = [m.name for m in tf.getmembers()]
    ours: dict[str, set[str]] = {}
    for name in names:
        key, ext = split_member_name(name)
        ours.setdefault(key, set()).add(ext)
    theirs = {s["__key__"]: set(s) - {"__key__", "__url__", "__local_path__"}
              for s in wds.WebDataset(str(tar), shardshuffle=False)}
    assert ours == theirs
    assert ours["my-class_000001"] == {"png", "cls", "seg.png"}
    assert contract.image_member({"cls": 1, "png": 2, "webp": 3}) == "png"
    assert contract.image_member({"cls": 1}) is None
    with pytest.raises(UserError, match="no extension"):
        split_member_name("README")
    from webdataset.tariterators import base_plus_ext

    names = ("a.b.c", "dir/x_1.seg.png", "d.ir/x.png", "noext", ".hidden", "dir/.x", "k.", "a/b/c.d/e.f.g", "é_1.jpg")
    for name in names:
        expected = base_plus_ext(name)
        if expected == (None, None):
            with pytest.raises(UserError):
                split_member_name(name)
        else:
            assert split_member_name(name) == expected, name


# ------------------------------------------------------------------------------------------------------------
# run.yaml and shard stats


#: A run.yaml as the writer before the typed record wrote it (initial + top-up segment with strategies).
GOLDEN_RUN_YAML = Path(__file__).with_name("golden_run.yaml")


def test_run_record_reads_and_writes_the_same_bytes(tmp_path: Path) -> None:
    from imagenet_plus.contract import RunRecord, Segment

    record = RunRecord.read(GOLDEN_RUN_YAML)
    assert record.num_images == sum(s.num_items for s in record.segments) == 7
    assert record.segments[1] == Segment("top-up", ((1, 2, 5),), based_on="abc123", strategies=((1, "gloss"),))
    assert record.config["negative_prompt"] == "no café"
    out = tmp_path / contract.RUN_YAML
    record.write(out)
    assert out.read_bytes() == GOLDEN_RUN_YAML.read_bytes()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("num_images"), "missing key(s) 'num_images'"),
        (lambda d: d.update(num_classes="two"), "key 'num_classes' must be an integer, got 'two'"),
        (lambda d: d.update(num_images=True), "key 'num_images' must be an integer, got True"),
        (lambda d: d.update(config=["a"]), "key 'config' must be an object"),
        (lambda d: d.update(versions={"torch": 2}), "key 'versions.torch' must be a string, got 2"),
        (lambda d: d.update(config_hash=None), "key 'config_hash' must be a string, got None"),
        (lambda d: d.update(notes="mine"), "unknown key 'notes'"),
        (lambda d: d["segments"][1].update(ranges=[[1, 2]]), "key 'segments[1].ranges' must be a list of"),
        (lambda d: d["segments"][0].pop("kind"), "missing key 'segments[0].kind'"),
        (lambda d: d.update(segments={"a": 1}), "key 'segments' must be a list"),
        # a plan that contradicts itself (every reader of run.yaml: generate, select, release, report)
        (lambda d: d.update(segments=[]), "key 'segments' is empty"),
        (lambda d: d["config"].update(images_per_class=1),
         "key 'config.images_per_class' is 1, but the 'initial' and 'extend' segments plan 2 images of class 0"),
        (lambda d: d["segments"][1].update(ranges=[[1, 1, 5]]),
         "key 'segments[1].ranges[0]' starts class 1 at index 1, but earlier segments already plan indices up to 1: "
         "index 1 would be generated twice"),
        (lambda d: d.update(num_images=8), "key 'num_images' is 8, but the segments plan 7 images: put back 7"),
    ],
)
def test_hand_edited_run_yaml_is_one_line_naming_the_key(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    import yaml

    from imagenet_plus.contract import read_run_record, read_run_yaml

    data = yaml.safe_load(GOLDEN_RUN_YAML.read_text(encoding="utf-8"))
    edit(data)
    paths = RunPaths(tmp_path)
    paths.run_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    for read in (read_run_record, read_run_yaml):
        with pytest.raises(UserError) as err:
            read(paths)
        assert err.value.message.startswith(f"{paths.run_yaml}: ") and message in err.value.message
        assert "\n" not in err.value.message
    paths.run_yaml.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="not a run.yaml written by imagenet-plus"):
        read_run_record(paths)


def test_shard_stats_round_trip_and_typed_read(tmp_path: Path) -> None:
    from imagenet_plus.contract import ShardStats, generated_done, stats_path

    stats = ShardStats(shard="00003", count=2, first_key="a_000000", last_key="a_000001", failures=1,
                       failed_keys=["a_000001"], regenerated={"nsfw": 2, "black": 0}, seconds=1.5,
                       images_per_second=1.333, rank=1, model="tiny-random")
    tar = tmp_path / "00003.tar"
    tar.write_bytes(b"")
    assert not generated_done(tar)
    stats.write(stats_path(tar))
    assert stats_path(tar).name == "00003.json" and generated_done(tar)
    assert json.loads(stats_path(tar).read_text())["failed_keys"] == ["a_000001"]  # plain JSON on disk
    assert ShardStats.read(stats_path(tar)) == stats
    data = stats.to_dict() | {"seconds": 2, "images_per_second": None}  # an int where a float goes, a null rate
    assert ShardStats.from_dict(data, "s.json").seconds == 2
    with pytest.raises(UserError, match="s.json: key 'regenerated.nsfw' must be an integer, got '2'"):
        ShardStats.from_dict(stats.to_dict() | {"regenerated": {"nsfw": "2"}}, "s.json")
