"""Tests of imagenet_plus.report on a fake run with fake scores (no model), with and without a selection."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_score_summary, write_fake_run
from typer.testing import CliRunner

from imagenet_plus.contract import DiagnosisSummary, FlaggedClass, Geometry, RunPaths, SelectionSummary
from imagenet_plus.contract.report import ReportSummary
from imagenet_plus.errors import UserError
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.freshness import is_current, read_state, what_changed
from imagenet_plus.report import ReportConfig, run_report, stage_inputs
from imagenet_plus.report.plots import pca_2d, threshold_lines

CUSTOM = [
    {"label": 3, "id": "granny_smith", "name": "Granny Smith", "lemmas": ["Granny Smith"], "definition": "",
     "hypernym": "", "group": ""},
    {"label": 4, "id": "n07753592", "name": "banana", "lemmas": ["banana"], "definition": "elongated fruit",
     "hypernym": "edible fruit", "group": "noun.food"},
]


def write_scores(run: Path, dim: int = 8, seed: int = 0, text_embeddings: bool = True) -> list[dict]:
    """Score files per the scoring contract for every sample of ``run``; returns the rows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    scores = run / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    classes = json.loads((run / "classes.json").read_text())
    all_rows = []
    for tar in sorted((run / "generated").glob("*.tar")):
        rows = []
        for sample in iter_shard(tar):
            meta = json.loads(sample["json"])
            i, label = meta["index"], meta["label"]
            imagenet = meta["class_id"].startswith("n")
            rows.append({
                "key": sample["__key__"], "label": label, "class_id": meta["class_id"],
                "clip_score": float(20 + 10 * rng.random()), "clip_class_score": float(18 + 12 * rng.random()),
                "clip_class_prob": float(rng.random()), "clip_class_rank": int(rng.integers(1, 4)),
                "isc_kl": float(rng.gamma(2.0, 0.5)),
                "classifier_top1": (bool(i % 2 == 0) if imagenet else None),
                "classifier_top5": (bool(i % 4 != 3) if imagenet else None),
                "classifier_prob": (float(rng.random()) if imagenet else None),
                "realism": None, "dup_of": (f"{meta['class_id']}_{i - 1:06d}" if i == 5 else None),
                "nsfw": False, "attempt": 0,
            })
        df = pd.DataFrame(rows)
        for col in ("classifier_top1", "classifier_top5"):
            df[col] = df[col].astype("boolean")
        for col in ("classifier_prob", "realism"):
            df[col] = df[col].astype("float64")
        df.to_parquet(scores / f"{tar.stem}.parquet", index=False)
        np.save(scores / f"{tar.stem}.clip.npy", rng.normal(size=(len(df), dim)).astype(np.float16))
        all_rows += rows
    if text_embeddings:
        np.save(scores / "class_text_embeddings.npy", rng.normal(size=(len(classes), dim)).astype(np.float16))
    per_class = {c["id"]: {"fid": 100.0 + c["label"], "vendi": 2.5, "clip_score_mean": 25.0, "duplicates": 1,
                           "count": sum(r["class_id"] == c["id"] for r in all_rows)} for c in classes}
    fake_score_summary(per_class, fid=150.5, kid_mean=0.07, inception_score_mean=2.1, inception_score_std=0.2,
                       clip_score_mean=25.1, precision=0.3, recall=0.2, num_images=len(all_rows),
                       reference={"path": "/data/imagenet/val", "kind": "folder"},
                       reference_arg="/data/imagenet/val").write(scores / "summary.json")
    return all_rows


def select(run: Path, per_class: int = 4) -> SelectionSummary:
    from imagenet_plus.select import SelectConfig, run_select

    th = run / "thresholds.yaml"
    th.write_text("clip_score_min: 22\nclip_class_prob_min: 0.2\n")
    return run_select(run, SelectConfig(thresholds=str(th), per_class=per_class))


@pytest.fixture
def scored_run(tmp_path: Path) -> Path:
    from conftest import FAKE_CLASSES

    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=10, classes=FAKE_CLASSES + CUSTOM)
    write_scores(run)
    return run


