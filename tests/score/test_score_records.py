"""The score stage's records (summary.json, models.json), its freshness inputs and its command-line options,
without running a network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_fake_run
from shard_faults import write_score_files
from typer.testing import CliRunner

import imagenet_plus.score.stage as score_stage
from imagenet_plus.contract import RunPaths
from imagenet_plus.contract.scores import (
    METRIC_LABELS,
    BadShard,
    ClassScores,
    DatasetMetrics,
    ModelsRecord,
    ScoreSummary,
    SummaryModels,
    card_metric_rows,
    headline_labels,
)
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import config_to_dict, settings_of
from imagenet_plus.pipeline.freshness import StageInputs, is_current, mark_current, what_changed
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.score.stage import stage_inputs

#: Scorer settings that load nothing when stage_inputs resolves the Inception weights (torch-fidelity default).
LIGHT = dict(clip_model="tiny-random", classifier="tiny-random", nsfw_model="none")


def _summary() -> ScoreSummary:
    metrics = DatasetMetrics(
        fid=12.5, kid_mean=0.01, kid_std=0.002, inception_score_mean=3.25, inception_score_std=0.5,
        clip_score_mean=28.0, precision=None, recall=None, num_images=5, duplicates=1,
        classifier_top1_rate=0.4, classifier_top5_rate=None,
        per_class={"c0": ClassScores(count=3, fid=None, vendi=2.5, clip_score_mean=27.0, classifier_top1_rate=1 / 3,
                                     classifier_top5_rate=None, duplicates=1),
                   "c1": ClassScores(count=0, fid=None, vendi=None, clip_score_mean=None, classifier_top1_rate=None,
                                     classifier_top5_rate=None, duplicates=0)})
    models = SummaryModels(clip="tiny-random", inception_weights="torch-fidelity default", classifier="x",
                           nsfw_detector="none", inception_weights_id="torch-fidelity-default")
    return ScoreSummary.of(metrics, shards=["00000", "00001"], bad_shards=[BadShard(shard="00001", error="cut short")],
                           models=models, reference={"path": "/r", "kind": "statistics", "num_images": None},
                           reference_arg="/r", config=config_to_dict(ScoreConfig()), versions={"torch": "2.9"})


def test_summary_round_trip(tmp_path: Path):
    summary = _summary()
    path = tmp_path / "summary.json"
    summary.write(path)
    on_disk = json.loads(path.read_text())
    assert ScoreSummary.read(path) == summary and summary.to_dict() == on_disk
    assert on_disk["per_class"]["c0"]["vendi"] == 2.5 and on_disk["bad_shards"] == [{"shard": "00001",
                                                                                     "error": "cut short"}]
    assert on_disk["models"]["inception_weights_id"] == "torch-fidelity-default"
    assert path.read_text() == json.dumps(on_disk, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize(("edit", "fragments"), [
    (lambda d: d.pop("fid"), ["missing key(s) 'fid'"]),
    (lambda d: d["per_class"]["c0"].pop("duplicates"), ["missing key(s) 'per_class.c0.duplicates'"]),
    (lambda d: d["per_class"]["c0"].update(count="3"), ["'per_class.c0.count'", "an integer", "'3'"]),
    (lambda d: d.update(num_images=True), ["'num_images'", "an integer"]),
    (lambda d: d.update(fid="12"), ["'fid'", "a number or null"]),
    (lambda d: d.update(models=["clip"]), ["'models'", "an object"]),
    (lambda d: d["bad_shards"][0].pop("error"), ["missing key(s) 'bad_shards[0].error'"]),
    (lambda d: d.update(shards="00000"), ["'shards'", "a list"]),
])
def test_a_bad_summary_is_one_line_naming_the_file_and_the_key(tmp_path: Path, edit, fragments):
    data = _summary().to_dict()
    edit(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as info:
        ScoreSummary.read(path)
    message = info.value.message
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_unreadable_or_foreign_summary_names_the_file(tmp_path: Path):
    path = tmp_path / "summary.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable .*summary.json"):
        ScoreSummary.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="summary.json: the top level is not a mapping"):
        ScoreSummary.read(path)


def test_models_record_reads_what_score_writes(tmp_path: Path):
    from imagenet_plus.score.networks import models_record

    path = tmp_path / "models.json"
    models_record(ScoreConfig(**LIGHT)).write(path)
    assert json.loads(path.read_text()) == {"clip": "tiny-random", "inception_weights": "torch-fidelity default",
                                            "classifier": "tiny-random", "nsfw_detector": "none"}
    assert ModelsRecord.read(path) == models_record(ScoreConfig(**LIGHT))
    path.write_text(json.dumps({"clip": "x"}))
    with pytest.raises(UserError, match="models.json: missing key"):
        ModelsRecord.read(path)


def test_metric_labels_name_summary_fields_once():
    fields = set(DatasetMetrics.__dataclass_fields__)
    keys = [m.key for m in METRIC_LABELS]
    assert len(keys) == len(set(keys)) and set(keys) <= fields
    assert all(m.std_key in keys for m in METRIC_LABELS if m.std_key)
    assert list(headline_labels())[0] == "num_images" and card_metric_rows()[-1].key == "num_images"
    # the spellings the report's headline and the card's metrics table use today
    report = pytest.importorskip("imagenet_plus.report.stage")
    if hasattr(report, "HEADLINE"):
        assert headline_labels() == report.HEADLINE
    release = pytest.importorskip("imagenet_plus.release.stage")
    if hasattr(release, "_metrics_rows"):
        assert [label for label, _ in release._metrics_rows({})] == [m.card_label for m in card_metric_rows()]


# ---------------------------------------------------------------------------------------------------------------
# freshness


def _mark_scored(run: Path, cfg: ScoreConfig) -> RunPaths:
    """Stand-ins for the stage's outputs (score files of the right shapes: the stage checks rows and records),
    then the stage's record (what run_score does last)."""
    paths = RunPaths(run)
    inputs = stage_inputs(run, cfg)
    write_score_files(run)
    for output in inputs.outputs:
        if not Path(output).exists():
            Path(output).write_text("{}")
    mark_current(paths, inputs)
    return paths


