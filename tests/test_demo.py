"""The README's main-job command (``make demo``) works on a fresh clone: the demo config, end to end, offline.

The repository's ``configs/`` folder is copied into an empty directory and the documented command
``imagenet-plus run --config configs/demo.yaml --out runs/demo`` runs there, as in a fresh clone (the
tiny random models are built under the test session's cache folder, nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagenet_plus.contract import INFO_NAME

REPO = Path(__file__).resolve().parents[1]
DEMO_COMMAND = "imagenet-plus run --config configs/demo.yaml --out"


def test_demo_command_is_the_documented_one() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert DEMO_COMMAND in makefile
    readme = REPO / "README.md"
    if readme.is_file():
        assert "make demo" in readme.read_text() or DEMO_COMMAND in readme.read_text()


def test_every_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config loads and validates (paths relative to the repository root, as documented)."""
    from imagenet_plus.pipeline.runner import load_plan

    monkeypatch.chdir(REPO)
    configs = sorted((REPO / "configs").glob("*.yaml"))
    names = {p.name for p in configs}
    assert {"demo.yaml", "imagenet-1k-sd-turbo.yaml", "imagenet-1k-sd15.yaml", "wordnet-objects.yaml",
            "fruits.yaml"} <= names
    for cfg in configs:
        plan = load_plan(cfg.relative_to(REPO), tmp_path / cfg.stem)
        assert plan.generate.images_per_class > 0
        text = cfg.read_text()
        if cfg.name != "demo.yaml":  # real configs state their cost
            assert re.search(r"GPU-hours", text), cfg.name
    demo = load_plan(Path("configs/demo.yaml"), tmp_path / "demo")
    assert demo.generate.model == "tiny-random"
    assert {demo.score.clip_model, demo.score.inception_weights, demo.score.classifier} == {"tiny-random"}
    sd15 = yaml.safe_load((REPO / "configs" / "imagenet-1k-sd15.yaml").read_text())
    assert 1.5 <= float(sd15["guidance"]) <= 2.5


def test_fruits_class_list_resolves() -> None:
    from imagenet_plus.classes.sets import resolve_classes

    classes = resolve_classes(str(REPO / "configs" / "fruits.csv"))
    assert len(classes) >= 10
    assert len({c.id for c in classes}) == len(classes)


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "imagenet_plus", *DEMO_COMMAND.split()[1:], "runs/demo"]
    p = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    run = clone / "runs" / "demo"
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    # diagnose is a stage of the demo when its config has a diagnose section (optional stages run only then)
    expected = {"generate", "score", "select", "release", "report"} | ({"diagnose"} if "diagnose" in demo else set())
    assert set(stages) == expected
    n_images = demo["class-limit"] * demo["images-per-class"]
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert summary["num_images"] == n_images
    info = json.loads((run / "release" / INFO_NAME).read_text())
    kept = demo["class-limit"] * demo["select"]["per-class"]
    assert sum(s["num_samples"] for s in info["splits"].values()) == kept
    index = run / "report" / "index.html"
    refs = re.findall(r'(?:src|href)="([^"#]+)"', index.read_text())
    assert refs and all((index.parent / r).stat().st_size > 0 for r in refs)
    if "diagnose" in demo:  # the report shows the diagnosis, not the "no diagnosis" note
        assert '<h2 id="diagnosis">Diagnosis: why classes fail' in index.read_text()
        assert "diagnosis_map.png" in refs
    # the release loads through the same YAML + webdataset path the Hub uses
    import datasets

    ds = datasets.load_dataset(str(run / "release"), split="train")
    assert len(ds) == info["splits"]["train"]["num_samples"]
    # the same command again only skips
    p = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stderr.count("already done, skipped") == len(expected)
