"""Issue 20, item 1: the documented improve loop ends with a release holding the new images, unattended.

Exactly the newcomer's steps, on the demo config (tiny random models, offline), through the console script:

    imagenet-plus run --config configs/demo.yaml --out R
    imagenet-plus select R --thresholds t.yaml --per-class 6          # two classes short
    imagenet-plus generate --config configs/demo.yaml --out R --top-up
    imagenet-plus run --config configs/demo.yaml --out R              # exit 0: re-scores, selects, releases again

``t.yaml`` is the tightest ``clip-class-prob-min`` (with duplicates kept, as the demo config does) that leaves
exactly two classes short of 6, read from the first round's scores. Before the fix the last ``run`` re-scored and
then stopped with ``error: R/release holds a different release …`` (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagenet_plus.contract import INFO_NAME

REPO = Path(__file__).resolve().parents[2]
QUOTA = 6


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "imagenet_plus", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _two_classes_short(run: Path) -> float:
    """The ``clip-class-prob-min`` that leaves exactly two classes with fewer than QUOTA images passing."""
    import pandas as pd

    scores = pd.concat(pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet")))
    for threshold in sorted(scores["clip_class_prob"].unique()):
        passing = scores[scores["clip_class_prob"] >= threshold].groupby("class_id").size()
        short = [c for c in scores["class_id"].unique() if passing.get(c, 0) < QUOTA]
        if len(short) == 2:
            return float(threshold)
    raise AssertionError("no clip-class-prob-min leaves exactly two classes short")


def _release_keys(rel: Path) -> set[str]:
    import webdataset as wds

    info = json.loads((rel / INFO_NAME).read_text())
    urls = [str(rel / f) for split in info["splits"].values() for f in split["filenames"]]
    return {s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


@pytest.mark.slow
def test_run_select_short_top_up_run_releases_the_new_images(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    run = clone / "R"
    _ok(_cli(clone, "run", "--config", "configs/demo.yaml", "--out", "R"))
    first_keys = _release_keys(run / "release")
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    per_class = demo["images-per-class"]
    assert all(int(k.rsplit("_", 1)[1]) < per_class for k in first_keys)

    (clone / "t.yaml").write_text(yaml.safe_dump({"drop-duplicates": False,
                                                  "clip-class-prob-min": _two_classes_short(run)}))
    out = _ok(_cli(clone, "select", "R", "--thresholds", "t.yaml", "--per-class", str(QUOTA))).stdout
    assert f"2 class(es) short of {QUOTA}" in out
    short = json.loads((run / "selection.json").read_text())["short"]
    assert len(short) == 2

    _ok(_cli(clone, "generate", "--config", "configs/demo.yaml", "--out", "R", "--top-up"))
    planned = yaml.safe_load((run / "run.yaml").read_text())
    assert [s["kind"] for s in planned["segments"]] == ["initial", "top-up"]

    proc = _ok(_cli(clone, "run", "--config", "configs/demo.yaml", "--out", "R"))
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    assert stages["generate"]["outcome"] == "skipped"
    assert {stages[s]["outcome"] for s in ("score", "select", "release", "report")} == {"ran"}, proc.stderr[-2000:]
    # the release is the new selection, top-up images included, made from this run; nothing left beside it
    import pandas as pd

    selection = pd.read_parquet(run / "selection.parquet")
    kept = set(selection.loc[selection["kept"], "key"])
    new_keys = {k for k in selection["key"] if int(k.rsplit("_", 1)[1]) >= per_class}
    assert new_keys and {k.rsplit("_", 1)[0] for k in new_keys} == set(short)
    released = _release_keys(run / "release")
    assert released == kept
    assert released & new_keys
    info = json.loads((run / "release" / INFO_NAME).read_text())
    assert info["run_id"] == planned["run_id"] and info["config_hash"] == planned["config_hash"]
    assert not [p.name for p in run.iterdir() if p.name.startswith("release.")]