def test_stage_inputs_follow_models_reference_samples_and_shards(tmp_path: Path, monkeypatch):
    run = write_fake_run(tmp_path / "run", per_class=2, shard_size=2, size=16)
    ref = tmp_path / "ref"
    ref.mkdir()
    cfg = ScoreConfig(reference=str(ref), **LIGHT)
    paths = _mark_scored(run, cfg)
    assert is_current(paths, stage_inputs(run, cfg))
    assert is_current(paths, stage_inputs(run, ScoreConfig(reference=str(ref), batch_size=3, num_workers=1,
                                                           skip_bad_shards=True, **LIGHT)))
    for changed in (ScoreConfig(reference=str(ref), **{**LIGHT, "clip_model": "openai/clip-vit-base-patch32"}),
                    ScoreConfig(reference=str(ref), **{**LIGHT, "nsfw_model": "tiny-random"}),
                    ScoreConfig(reference=str(ref), metric_samples=50_000, **LIGHT),
                    ScoreConfig(**LIGHT)):
        inputs = stage_inputs(run, changed)
        assert not is_current(paths, inputs) and what_changed(paths, inputs) == ["settings"]
    monkeypatch.setattr(score_stage, "PROTOCOL", "center-crop-299-v3")  # reference features extracted anew
    assert what_changed(paths, stage_inputs(run, cfg)) == ["settings"]
    monkeypatch.undo()
    assert is_current(paths, stage_inputs(run, cfg))
    # generate recorded a new state: score is stale
    mark_current(paths, StageInputs(stage="generate", settings={"images_per_class": 3}))
    assert what_changed(paths, stage_inputs(run, cfg)) == ["upstream"]
    paths = _mark_scored(run, cfg)
    # a top-up adds a finished shard; a lost parquet: stale
    for suffix in (".tar", ".json"):
        shutil.copy(run / "generated" / f"00000{suffix}", run / "generated" / f"00003{suffix}")
    assert what_changed(paths, stage_inputs(run, cfg)) == ["files"]
    paths = _mark_scored(run, cfg)
    paths.score_files("00001").parquet.unlink()
    assert not is_current(paths, stage_inputs(run, cfg)) and what_changed(paths, stage_inputs(run, cfg)) == []
    assert not score_stage.is_finished(run, cfg)