def is_up_to_date(run: Path, cfg: ReportConfig) -> bool:
    """Whether the report of ``run`` is current for ``cfg``: the question ``run`` and the stage ask."""
    return is_current(RunPaths(run), stage_inputs(run, cfg))


def referenced_files(index: Path) -> list[str]:
    text = index.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"#]+)"', text)
    return [r for r in refs if not r.startswith(("http:", "https:", "mailto:"))]


def check_report(report: Path) -> list[str]:
    index = report / "index.html"
    assert index.stat().st_size > 1000
    refs = referenced_files(index)
    assert refs
    for ref in refs:
        target = report / ref
        assert target.is_file(), ref
        assert target.stat().st_size > 500, ref
    assert not (report.parent / "report.partial").exists()
    return refs


def test_report_with_selection(scored_run: Path) -> None:
    summary = select(scored_run)
    index = run_report(scored_run, ReportConfig(sample_classes=3, sheet_images=4, thumb_size=64))
    refs = check_report(index.parent)
    for name in ("scores.png", "per_class.png", "groups.png", "class_map.png", "per_class.csv"):
        assert name in refs
    assert len([r for r in refs if r.startswith("sheets/")]) == 3
    text = index.read_text()
    assert "worst rejected" in text and "composite" in text
    assert "150.5" in text and "tiny-random" in text  # headline FID and a model name
    for group in ("animal", "artifact", "food", "custom"):
        assert f"<td>{group}</td>" in text
    import pandas as pd

    table = pd.read_csv(index.parent / "per_class.csv")
    assert len(table) == 5
    rates = dict(zip(table["class_id"], table["pass_rate"], strict=True))
    for cid, rate in summary.pass_rate.items():
        assert rates[cid] == pytest.approx(rate, abs=1e-6)
    kept = dict(zip(table["class_id"], table["kept"], strict=True))
    assert kept == summary.kept
    # ImageNet classes have classifier hits (even index = top-1 hit → 4 of 8), custom ones none.
    top1 = dict(zip(table["class_id"], table["top1_rate"], strict=True))
    assert top1["n01440764"] == pytest.approx(0.5)
    assert np.isnan(top1["granny_smith"])
    meta = ReportSummary.read(index.parent / "report.json")
    assert meta.kept == sum(summary.kept.values()) and meta.images == 40 and meta.classes == 5
    assert meta.headline["fid"] == 150.5 and len(meta.sampled_classes) == 3
    assert meta.fingerprint == read_state(RunPaths(scored_run), "report").fingerprint
    assert is_up_to_date(scored_run, ReportConfig(sample_classes=3, sheet_images=4, thumb_size=64))
    assert not is_up_to_date(scored_run, ReportConfig())


def test_report_without_selection_or_text_embeddings(scored_run: Path) -> None:
    (scored_run / "scores" / "class_text_embeddings.npy").unlink()
    index = run_report(scored_run, ReportConfig(sample_classes=2, sheet_images=3))
    refs = check_report(index.parent)
    assert "class_map.png" not in refs
    text = index.read_text()
    assert "No selection yet" in text
    assert "no class map" in text


def test_rerun_replaces_report_and_sees_new_selection(scored_run: Path) -> None:
    cfg = ReportConfig(sample_classes=1, sheet_images=2)
    run_report(scored_run, cfg)
    assert is_up_to_date(scored_run, cfg)
    select(scored_run)
    assert not is_up_to_date(scored_run, cfg)
    index = run_report(scored_run, cfg)
    assert "worst rejected" in index.read_text()
    assert not (scored_run / "report.old").exists()


