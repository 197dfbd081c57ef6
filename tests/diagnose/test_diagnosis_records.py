"""The diagnose stage's files as contract records (diagnosis.json, diagnosis.parquet, the centroids), its
freshness inputs and its command-line options."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_diagnose import constructed, write_npz_reference, write_scored_run
from typer.testing import CliRunner

import imagenet_plus.diagnose.stage as diagnose_stage
from imagenet_plus.contract import RunPaths
from imagenet_plus.contract.diagnosis import (
    DIAGNOSIS_COLUMNS,
    DiagnosisCentroids,
    DiagnosisSummary,
    diagnosis_frame,
    diagnosis_schema,
)
from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.diagnose.stage import run_diagnose, stage_inputs
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import settings_of
from imagenet_plus.pipeline.freshness import StageInputs, is_current, mark_current, what_changed


@pytest.fixture
def run(tmp_path: Path) -> Path:
    text, syn, _real = constructed(np.random.default_rng(0))
    return write_scored_run(tmp_path / "run", text, syn)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    _text, _syn, real = constructed(np.random.default_rng(0))
    return write_npz_reference(tmp_path / "real.npz", real)


def test_summary_record_is_the_file_the_stage_wrote(run: Path, reference: Path):
    summary = run_diagnose(run, DiagnoseConfig(reference=str(reference)))
    path = RunPaths(run).diagnosis_json
    on_disk = json.loads(path.read_text())
    assert summary.to_dict() == on_disk and DiagnosisSummary.read(path) == summary
    assert path.read_text() == json.dumps(on_disk, indent=2, sort_keys=True) + "\n"
    # the keys docs/diagnose.md lists, at every level
    assert set(on_disk) == {"thresholds", "reference", "note", "classes", "verdict_counts", "flagged_classes",
                            "strategies", "geometry"}
    assert set(on_disk["thresholds"]) == {"max_confusion", "text_twin_cosine", "min_vendi", "max_pairwise_similarity",
                                          "min_diversity_ratio", "min_class_prob", "min_top5_rate",
                                          "sample_per_class", "worst"}
    assert set(on_disk["geometry"]) == {"images", "spread", "modality_gap", "real_images", "real_spread",
                                        "centroid_cosine", "real_modality_gap"}
    assert all(set(f) == {"class_id", "name", "verdict", "flags", "remedy"} for f in on_disk["flagged_classes"])
    assert summary.num_flagged == 4 and [v for v, _ in summary.counts_by_severity()] == [
        "ambiguous", "concept-failure", "low-diversity", "low-adherence", "ok"]


@pytest.mark.parametrize(("edit", "fragments"), [
    (lambda d: d.pop("strategies"), ["missing key(s) 'strategies'"]),
    (lambda d: d["geometry"].pop("images"), ["missing key(s) 'geometry.images'"]),
    (lambda d: d["verdict_counts"].update(ok="2"), ["'verdict_counts.ok'", "an integer"]),
    (lambda d: d["flagged_classes"][0].update(flags=["a"]), ["'flagged_classes[0].flags'", "a string"]),
])
def test_a_bad_diagnosis_json_is_one_line_naming_the_file_and_the_key(run: Path, edit, fragments):
    path = RunPaths(run).diagnosis_json
    data = run_diagnose(run).to_dict()
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as info:
        DiagnosisSummary.read(path)
    assert "\n" not in info.value.message and str(path) in info.value.message
    for fragment in fragments:
        assert fragment in info.value.message


def test_parquet_columns_come_from_the_table(run: Path, reference: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = diagnosis_schema()
    for cfg in (DiagnoseConfig(), DiagnoseConfig(reference=str(reference))):
        run_diagnose(run, cfg)
        written = pq.read_schema(RunPaths(run).diagnosis_parquet)
        assert tuple(written.names) == DIAGNOSIS_COLUMNS == tuple(schema.names)
        for name in DIAGNOSIS_COLUMNS:  # a column null in every row keeps pandas' null type (as before)
            assert written.field(name).type in (schema.field(name).type, pa.null()), name
    with pytest.raises(UserError, match=r"extra column\(s\) \['sharpness'\], missing column\(s\) \['vendi'\]"):
        diagnosis_frame([{**{c: 0 for c in DIAGNOSIS_COLUMNS if c != "vendi"}, "sharpness": 1.0}])


def test_centroids_round_trip_and_bad_files(tmp_path: Path):
    path = tmp_path / "diagnosis_centroids.npz"
    syn = np.array([[1.0, 0.0], [np.nan, np.nan]])
    DiagnosisCentroids(["a", "b"], syn).write(path)
    back = DiagnosisCentroids.read(path)
    assert back.class_ids == ["a", "b"] and back.real is None and back.synthetic.dtype == np.float32
    np.testing.assert_array_equal(back.synthetic, syn.astype(np.float32))
    DiagnosisCentroids(["a", "b"], syn, syn[::-1]).write(path)
    np.testing.assert_array_equal(DiagnosisCentroids.read(path).real, syn[::-1].astype(np.float32))
    np.savez(path, synthetic=syn, class_ids=np.array(["a"]))
    with pytest.raises(UserError, match="'synthetic' has shape .* but 'class_ids' has 1 rows"):
        DiagnosisCentroids.read(path)
    path.write_bytes(b"nope")
    with pytest.raises(UserError, match="unreadable .*diagnosis_centroids.npz"):
        DiagnosisCentroids.read(path)


def test_remedy_strategies_read_alone(tmp_path: Path):
    """generate --top-up --remedy reads only ``strategies`` (a diagnosis.json of any other shape is fine)."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "run.yaml").write_text("config: {}\n")
    paths = RunPaths(root)
    assert diagnose_stage.read_remedy_strategies(root) == {}
    paths.diagnosis_json.write_text(json.dumps({"strategies": {"n01": "gloss"}}))
    assert diagnose_stage.read_remedy_strategies(root) == {"n01": "gloss"}
    paths.diagnosis_json.write_text(json.dumps({"verdict_counts": {}}))
    with pytest.raises(UserError, match="lacks the 'strategies' object"):
        diagnose_stage.read_remedy_strategies(root)


