"""Tests for imagenet_plus.select: rules, reasons, quota with diverse picks, summary, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from release_fixtures import check_cli_error, check_subprocess_error, run_cli, write_fake_scores
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError
from imagenet_plus.select.config import SelectConfig, Thresholds, load_thresholds
from imagenet_plus.select.quota import mmr_pick
from imagenet_plus.select.stage import run_select

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
    assert summary.kept == {"n01440764": 5, "n02102040": 5, "n03000684": 0}
    assert summary.pass_rate["n01440764"] == pytest.approx(5 / 8)
    assert summary.short == {}  # the dropped class is not short: it is dropped
    assert summary.dropped_classes == ["n03000684"]
    assert sel["kept"].sum() == 10
    assert set(sel.loc[sel["kept"], "reason"]) == {"kept"}
    on_disk = json.loads((fake_run / "selection.json").read_text())
    assert on_disk["short"] == summary.short and on_disk["pass_rate"] == summary.pass_rate
    assert on_disk["per_class_quota"] == 5


def test_select_over_quota_and_short(fake_run: Path) -> None:
    write_fake_scores(fake_run, dup_every=0)
    summary = run_select(fake_run, SelectConfig(per_class=3))
    sel = pd.read_parquet(fake_run / "selection.parquet")
    assert summary.kept == {"n01440764": 3, "n02102040": 3, "n03000684": 3}
    assert (sel["reason"] == "over_quota").sum() == 15
    summary = run_select(fake_run, SelectConfig(per_class=10))
    assert summary.short == {"n01440764": 2, "n02102040": 2, "n03000684": 2}
    assert summary.pass_rate == {"n01440764": 1.0, "n02102040": 1.0, "n03000684": 1.0}


def test_select_default_quota_is_images_per_class(fake_run: Path) -> None:
    write_fake_scores(fake_run)
    assert run_select(fake_run, SelectConfig()).per_class_quota == 8


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


def _reference_selection(frame: pd.DataFrame, emb: np.ndarray, th: Thresholds, quota: int,
                         class_fid: dict[str, float]) -> pd.DataFrame:
    """select's rules, composite and quota written plainly over one pandas frame of every score (the definition)."""
    reason = pd.Series("", index=frame.index, dtype=object)

    def fail(mask: pd.Series, text: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reason == "")
        reason[mask] = text

    if th.class_fid_max is not None and th.class_fid_action == "drop":
        fail(frame["class_id"].isin([c for c, f in class_fid.items() if f > th.class_fid_max]),
             f"class_fid>{th.class_fid_max:g}")
    if th.drop_nsfw:
        flagged = frame["nsfw"].astype("boolean")
        if "nsfw_score" in frame:
            flagged = flagged | (frame["nsfw_score"].astype(float) > th.nsfw_score_max)
        fail(flagged, "nsfw")
    if th.drop_duplicates:
        fail(frame["dup_of"].notna() & (frame["dup_of"].astype(str) != ""), "duplicate")
    for col in ("clip_score", "clip_class_prob", "isc_kl", "realism"):
        limit = getattr(th, f"{col}_min")
        if limit is not None:
            fail(frame[col].astype(float) < limit, f"{col}<{limit:g}")
    if th.classifier_top5:
        fail(frame["classifier_top5"].astype("boolean") == False, "not_top5")  # noqa: E712 (nullable)
    ranks = [frame[c].astype(float).groupby(frame["class_id"]).rank(pct=True, method="average")
             for c in ("clip_score", "clip_class_prob", "isc_kl", "classifier_prob", "realism")
             if c in frame and frame[c].notna().any()]
    composite = pd.concat(ranks, axis=1).mean(axis=1).fillna(0.0) if ranks else pd.Series(0.5, index=frame.index)
    passing = (reason == "").to_numpy()
    kept = np.zeros(len(frame), dtype=bool)
    for _cid, idx in frame.groupby("class_id").indices.items():
        cand = idx[passing[idx]]
        kept[cand[mmr_pick(composite.to_numpy()[cand], emb[cand], quota, th.diversity)]] = True
    reason[kept] = "kept"
    reason[passing & ~kept] = "over_quota"
    out = frame[["key", "label", "class_id"]].assign(kept=kept, reason=reason.astype(str), composite=composite)
    return out.sort_values(["label", "key"]).reset_index(drop=True)