def test_contact_sheet_picks_best_and_worst(scored_run: Path) -> None:
    import pandas as pd

    from imagenet_plus.report.scan import load_frame
    from imagenet_plus.report.sheets import pick_sheet_keys

    select(scored_run)
    df = load_frame(RunPaths(scored_run))
    best, worst, col = pick_sheet_keys(df, "n01440764", 3)
    assert col == "composite"
    sel = pd.read_parquet(scored_run / "selection.parquet")
    c = sel[sel["class_id"] == "n01440764"]
    kept = c[c["kept"]].sort_values("key")
    rejected = c[~c["kept"]].sort_values("key")
    expect_best = kept.sort_values("composite", ascending=False, kind="stable")["key"].tolist()[:3]
    expect_worst = rejected.sort_values("composite", kind="stable")["key"].tolist()[:3]
    assert len(expect_worst) == 3
    assert [k for k, _, _ in best] == expect_best
    assert [k for k, _, _ in worst] == expect_worst


def test_threshold_lines_and_pca() -> None:
    lines = threshold_lines({"clip_score_min": 20, "classifier_top5": True, "class_fid_max": 80.0, "realism_min": None})
    assert lines == {"clip_score": [("min", 20.0)], "class_fid": [("max", 80.0)]}
    x = np.array([[0, 0, 0], [2, 0, 0], [4, 0, 1e-9], [6, 0, 0]], dtype=float)
    xy = pca_2d(x)
    assert np.allclose(np.abs(xy[:, 0]), [3, 1, 1, 3])
    assert np.allclose(xy[:, 1], 0, atol=1e-6)


def test_report_before_score_is_an_error(fake_run: Path) -> None:
    from imagenet_plus.cli import app

    r = CliRunner().invoke(app, ["report", str(fake_run)])
    assert r.exit_code != 0
    assert isinstance(r.exception, UserError)
    assert "imagenet-plus score" in r.exception.message and str(fake_run / "scores") in r.exception.message
    assert not (fake_run / "report").exists()


def test_report_bad_inputs(scored_run: Path, tmp_path: Path) -> None:
    np.save(scored_run / "scores" / "class_text_embeddings.npy", np.zeros((2, 8), dtype=np.float16))
    with pytest.raises(UserError, match="class_text_embeddings.npy has shape"):
        run_report(scored_run, ReportConfig())
    assert not (scored_run / "report").exists()
    (scored_run / "scores" / "00000.parquet").write_bytes(b"not a parquet")
    with pytest.raises(UserError, match="00000.parquet"):
        run_report(scored_run, ReportConfig())
    with pytest.raises(UserError, match="not a run directory"):
        run_report(tmp_path, ReportConfig())
    with pytest.raises(UserError, match="sheet-images"):
        ReportConfig(sheet_images=0)


@pytest.mark.slow
def test_cli_report_subprocess(scored_run: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "imagenet_plus", "report", str(scored_run), "--sample-classes", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("index.html")
    check_report(scored_run / "report")
    shutil.rmtree(scored_run / "scores")
    p = subprocess.run([sys.executable, "-m", "imagenet_plus", "report", str(scored_run)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: no scores in")


CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell")
CHROMIUM = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None) or shutil.which("chromium-headless-shell") \
    or shutil.which("chromium")


def require_chromium(found: str | None = CHROMIUM) -> str:
    """The headless Chromium binary; skip without one, but fail when ``CI`` is set (the check must run there)."""
    if found is None:
        message = (f"headless Chromium not found ({' or '.join(CHROMIUM_PATHS)}): install chromium-headless-shell "
                   "('make setup' does)")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {message}; the report's browser test must not be skipped in CI")
        pytest.skip(message)
    return found


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set and headless Chromium not found"):
        require_chromium(None)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="headless Chromium not found"):
        require_chromium(None)
    assert require_chromium("/usr/bin/chromium") == "/usr/bin/chromium"


@pytest.mark.slow
def test_report_renders_in_chromium(scored_run: Path, tmp_path: Path) -> None:
    """Debian's headless Chromium renders the page with every image loaded (none broken)."""
    import subprocess

    chromium = require_chromium()
    select(scored_run)
    write_diagnosis(scored_run)
    index = run_report(scored_run, ReportConfig(sample_classes=2))
    # The DOM after load: every <img> must have a natural width (a missing file gives 0).
    probe = index.parent / "probe.html"
    probe.write_text(index.read_text().replace(
        "</body>",
        "<script>window.onload=()=>{const bad=[...document.images].filter(i=>!i.naturalWidth).length;"
        "document.title='images:'+document.images.length+' broken:'+bad;}</script></body>"))
    p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    title = re.search(r"<title>(images:\d+ broken:\d+)</title>", p.stdout)
    assert title, p.stdout[:500]
    n_images = len(re.findall(r"<img ", index.read_text()))
    assert title.group(1) == f"images:{n_images} broken:0"
    assert '<h2 id="diagnosis">Diagnosis: why classes fail (worst first)</h2>' in p.stdout  # the diagnosis section
    assert 'src="diagnosis_map.png"' in p.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", index.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10000


# ------------------------------------------------------------------------------------------------
# Streaming: the two passes over the shards give what pandas gives on the whole frame


def _whole_frame(run: Path):
    """Every score row joined with the selection by pandas (the independent computation)."""
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in sorted((run / "scores").glob("*.parquet"))], ignore_index=True)
    sel = pd.read_parquet(run / "selection.parquet", columns=["key", "kept", "reason", "composite"])
    return df.merge(sel, on="key", how="left")