# ------------------------------------------------------------------------------------------------------------
# freshness


def test_diagnose_is_current_until_scores_settings_or_reference_change(run: Path, reference: Path, monkeypatch):
    paths = RunPaths(run)
    cfg = DiagnoseConfig(reference=str(reference))
    first = run_diagnose(run, cfg)
    assert is_current(paths, stage_inputs(run, cfg))
    written = paths.diagnosis_parquet.stat().st_mtime_ns
    monkeypatch.setattr(diagnose_stage, "read_score_sums", lambda *a: pytest.fail("diagnosed again"))
    assert run_diagnose(run, cfg) == first and paths.diagnosis_parquet.stat().st_mtime_ns == written
    monkeypatch.undo()
    assert is_current(paths, stage_inputs(run, dataclasses.replace(cfg, device="cpu", batch_size=8)))
    for changed in (dataclasses.replace(cfg, min_vendi=2.0), dataclasses.replace(cfg, worst=3)):
        inputs = stage_inputs(run, changed)
        assert not is_current(paths, inputs) and what_changed(paths, inputs) == ["settings"]
    assert what_changed(paths, stage_inputs(run, DiagnoseConfig())) == ["settings", "files"]  # no reference file
    st = reference.stat()  # the .npz replaced in place: its identity changes
    os.utime(reference, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert what_changed(paths, stage_inputs(run, cfg)) == ["files"]
    run_diagnose(run, cfg)
    st = paths.summary_json.stat()  # score ran again (even one that kept no record)
    os.utime(paths.summary_json, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert what_changed(paths, stage_inputs(run, cfg)) == ["files"]
    run_diagnose(run, cfg)
    mark_current(paths, StageInputs(stage="score", settings={"scorers": "other"}))
    assert what_changed(paths, stage_inputs(run, cfg)) == ["upstream"]
    run_diagnose(run, cfg)
    paths.diagnosis_centroids.unlink()  # a lost output: diagnosed again
    assert not is_current(paths, stage_inputs(run, cfg))
    run_diagnose(run, cfg)
    assert paths.diagnosis_centroids.is_file() and is_current(paths, stage_inputs(run, cfg))


def test_a_reference_folder_is_identified_by_its_images(run: Path, tmp_path: Path):
    folder = tmp_path / "real"
    (folder / "clean-a").mkdir(parents=True)
    (folder / "clean-a" / "0.jpg").write_bytes(b"x")
    paths = RunPaths(run)
    cfg = DiagnoseConfig(reference=str(folder))
    inputs = stage_inputs(run, cfg)
    (paths.root / "diagnosis.parquet").write_text("stand-in")
    paths.diagnosis_json.write_text("{}")
    paths.diagnosis_centroids.write_text("stand-in")
    mark_current(paths, inputs)
    assert is_current(paths, stage_inputs(run, cfg))
    (folder / "clean-a" / "1.bmp").write_bytes(b"y")
    assert what_changed(paths, stage_inputs(run, cfg)) == ["settings"]
    (folder / "clean-a" / "1.bmp").unlink()
    (folder / "clean-a" / "notes.txt").write_text("not an image")
    assert is_current(paths, stage_inputs(run, cfg))


# ------------------------------------------------------------------------------------------------------------
# the command line


def test_diagnose_help_lists_each_setting_once():
    from imagenet_plus.cli import app

    result = CliRunner().invoke(app, ["diagnose", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in settings_of(DiagnoseConfig):
        flag = "--" + name.replace("_", "-")
        assert result.output.count(f"{flag} ") + result.output.count(f"{flag}\n") == 1, (flag, result.output)


def test_diagnose_cli_prints_the_counts_and_passes_flags(run: Path):
    from imagenet_plus.cli import app

    result = CliRunner().invoke(app, ["diagnose", str(run), "--min-vendi", "1.2", "--worst", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("diagnosed 6 classes: ambiguous 2, concept-failure 1, low-diversity 1, "
                                     "low-adherence 0, ok 2")
    summary = DiagnosisSummary.read(RunPaths(run).diagnosis_json)
    assert summary.thresholds["min_vendi"] == 1.2 and len(summary.flagged_classes) == 2
    result = CliRunner().invoke(app, ["diagnose", str(run), "--max-confusion", "2"])
    assert isinstance(result.exception, UserError) and "max_confusion" in result.exception.message
