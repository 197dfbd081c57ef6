"""Tests for imagenet_plus.select: rules, reasons, quota with diverse picks, summary, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from release_fixtures import check_cli_error, check_subprocess_error, run_cli, write_fake_scores
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError
from imagenet_plus.select import SelectConfig, Thresholds, load_thresholds, mmr_pick, run_select

runner = CliRunner()


def _thresholds(tmp_path: Path, text: str) -> str:
    p = tmp_path / "th.yaml"
    p.write_text(text)
    return str(p)


def test_select_reasons_quota_and_summary(fake_run: Path, tmp_path: Path) -> None:
    write_fake_scores(fake_run, dup_every=4, nsfw_keys=("n01440764_000000",), low_clip_keys=("n02102040_000001",),
                      class_fid={"n03000684": 200.0})
    th = _thresholds(tmp_path, "clip_score_min: 20\nclass_fid_max: 100\nclass_fid_action: drop\n")
    summary = run_select(fake_run, SelectConfig(thresholds=th, per_class=5))
    sel = pd.read_parquet(fake_run / "selection.parquet")
    assert list(sel.columns) == ["key", "label", "class_id", "kept", "reason", "composite"]
    assert len(sel) == 24 and sel["key"].is_unique
    r = dict(zip(sel["key"], sel["reason"], strict=True))
    assert r["n01440764_000000"] == "nsfw"
    assert r["n01440764_000003"] == "duplicate"  # dup_every=4 → index 3 and 7 are duplicates
    assert r["n02102040_000001"] == "clip_score<20"
    assert all(r[f"n03000684_{i:06d}"] == "class_fid>100" for i in range(8))
    # tench: 8 - nsfw - 2 duplicates = 5 pass, quota 5 → all kept; springer: 8-1-2 = 5 pass
    assert summary["kept"] == {"n01440764": 5, "n02102040": 5, "n03000684": 0}
    assert summary["pass_rate"]["n01440764"] == pytest.approx(5 / 8)
    assert summary["short"] == {}  # the dropped class is not short: it is dropped
    assert summary["dropped_classes"] == ["n03000684"]
    assert sel["kept"].sum() == 10
    assert set(sel.loc[sel["kept"], "reason"]) == {"kept"}
    on_disk = json.loads((fake_run / "selection.json").read_text())
    assert on_disk["short"] == summary["short"] and on_disk["pass_rate"] == summary["pass_rate"]
    assert on_disk["per_class_quota"] == 5


def test_select_over_quota_and_short(fake_run: Path) -> None:
    write_fake_scores(fake_run, dup_every=0)
    summary = run_select(fake_run, SelectConfig(per_class=3))
    sel = pd.read_parquet(fake_run / "selection.parquet")
    assert summary["kept"] == {"n01440764": 3, "n02102040": 3, "n03000684": 3}
    assert (sel["reason"] == "over_quota").sum() == 15
    summary = run_select(fake_run, SelectConfig(per_class=10))
    assert summary["short"] == {"n01440764": 2, "n02102040": 2, "n03000684": 2}
    assert summary["pass_rate"] == {"n01440764": 1.0, "n02102040": 1.0, "n03000684": 1.0}


def test_select_default_quota_is_images_per_class(fake_run: Path) -> None:
    write_fake_scores(fake_run)
    assert run_select(fake_run, SelectConfig())["per_class_quota"] == 8


def test_composite_prefers_better_scores(fake_run: Path) -> None:
    write_fake_scores(fake_run)
    run_select(fake_run, SelectConfig(per_class=8))
    sel = pd.read_parquet(fake_run / "selection.parquet")
    tench = sel[sel["class_id"] == "n01440764"].sort_values("key")
    # clip_score and clip_class_prob fall with the index and isc_kl rises: 2 of 4 ranks fall
    assert tench["composite"].iloc[0] > tench["composite"].iloc[-1]
    assert tench["composite"].between(0, 1).all()


def test_mmr_skips_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 8))
    # rows 0..2 are copies of one direction (best composites), rows 3, 4 differ
    emb = np.stack([base[0], base[0] + 1e-3, base[0] + 2e-3, base[1], base[2]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    comp = np.array([1.0, 0.99, 0.98, 0.6, 0.5])
    assert mmr_pick(comp, emb, 3, diversity=0.0) == [0, 1, 2]
    picked = mmr_pick(comp, emb, 3, diversity=0.5)
    assert picked[0] == 0 and set(picked[1:]) == {3, 4}


def test_threshold_file_validation(tmp_path: Path) -> None:
    assert load_thresholds(None) == Thresholds()
    th = load_thresholds(_thresholds(tmp_path, "clip-score-min: 22\nclassifier_top5: true\n"))
    assert th.clip_score_min == 22 and th.classifier_top5
    with pytest.raises(UserError, match="unknown key 'clip_min'"):
        load_thresholds(_thresholds(tmp_path, "clip_min: 3\n"))
    with pytest.raises(UserError, match="clip_class_prob_min.*out of range"):
        load_thresholds(_thresholds(tmp_path, "clip_class_prob_min: 1.5\n"))
    with pytest.raises(UserError, match="class_fid_action"):
        load_thresholds(_thresholds(tmp_path, "class_fid_action: delete\n"))


def test_threshold_on_missing_scores_is_an_error(fake_run: Path, tmp_path: Path) -> None:
    write_fake_scores(fake_run, with_realism=False)
    th = _thresholds(tmp_path, "realism_min: 1.0\n")
    with pytest.raises(UserError, match="'realism_min' is set but the scores have no 'realism'"):
        run_select(fake_run, SelectConfig(thresholds=th))
    th = _thresholds(tmp_path, "classifier_top5: true\n")
    with pytest.raises(UserError, match="classifier_top5"):
        run_select(fake_run, SelectConfig(thresholds=th))


@pytest.mark.parametrize(
    ("text", "needle"),
    [("clip_score_minimum: 20\n", "unknown key 'clip_score_minimum'"), ("clip_score_min: 120\n", "clip_score_min")],
)
def test_cli_bad_thresholds(fake_run: Path, tmp_path: Path, text: str, needle: str) -> None:
    write_fake_scores(fake_run)
    th = _thresholds(tmp_path, text)
    result = runner.invoke(app, ["select", str(fake_run), "--thresholds", th])
    check_cli_error(result, needle, str(th))
    assert not (fake_run / "selection.parquet").exists()


def test_cli_select_before_score(fake_run: Path) -> None:
    proc = run_cli("select", str(fake_run))
    check_subprocess_error(proc, "summary.json", "before select")
    assert not (fake_run / "selection.parquet").exists()


def test_cli_select_ok(fake_run: Path) -> None:
    write_fake_scores(fake_run)
    result = runner.invoke(app, ["select", str(fake_run), "--per-class", "4"])
    assert result.exit_code == 0, result.output
    assert "kept 12" in result.output


def test_select_reads_embeddings_class_by_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """select memory-maps the CLIP files (never loads one whole) with a bounded number open, and picks the same
    images as the quota rule applied to the whole embedding matrix loaded at once."""
    from conftest import write_fake_run

    import imagenet_plus.select as select

    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=3, size=8)
    write_fake_scores(run)
    npys = sorted((run / "scores").glob("*.clip.npy"))
    assert len(npys) == 8
    dense = np.concatenate([np.load(p).astype(np.float32) for p in npys])
    frame = pd.concat([pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet"))], ignore_index=True)

    loads, real_load = [], np.load

    def spy_load(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(kwargs.get("mmap_mode"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy_load)
    monkeypatch.setattr(select.ClipRows, "MAX_OPEN", 2)
    run_select(run, SelectConfig(per_class=3, thresholds=None))
    monkeypatch.undo()
    assert loads and set(loads) == {"r"}  # every CLIP file memory-mapped, none read whole
    got = pd.read_parquet(run / "selection.parquet")
    expected = select.select_frame(frame, dense, Thresholds(), 3, {})
    assert got["key"].tolist() == expected["key"].tolist()
    assert got["kept"].tolist() == expected["kept"].tolist()
    assert got["kept"].sum() == 9

    rows = select.ClipRows(npys, np.repeat(np.arange(8), 3), np.tile(np.arange(3), 8), dense.shape[1])
    rows.MAX_OPEN = 2
    idx = np.array([23, 0, 5, 12, 22, 1])
    np.testing.assert_array_equal(rows.gather(idx), dense[idx])
    assert len(rows._maps) <= 2
