"""Tests of imagenet_plus.report on a fake run with fake scores (no model), with and without a selection."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_run
from typer.testing import CliRunner

from imagenet_plus.errors import UserError
from imagenet_plus.report import ReportConfig, is_up_to_date, pca_2d, run_report, threshold_lines
from imagenet_plus.shards import iter_shard

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
    per_class = {}
    for c in classes:
        rs = [r for r in all_rows if r["class_id"] == c["id"]]
        per_class[c["id"]] = {"fid": 100.0 + c["label"], "vendi": 2.5, "clip_score_mean": 25.0,
                              "classifier_top1_rate": None, "classifier_top5_rate": None, "duplicates": 1,
                              "count": len(rs)}
    summary = {"fid": 150.5, "kid_mean": 0.07, "kid_std": 0.01, "inception_score_mean": 2.1,
               "inception_score_std": 0.2, "clip_score_mean": 25.1, "precision": 0.3, "recall": 0.2,
               "num_images": len(all_rows), "per_class": per_class,
               "models": {"clip": "tiny-random", "inception_weights": "tiny-random", "classifier": "tiny-random"},
               "reference": "/data/imagenet/val"}
    (scores / "summary.json").write_text(json.dumps(summary))
    return all_rows


def select(run: Path, per_class: int = 4) -> dict:
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
    for cid, rate in summary["pass_rate"].items():
        assert rates[cid] == pytest.approx(rate, abs=1e-6)
    kept = dict(zip(table["class_id"], table["kept"], strict=True))
    assert kept == summary["kept"]
    # ImageNet classes have classifier hits (even index = top-1 hit → 4 of 8), custom ones none.
    top1 = dict(zip(table["class_id"], table["top1_rate"], strict=True))
    assert top1["n01440764"] == pytest.approx(0.5)
    assert np.isnan(top1["granny_smith"])
    meta = json.loads((index.parent / "report.json").read_text())
    assert meta["kept"] == sum(summary["kept"].values())
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

    from imagenet_plus.contract import RunPaths
    from imagenet_plus.report import load_frame, pick_sheet_keys

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


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell") if Path(p).exists()), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_report_renders_in_chromium(scored_run: Path, tmp_path: Path) -> None:
    """Debian's headless Chromium renders the page with every image loaded (none broken)."""
    import subprocess

    select(scored_run)
    index = run_report(scored_run, ReportConfig(sample_classes=2))
    # The DOM after load: every <img> must have a natural width (a missing file gives 0).
    probe = index.parent / "probe.html"
    probe.write_text(index.read_text().replace(
        "</body>",
        "<script>window.onload=()=>{const bad=[...document.images].filter(i=>!i.naturalWidth).length;"
        "document.title='images:'+document.images.length+' broken:'+bad;}</script></body>"))
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    title = re.search(r"<title>(images:\d+ broken:\d+)</title>", p.stdout)
    assert title, p.stdout[:500]
    n_images = len(re.findall(r"<img ", index.read_text()))
    assert title.group(1) == f"images:{n_images} broken:0"
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", index.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10000