def test_streamed_histograms_and_table_match_pandas(scored_run: Path) -> None:
    import pandas as pd

    from imagenet_plus.contract import read_class_records
    from imagenet_plus.report.scan import SCORE_TITLES, SelectionLookup, scan_histograms, scan_scores
    from imagenet_plus.report.tables import per_class_table

    select(scored_run)
    paths = RunPaths(scored_run)
    classes = read_class_records(paths) + [{"label": 5, "id": "empty_class", "name": "empty", "group": ""}]
    lookup = SelectionLookup.read(paths.selection_parquet)
    scan = scan_scores(paths, classes, lookup)
    hist, rows = scan_histograms(paths, scan, lookup, ["n01440764"])
    df = _whole_frame(scored_run)
    assert scan.images == len(df) and scan.kept == int(df["kept"].sum())
    assert set(hist.edges) == {c for c in SCORE_TITLES if df[c].notna().any()}
    for col, edges in hist.edges.items():
        v = df[col].astype(float).to_numpy()
        finite = v[np.isfinite(v)]
        expect_edges = np.histogram_bin_edges(finite, bins=min(40, max(5, int(np.sqrt(len(finite))) + 1)))
        np.testing.assert_allclose(edges, expect_edges)
        kept = df["kept"].to_numpy(bool)
        np.testing.assert_array_equal(hist.counts[col][0], np.histogram(v[kept & np.isfinite(v)], expect_edges)[0])
        np.testing.assert_array_equal(hist.counts[col][1], np.histogram(v[~kept & np.isfinite(v)], expect_edges)[0])
    assert sorted(rows["key"]) == sorted(df.loc[df["class_id"] == "n01440764", "key"])

    table = per_class_table(scan, classes, {}, has_selection=True).set_index("class_id")
    g = df.groupby("class_id")
    assert table.loc["empty_class", "images"] == 0 and np.isnan(table.loc["empty_class", "pass_rate"])
    for cid, part in g:
        row = table.loc[cid]
        assert row["images"] == len(part)
        assert row["kept"] == int(part["kept"].sum())
        assert row["pass_rate"] == pytest.approx(part["reason"].isin(["kept", "over_quota"]).mean())
        assert row["clip_score_mean"] == pytest.approx(part["clip_score"].mean())
        top1 = pd.to_numeric(part["classifier_top1"].astype("Float64"), errors="coerce").astype(float)
        assert (np.isnan(row["top1_rate"]) and top1.isna().all()) or row["top1_rate"] == pytest.approx(top1.mean())


