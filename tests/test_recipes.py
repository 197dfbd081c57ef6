"""The recipes of configs/recipes/: their headers, ``imagenet-plus recipes``, each validating as a run config, and
each running end to end on the tiny models (model ids overridden with tiny-random ones, ``real`` with a tiny
real-image folder made here); the ``1/K`` CLIP threshold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.recipes import HEADER_KEYS, list_recipes, read_recipe
from imagenet_plus.pipeline.runner import load_plan, run_all
from imagenet_plus.select.config import load_thresholds

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"
#: The recipes the issue asks for, at least.
EXPECTED = {"sariyildiz-text-only", "diversity-definitely-needed", "he-clip-filter", "caption-in-prompt",
            "real-fake-no-lora"}


def header(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines before the first non-comment line, read here with a regular expression."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"^#\s*([A-Za-z ]+):\s*(.+)$", line)
        if m and m.group(1) in HEADER_KEYS:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def test_every_recipe_cites_its_paper_cas_and_what_is_not_reproduced() -> None:
    files = sorted(RECIPES.glob("*.yaml"))
    assert {f.stem for f in files} >= EXPECTED
    for f in files:
        h = header(f)
        assert set(h) == set(HEADER_KEYS), f.name
        assert h["recipe"] == f.stem
        assert re.search(r"(19|20)\d\d", h["paper"]), h["paper"]  # a venue and year
    docs = (REPO / "docs" / "recipes.md").read_text()
    for f in files:  # docs/recipes.md's table has a row per recipe file
        assert f"configs/recipes/{f.name}" in docs, f.name


def test_recipes_command_lists_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    files = sorted(RECIPES.glob("*.yaml"))
    assert [r["file"] for r in listed] == [f"configs/recipes/{f.name}" for f in files]
    for row, f in zip(listed, files):
        h = header(f)
        assert (row["name"], row["paper"], row["cas"], row["not_reproduced"]) == (
            h["recipe"], h["paper"], h["reported CAS"], h["not reproduced"])
    table = CliRunner().invoke(app, ["recipes"], terminal_width=200)
    assert table.exit_code == 0 and "real-fake-no-lora" in table.stdout and "70.9" in table.stdout


def test_a_recipe_without_its_header_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("# recipe: bad\n# paper: Someone, 2024\n# not reproduced: all\nclasses: imagenet-1k\n")
    with pytest.raises(UserError, match=r"bad.yaml: the recipe header lacks '# reported CAS: …'"):
        read_recipe(bad)
    with pytest.raises(UserError, match="recipes folder not found"):
        list_recipes(tmp_path / "nowhere")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recipe_validates_as_a_run_config(name: str, tmp_path: Path) -> None:
    plan = load_plan(RECIPES / f"{name}.yaml", tmp_path / "run")
    g = plan.generate
    assert g.classes == "imagenet-1k" and g.images_per_class == 1300
    assert g.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # real models by default
    if name == "real-fake-no-lora":
        assert (g.init_strength, g.guidance, g.steps, g.prompt_strategy) == (0.75, 2.0, 30, ("caption",))
        assert g.real and g.captioner == "Salesforce/blip-image-captioning-large"
    if name == "diversity-definitely-needed":
        assert g.guidance == (1.0, 5.0) and "domain" in g.prompt_strategy
    if name == "sariyildiz-text-only":
        assert g.guidance == 2.0 and g.real is None
    if name == "he-clip-filter":
        assert plan.thresholds == {"clip_class_prob_min": "1/K"}


def test_one_over_k_threshold(tmp_path: Path) -> None:
    f = tmp_path / "th.yaml"
    f.write_text("clip-class-prob-min: 1/K\n")
    th = load_thresholds(f)
    assert th.clip_class_prob_min == "1/K"
    assert th.for_classes(1000).clip_class_prob_min == pytest.approx(0.001)
    assert th.for_classes(4).to_dict()["clip_class_prob_min"] == 0.25
    f.write_text("clip-class-prob-min: 0.2\n")
    assert load_thresholds(f).for_classes(4).clip_class_prob_min == 0.2
    f.write_text("clip-class-prob-min: 1/N\n")
    with pytest.raises(UserError, match=r"th.yaml: key 'clip_class_prob_min' must be a number within 0..1 or 1/K"):
        load_thresholds(f)


# --------------------------------------------------------------------------------------------------
# every recipe on the tiny models


def tiny_real(root: Path, wnids: list[str]) -> Path:
    for c, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 40), (50 + 90 * c, 70 * i, 130)).save(root / wnid / f"{wnid}_{i}.JPEG")
    return root


def tiny_recipe(name: str, tmp_path: Path) -> tuple[Path, dict]:
    """The recipe with its models replaced by tiny ones, 2 classes × 4 images, and the demo's tiny scorers."""
    cfg = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update({"class-limit": 2, "images-per-class": 4, "model": "tiny-random", "steps": 2, "resolution": 32,
                "batch-size": 2, "shard-size": 4})
    if "captioner" in cfg:
        cfg["captioner"] = "tiny-random"
    if "prompt-model" in cfg:
        cfg.update({"prompt-model": "tiny-random", "llm-prompts-per-class": 3})
    if "real" in cfg:
        cfg["real"] = str(tiny_real(tmp_path / "real", ["n01440764", "n01443537"]))
    cfg["score"] = demo["score"]
    select = cfg.setdefault("select", {})
    select["per-class"] = 3
    select.setdefault("thresholds", {})["drop-duplicates"] = False  # tiny CLIP embeds every image alike
    cfg["release"] = {"val-per-class": 1, "shard-size": 4}
    cfg["report"] = {"sample-classes": 2, "sheet-images": 3}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recipe_runs_on_the_tiny_models(name: str, tmp_path: Path) -> None:
    import pandas as pd

    from imagenet_plus.io.tar import iter_shard

    path, cfg = tiny_recipe(name, tmp_path)
    run = tmp_path / "run"
    outcome = run_all(path, run)
    assert all(outcome[s] == "ran" for s in ("generate", "score", "select", "release", "report")), outcome
    metas = [json.loads(s["json"]) for tar in sorted((run / "generated").glob("*.tar")) for s in iter_shard(tar)]
    assert len(metas) == 8
    info = json.loads((run / "release" / "_info.json").read_text())
    assert sum(s["num_samples"] for s in info["splits"].values()) > 0
    card = (run / "release" / "README.md").read_text()
    if "real" in cfg:
        for m in metas:
            assert (Path(cfg["real"]) / m["source"]).is_file() and m["source"].startswith(m["class_id"] + "/")
            assert m["strategy"] == "caption" and m["prompt"].startswith(f"{m['class_name']}, ")
            assert m["init_strength"] == cfg.get("init-strength")
        assert "## Real images" in card and "non-commercial research" in card
    else:
        assert all("source" not in m for m in metas) and "## Real images" not in card
    if name == "diversity-definitely-needed":
        assert {m["guidance"] for m in metas} <= {1.0 + 0.5 * i for i in range(9)}
        assert {m["strategy"] for m in metas} <= {"domain", "name"}
    if name == "sariyildiz-text-only":
        assert {m["strategy"] for m in metas} == {"gloss"} and {m["guidance"] for m in metas} == {2.0}
    if name == "he-clip-filter":
        assert {m["strategy"] for m in metas} == {"llm"} and (run / "llm_prompts.json").is_file()
        selection = json.loads((run / "selection.json").read_text())
        assert selection["thresholds"]["clip_class_prob_min"] == 0.5  # 1/K for K = 2
        scores = pd.concat([pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet"))])
        chosen = pd.read_parquet(run / "selection.parquet").merge(scores[["key", "clip_class_prob"]], on="key")
        assert (chosen.loc[chosen["kept"], "clip_class_prob"] >= 0.5).all()
        below = chosen["clip_class_prob"] < 0.5
        assert (chosen.loc[below, "reason"] == "clip_class_prob<0.5").all()