def _scores_of(run: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Every scores parquet of ``run`` as one frame, and the CLIP embeddings in its row order."""
    files = sorted((run / "scores").glob("*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    emb = np.concatenate([np.load(p.with_suffix(".clip.npy")).astype(np.float32) for p in files])
    return frame, emb


def _randomize_scores(run: Path, seed: int = 1) -> None:
    """Rewrite the fake scores of ``run`` with random values: ties, nulls, NaN, empty ``dup_of``, NSFW scores."""
    rng = np.random.default_rng(seed)
    for p in sorted((run / "scores").glob("*.parquet")):
        df = pd.read_parquet(p)
        n = len(df)

        def maybe_null(values: np.ndarray, rate: float) -> list:
            return [None if rng.random() < rate else v for v in values.tolist()]

        df["clip_score"] = rng.integers(15, 35, n).astype(float)  # integers: many ties within a class
        df["clip_class_prob"] = pd.array(maybe_null(rng.random(n).round(1), 0.2), dtype="Float64")
        df["isc_kl"] = rng.random(n) * 2
        df["realism"] = pd.array(maybe_null(rng.random(n) * 2, 0.3), dtype="Float64")
        df["classifier_prob"] = pd.array(maybe_null(rng.random(n), 0.5), dtype="Float64")
        df["classifier_top5"] = pd.array(maybe_null(rng.random(n) < 0.8, 0.3), dtype="boolean")
        df["nsfw_score"] = pd.array(maybe_null(rng.random(n) * 0.6, 0.5), dtype="Float64")
        df["nsfw"] = rng.random(n) < 0.05
        df["dup_of"] = [rng.choice([None, "", "n01440764_000000"], p=[0.7, 0.2, 0.1]) for _ in range(n)]
        df.to_parquet(p, index=False)


RANDOM_THRESHOLDS = ("clip_score_min: 20\nclip_class_prob_min: 0.2\nrealism_min: 0.4\nclassifier_top5: true\n"
                     "nsfw_score_max: 0.5\nclass_fid_max: 100\nclass_fid_action: drop\ndiversity: 0.4\n")


def test_select_equals_plain_pandas_definition(fake_run: Path, tmp_path: Path) -> None:
    """The streamed selection (rows, reasons, composite to the last bit) and its summary equal the rules applied
    plainly to one pandas frame of every score, on scores with ties, nulls, NaN and every rule in force."""
    write_fake_scores(fake_run, class_fid={"n03000684": 200.0})
    _randomize_scores(fake_run)
    th_path = _thresholds(tmp_path, RANDOM_THRESHOLDS)
    summary = run_select(fake_run, SelectConfig(thresholds=th_path, per_class=3))
    got = pd.read_parquet(fake_run / "selection.parquet")
    frame, emb = _scores_of(fake_run)
    expected = _reference_selection(frame, emb, load_thresholds(th_path), 3, {"n03000684": 200.0})
    assert list(got.columns) == ["key", "label", "class_id", "kept", "reason", "composite"]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)
    assert got["label"].dtype == np.int64 and got["composite"].dtype == np.float64 and got["kept"].dtype == bool
    assert set(got["reason"]) >= {"nsfw", "duplicate", "clip_score<20", "class_fid>100", "kept"}
    assert summary.reasons == dict(sorted(expected["reason"].value_counts().items()))
    assert summary.kept == expected[expected["kept"]].groupby("class_id")["key"].count().reindex(
        ["n01440764", "n02102040", "n03000684"], fill_value=0).to_dict()
    passed = expected["reason"].isin(["kept", "over_quota"]).groupby(expected["class_id"]).mean()
    assert summary.pass_rate == {c: pytest.approx(round(float(v), 6)) for c, v in passed.items()}
    assert summary.num_scored == 24 and summary.num_kept == int(expected["kept"].sum())


def _resplit_scores(src: Path, dst: Path, parts: int) -> None:
    """Copy run ``src`` to ``dst`` with the same scored rows, in the same order, over ``parts`` scores files."""
    shutil.copytree(src, dst)
    frame, emb = _scores_of(src)
    for p in (dst / "scores").glob("*.parquet"):
        p.unlink()
        p.with_suffix(".clip.npy").unlink()
    for s, idx in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[idx].to_parquet(dst / "scores" / f"{s:05d}.parquet", index=False)
        np.save(dst / "scores" / f"{s:05d}.clip.npy", emb[idx].astype(np.float16))


def test_select_output_does_not_depend_on_the_shard_split(fake_run: Path, tmp_path: Path) -> None:
    write_fake_scores(fake_run, class_fid={"n03000684": 200.0})
    _randomize_scores(fake_run, seed=2)
    th = _thresholds(tmp_path, RANDOM_THRESHOLDS.replace("class_fid_action: drop", "class_fid_action: flag"))
    outputs = []
    for parts in (1, 5):
        run = tmp_path / f"split{parts}"
        _resplit_scores(fake_run, run, parts)
        assert len(list((run / "scores").glob("*.parquet"))) == parts
        summary = run_select(run, SelectConfig(thresholds=th, per_class=4))
        outputs.append((pd.read_parquet(run / "selection.parquet"), summary))
    (one, s1), (five, s5) = outputs
    pd.testing.assert_frame_equal(one, five, check_exact=True)
    assert s1 == s5 and s1.flagged_classes == ["n03000684"] and one["kept"].sum() > 0


def test_select_reads_embeddings_class_by_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """select memory-maps the CLIP files (never loads one whole) with a bounded number open, and picks the same
    images as the quota rule applied to the whole embedding matrix loaded at once."""
    from conftest import write_fake_run

    import imagenet_plus.select.output as output
    import imagenet_plus.select.scored as scored

    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=3, size=8)
    write_fake_scores(run)
    npys = sorted((run / "scores").glob("*.clip.npy"))
    assert len(npys) == 8
    frame, dense = _scores_of(run)

    loads, real_load = [], np.load

    def spy_load(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(kwargs.get("mmap_mode"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy_load)
    monkeypatch.setattr(scored.ClipRows, "MAX_OPEN", 2)
    monkeypatch.setattr(output, "BATCH_ROWS", 5)  # several output row groups and key-check batches
    run_select(run, SelectConfig(per_class=3, thresholds=None))
    monkeypatch.undo()
    assert loads and set(loads) == {"r"}  # every CLIP file memory-mapped, none read whole
    got = pd.read_parquet(run / "selection.parquet")
    expected = _reference_selection(frame, dense, Thresholds(), 3, {})
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)
    assert got["kept"].sum() == 9

    rows = scored.ClipRows(npys, np.arange(0, 25, 3), dense.shape[1])
    rows.MAX_OPEN = 2
    idx = np.array([23, 0, 5, 12, 22, 1])
    np.testing.assert_array_equal(rows.gather(idx), dense[idx])
    assert len(rows._maps) <= 2


def test_duplicate_key_and_unknown_class_are_user_errors(fake_run: Path) -> None:
    write_fake_scores(fake_run)
    files = sorted((fake_run / "scores").glob("*.parquet"))
    last = pd.read_parquet(files[-1])
    first_key = pd.read_parquet(files[0])["key"].iloc[0]
    last.loc[last.index[-1], "key"] = first_key
    last.to_parquet(files[-1], index=False)
    with pytest.raises(UserError, match=f"key '{first_key}' appears twice"):
        run_select(fake_run, SelectConfig(per_class=3))
    last.loc[last.index[-1], ["key", "class_id"]] = ["zzz_000000", "zzz"]
    last.to_parquet(files[-1], index=False)
    with pytest.raises(UserError, match="class id 'zzz', not in"):
        run_select(fake_run, SelectConfig(per_class=3))
    assert not (fake_run / "selection.parquet").exists()


def test_select_returns_its_summary_and_is_current_until_an_input_changes(fake_run: Path, tmp_path: Path) -> None:
    """run_select returns the SelectionSummary it writes; it is then current (a second call rewrites nothing)
    until a setting, the thresholds file's content (same path), summary.json or score's record changes."""
    import os

    from imagenet_plus.contract import RunPaths, SelectionSummary
    from imagenet_plus.pipeline.freshness import StageInputs, is_current, mark_current, read_state, what_changed
    from imagenet_plus.select import stage_inputs

    write_fake_scores(fake_run)
    paths = RunPaths(fake_run)
    th = _thresholds(tmp_path, "clip_score_min: 20\n")
    cfg = SelectConfig(thresholds=th, per_class=3)
    assert what_changed(paths, stage_inputs(fake_run, cfg)) == ["never finished"]
    summary = run_select(fake_run, cfg)
    assert isinstance(summary, SelectionSummary) and summary == SelectionSummary.read(paths.selection_json)
    assert summary.num_scored == 24 and summary.thresholds["clip_score_min"] == 20
    assert is_current(paths, stage_inputs(fake_run, cfg)) and what_changed(paths, stage_inputs(fake_run, cfg)) == []
    assert read_state(paths, "select").facts == {"kept": summary.num_kept, "scored": 24}
    before = paths.selection_parquet.stat().st_mtime_ns
    assert run_select(fake_run, cfg) == summary  # current: read back, nothing rewritten
    assert paths.selection_parquet.stat().st_mtime_ns == before

    other_quota = SelectConfig(thresholds=th, per_class=4)
    assert not is_current(paths, stage_inputs(fake_run, other_quota))
    assert what_changed(paths, stage_inputs(fake_run, other_quota)) == ["settings"]
    assert stage_inputs(fake_run, SelectConfig()).settings["per_class"] == 8  # the default quota is the run's

    Path(th).write_text("clip_score_min: 25\n")  # same path, new content
    assert not is_current(paths, stage_inputs(fake_run, cfg))
    assert what_changed(paths, stage_inputs(fake_run, cfg)) == ["settings"]
    assert run_select(fake_run, cfg).thresholds["clip_score_min"] == 25
    assert paths.selection_parquet.stat().st_mtime_ns != before
    copy = tmp_path / "copy.yaml"
    copy.write_text("clip_score_min: 25  # the same thresholds elsewhere\n")
    assert is_current(paths, stage_inputs(fake_run, SelectConfig(thresholds=str(copy), per_class=3)))

    st = paths.summary_json.stat()  # a re-score rewrites summary.json
    os.utime(paths.summary_json, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert what_changed(paths, stage_inputs(fake_run, cfg)) == ["files"]
    run_select(fake_run, cfg)
    mark_current(paths, StageInputs(stage="score", settings={"clip_model": "another"}))
    assert what_changed(paths, stage_inputs(fake_run, cfg)) == ["upstream"]