def test_selection_lookup_finds_every_key_and_misses_unknown_ones(scored_run: Path) -> None:
    import pandas as pd

    from imagenet_plus.report.scan import SelectionLookup

    select(scored_run)
    sel = pd.read_parquet(scored_run / "selection.parquet")
    lookup = SelectionLookup.read(scored_run / "selection.parquet", batch_rows=7)  # several batches
    keys = list(sel["key"][::-1]) + ["n01440764_999999", "zz"]
    kept, passed, composite = lookup.find(keys)
    by_key = sel.set_index("key")
    assert list(kept[:-2]) == [bool(by_key.loc[k, "kept"]) for k in keys[:-2]]
    assert list(passed[:-2]) == [by_key.loc[k, "reason"] in ("kept", "over_quota") for k in keys[:-2]]
    np.testing.assert_allclose(composite[:-2], [by_key.loc[k, "composite"] for k in keys[:-2]])
    assert not kept[-2:].any() and not passed[-2:].any() and np.isnan(composite[-2:]).all()


def test_report_reads_only_contract_columns_it_uses(scored_run: Path) -> None:
    from imagenet_plus.contract import SCORE_COLUMNS
    from imagenet_plus.report.scan import CLASS_MEANS, SCORE_TITLES, columns_to_read

    assert set(SCORE_TITLES) <= set(SCORE_COLUMNS) and set(CLASS_MEANS.values()) <= set(SCORE_COLUMNS)
    cols = columns_to_read(scored_run / "scores" / "00000.parquet")
    assert {"key", "class_id", "clip_score", "classifier_top5"} <= set(cols)
    assert not {"dup_of", "nsfw", "attempt", "clip_class_rank"} & set(cols)