def test_a_current_run_is_not_scored_again(tmp_path: Path, monkeypatch):
    """run_score returns the summary on disk and loads no network when the stage is current."""
    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=2, size=16)
    cfg = ScoreConfig(**LIGHT)
    paths = _mark_scored(run, cfg)
    _summary().write(paths.summary_json)
    mark_current(paths, stage_inputs(run, cfg))
    monkeypatch.setattr(score_stage, "init_dist", lambda: pytest.fail("the stage ran"))
    assert score_stage.run_score(run, cfg) == _summary()


# ---------------------------------------------------------------------------------------------------------------
# the command line


def test_score_help_lists_each_setting_once():
    from imagenet_plus.cli import app

    result = CliRunner().invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in settings_of(ScoreConfig):
        flag = "--" + name.replace("_", "-")
        assert result.output.count(f"{flag} ") + result.output.count(f"{flag}\n") == 1, (flag, result.output)
    assert "--no-skip-bad-shards" in result.output


def test_score_flags_reach_the_config(tmp_path: Path, monkeypatch):
    from imagenet_plus.cli import app

    seen = []
    monkeypatch.setattr(score_stage, "run_score", lambda run, cfg, execution=None: seen.append(cfg))
    result = CliRunner().invoke(app, ["score", str(tmp_path), "--clip-model", "tiny-random", "--batch-size", "7",
                                      "--skip-bad-shards", "--metric-samples", "100"])
    assert result.exit_code == 0, result.output
    assert seen == [ScoreConfig(clip_model="tiny-random", batch_size=7, skip_bad_shards=True, metric_samples=100)]


# ---------------------------------------------------------------------------------------------------------------
# bad shards and failed ranks are told apart by class


class _NoNetworks:
    def load_all(self) -> None:
        pass


def test_a_corrupt_shard_is_skipped_and_a_failed_rank_is_not(tmp_path: Path, monkeypatch, caplog):
    import logging

    import imagenet_plus.score.shards as shards
    from imagenet_plus.errors import CorruptShard, PeerRankFailed
    from imagenet_plus.pipeline.ranks import Dist, FileRendezvous

    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=2, size=16)
    paths = RunPaths(run)
    paths.scores.mkdir()
    dist = Dist(rank=0, world_size=1, device="cpu", state=None)
    rdv = FileRendezvous(paths.markers / "score", "t", 0, 1)
    cfg = ScoreConfig(skip_bad_shards=True, **LIGHT)

    def corrupt(tar, *args, **kwargs):
        raise CorruptShard(tar, "a member is cut short")

    monkeypatch.setattr(shards, "score_shard", corrupt)
    monkeypatch.setattr(logging.getLogger("imagenet_plus"), "propagate", True)  # caplog listens on the root
    with caplog.at_level(logging.WARNING):
        shards.score_own_shards(paths, ["00000", "00001"], _NoNetworks(), cfg, 3, dist, rdv)
    assert [BadShard.read(paths.score_files(s).bad).shard for s in ("00000", "00001")] == ["00000", "00001"]
    assert "skipped bad shard 00000: corrupt or truncated shard" in caplog.text
    with pytest.raises(CorruptShard, match="00000.tar: a member is cut short"):  # without --skip-bad-shards
        shards.score_own_shards(paths, ["00000"], _NoNetworks(), ScoreConfig(**LIGHT), 3, dist, rdv)

    def peer_failed(*args, **kwargs):
        raise PeerRankFailed(1, "stopping: out of memory")

    monkeypatch.setattr(shards, "score_shard", peer_failed)
    with pytest.raises(PeerRankFailed, match="rank 1 failed"):
        shards.score_own_shards(paths, ["00000"], _NoNetworks(), cfg, 3, dist, rdv)
    assert not paths.score_files("00000").bad.exists()  # cleaned before the try, not marked bad