def test_report_failure_leaves_no_partial_folder(scored_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagenet_plus.report import sections

    run_report(scored_run, ReportConfig(sample_classes=1))
    before = (scored_run / "report" / "index.html").read_bytes()

    def broken(*args, **kwargs):
        raise UserError("plot failed")

    monkeypatch.setattr(sections, "plot_groups", broken)
    with pytest.raises(UserError, match="plot failed"):
        run_report(scored_run, ReportConfig(sample_classes=2))
    assert not (scored_run / "report.partial").exists()
    assert (scored_run / "report" / "index.html").read_bytes() == before


# ------------------------------------------------------------------------------------------------
# The diagnosis section (RUN/diagnosis.parquet from the diagnose stage)


def write_diagnosis(run: Path, reference: Path | None = None) -> list[str]:
    """A diagnosis.parquet + diagnosis.json in the diagnose stage's format; returns the class ids worst first."""
    import pandas as pd

    rows = [  # (class id, verdict, mean zero-shot class probability)
        ("n01440764", "ok", 0.9), ("n02102040", "low-diversity", 0.5), ("n03000684", "ambiguous", 0.6),
        ("granny_smith", "ambiguous", 0.3), ("n07753592", "concept-failure", 0.1),
    ]
    classes = json.loads((run / "classes.json").read_text())
    label = {c["id"]: c["label"] for c in classes}
    frame = pd.DataFrame({
        "label": [label[c] for c, _, _ in rows], "class_id": [c for c, _, _ in rows],
        "name": [c.upper() for c, _, _ in rows], "count": 8, "verdict": [v for _, v, _ in rows],
        "flags": [v if v != "ok" else "" for _, v, _ in rows], "remedy": [f"fix {v}" for _, v, _ in rows],
        "confusion_share": 0.25, "confused_with": ["n02102040", None, "granny_smith", "n03000684", "n01440764"],
        "clip_class_prob_mean": [p for _, _, p in rows], "nearest_real_class": None,
        "zero_shot_centroid_class": ["n01440764", "n02102040", "n03000684", "n03000684", "n01440764"],
        "centroid_cosine": np.nan,
    })
    frame.to_parquet(run / "diagnosis.parquet", index=False)
    flagged = [(c, v) for c, v, _ in rows if v != "ok"]
    DiagnosisSummary(  # what the report reads of it: the reference and the note
        thresholds={}, reference=str(reference) if reference else None,
        note="no real reference" if reference is None else None, classes=len(rows),
        verdict_counts={v: sum(r[1] == v for r in rows) for v in {r[1] for r in rows}},
        flagged_classes=[FlaggedClass(class_id=c, name=c.upper(), verdict=v, flags=v, remedy=f"fix {v}")
                         for c, v in flagged],
        strategies={}, geometry=Geometry(images=40, spread=None, modality_gap=None, real_images=None,
                                         real_spread=None, centroid_cosine=None, real_modality_gap=None),
    ).write(run / "diagnosis.json")
    return ["granny_smith", "n03000684", "n07753592", "n02102040", "n01440764"]  # verdict, then lowest prob


@pytest.mark.slow
def test_diagnosis_section_worst_first_with_map_and_sheets(scored_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    real = tmp_path / "real"
    (real / "granny_smith").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (0, 200, 0)).save(real / "granny_smith" / f"{i}.JPEG")
    expected = write_diagnosis(scored_run, reference=real)
    select(scored_run)
    index = run_report(scored_run, ReportConfig(sample_classes=1, sheet_images=3))
    refs = check_report(index.parent)
    text = index.read_text()
    section = text[text.index('<h2 id="diagnosis">'):text.index('<h2 id="sheets">')]
    order = re.findall(r"<tr><td>\d+</td><td>([^<]+)</td>", section)
    assert order == expected
    counts = dict(re.findall(r"<tr><td>([a-z-]+)</td><td>(\d+)</td></tr>", section))
    assert counts == {"ambiguous": "2", "concept-failure": "1", "low-diversity": "1", "low-adherence": "0", "ok": "1"}
    assert "diagnosis_map.png" in refs
    sheets = [r for r in refs if r.startswith("sheets/diagnosis-")]
    assert sheets == [f"sheets/diagnosis-{c}.jpg" for c in expected[:4]]  # flagged classes only
    assert "real images below" in section and "(no real reference)" in section
    # the real row of granny_smith's sheet makes it taller than the synthetic-only ones
    from PIL import Image as PILImage

    with PILImage.open(index.parent / "sheets" / "diagnosis-granny_smith.jpg") as a, \
            PILImage.open(index.parent / "sheets" / "diagnosis-n03000684.jpg") as b:
        assert a.height > b.height
    # a changed diagnosis makes the report out of date
    cfg = ReportConfig(sample_classes=1, sheet_images=3)
    assert is_up_to_date(scored_run, cfg)
    (scored_run / "diagnosis.parquet").unlink()
    assert not is_up_to_date(scored_run, cfg)
    text = run_report(scored_run, cfg).read_text()
    assert "No diagnosis (run &#39;imagenet-plus diagnose&#39;" in text


def test_diagnosis_centroids_match_numpy(scored_run: Path) -> None:
    import pandas as pd

    from imagenet_plus.report.scan import class_centroids

    ids = ["n01440764", "granny_smith", "missing_class"]
    centroids, why = class_centroids(RunPaths(scored_run), ids)
    assert why is None
    frames = [pd.read_parquet(f) for f in sorted((scored_run / "scores").glob("*.parquet"))]
    emb = np.concatenate([np.load(f.with_suffix(".clip.npy")) for f in sorted((scored_run / "scores")
                                                                              .glob("*.parquet"))]).astype(float)
    cls = pd.concat(frames)["class_id"].to_numpy()
    for i, cid in enumerate(ids[:2]):
        np.testing.assert_allclose(centroids[i], emb[cls == cid].mean(axis=0), rtol=1e-6)
    assert np.isnan(centroids[2]).all()
    np.save(scored_run / "scores" / "00000.clip.npy", np.zeros((3, 8), np.float16))
    centroids, why = class_centroids(RunPaths(scored_run), ids)
    assert centroids is None and "00000.clip.npy" in why


def test_unreadable_diagnosis_is_named(scored_run: Path) -> None:
    (scored_run / "diagnosis.parquet").write_bytes(b"nope")
    with pytest.raises(UserError, match="diagnosis.parquet"):
        run_report(scored_run, ReportConfig())
    assert not (scored_run / "report").exists()


def test_diagnosis_map_draws_saved_real_centroids(scored_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    from imagenet_plus.diagnose.stage import write_centroids
    from imagenet_plus.report.inputs import read_inputs, saved_centroids
    from imagenet_plus.report.sections import diagnosis_section

    worst_first = write_diagnosis(scored_run)
    paths = RunPaths(scored_run)
    label_order = sorted(worst_first)
    rng = np.random.default_rng(5)
    syn, real = rng.normal(size=(len(label_order), 8)), rng.normal(size=(len(label_order), 8))
    syn[0] = np.nan  # a class without images
    write_centroids(paths.diagnosis_centroids, label_order, syn, real)
    got_syn, got_real = saved_centroids(paths, worst_first + ["not_in_file"])  # rows follow the asked order
    order = [label_order.index(c) for c in worst_first]
    np.testing.assert_allclose(got_syn[:-1], syn[order].astype(np.float32), equal_nan=True)
    np.testing.assert_allclose(got_real[:-1], real[order].astype(np.float32))
    assert np.isnan(got_syn[-1]).all() and np.isnan(got_real[-1]).all()

    inputs = read_inputs(paths)
    table = pd.DataFrame({"class_id": label_order, "name": label_order})
    out = tmp_path / "out"
    out.mkdir()
    section = diagnosis_section(inputs, table, None, [], ReportConfig(), out)
    assert section.data["image"] == "diagnosis_map.png" and (out / "diagnosis_map.png").stat().st_size > 0
    assert any("real (crosses)" in n for n in section.data["notes"])
    # without a reference the file holds no real centroids, and the note says they are not on the map
    write_centroids(paths.diagnosis_centroids, label_order, real, None)
    section = diagnosis_section(inputs, table, None, [], ReportConfig(), out)
    assert section.data["image"] == "diagnosis_map.png"
    assert any("Real class centroids are not on the map" in n for n in section.data["notes"])
    paths.diagnosis_centroids.write_bytes(b"nope")
    with pytest.raises(UserError, match="diagnosis_centroids.npz"):
        saved_centroids(paths, worst_first)


def test_report_is_current_until_a_setting_or_an_upstream_stage_changes(scored_run: Path) -> None:
    """A finished report is current (a second run rebuilds nothing) until its settings, a stage it reads, or
    its page change; ``what_changed`` names which part of its declaration differs."""
    paths = RunPaths(scored_run)
    cfg = ReportConfig(sample_classes=1, sheet_images=2)
    assert what_changed(paths, stage_inputs(scored_run, cfg)) == ["never finished"]
    index = run_report(scored_run, cfg)
    assert is_up_to_date(scored_run, cfg) and what_changed(paths, stage_inputs(scored_run, cfg)) == []
    assert read_state(paths, "report").facts == {"images": 40, "kept": None}
    before = {p: p.stat().st_mtime_ns for p in index.parent.rglob("*")}  # every file new if it were rebuilt
    assert run_report(scored_run, cfg) == index
    assert {p: p.stat().st_mtime_ns for p in index.parent.rglob("*")} == before

    reseeded = ReportConfig(sample_classes=1, sheet_images=2, seed=1)
    assert not is_up_to_date(scored_run, reseeded)
    assert what_changed(paths, stage_inputs(scored_run, reseeded)) == ["settings"]
    select(scored_run)  # select's record and its files are new inputs
    assert not is_up_to_date(scored_run, cfg)
    assert what_changed(paths, stage_inputs(scored_run, cfg)) == ["upstream", "files"]
    run_report(scored_run, cfg)
    assert is_up_to_date(scored_run, cfg)
    index.unlink()  # a deleted page is not current, whatever the record says
    assert not is_up_to_date(scored_run, cfg) and what_changed(paths, stage_inputs(scored_run, cfg)) == []


def test_cli_report_flags_come_from_the_config(scored_run: Path) -> None:
    from imagenet_plus.cli import app

    r = CliRunner().invoke(app, ["report", str(scored_run), "--thumb-size", "0"])
    assert r.exit_code != 0 and isinstance(r.exception, UserError)
    assert "'thumb-size' must be positive" in r.exception.message
    assert not (scored_run / "report").exists()
