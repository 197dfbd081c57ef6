"""Issue 20, item 6: the small things a newcomer hit.

- the demo printed transformers' "Token indices sequence length is longer than the specified maximum sequence
  length for this model (87 > 77)" (the tiny character-level tokenizers);
- usage lines named positional arguments ``run``/``rel`` (typer's spelling) instead of ``RUN``/``REL``;
- a thresholds error listed ``source`` among the known keys (an internal field, not a key of the file);
- ``release`` without ``--val-per-class`` failed on the demo (default 50 > the 6 images a demo class keeps);
- README said nothing of how long ``make test`` takes, ``make test-fast``, ``chromium-headless-shell``, or how
  to run a real model offline.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import write_fake_run
from release_fixtures import write_fake_scores
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError

REPO = Path(__file__).resolve().parents[1]
#: A prompt longer than the tiny tokenizers' 77 tokens (one token per character).
LONG_PROMPT = "a photo of a tench, a kind of cyprinid, seen from above on a wooden table in soft morning light"
TOO_LONG = "Token indices sequence length is longer than the specified maximum"


def test_tiny_pipeline_prints_no_token_length_warning() -> None:
    import logging

    import torch

    from imagenet_plus.models.diffusion import DiffusersSource, load_pipeline
    from imagenet_plus.models.tiny import tiny_clip_tokenizer

    # transformers' handler holds whatever stderr was when it was made (another test's capture, in a full run):
    # listen on its library logger itself
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        assert len(LONG_PROMPT) > 77
        tiny_clip_tokenizer()(LONG_PROMPT)  # the tokenizer itself still warns: the check below can see the warning
        assert TOO_LONG in logged.getvalue()
        logged.seek(0)
        logged.truncate()
        source = DiffusersSource(load_pipeline("tiny-random", torch.device("cpu"), "float32"), 1, 2.0, 32, 32)
        images, _ = source([LONG_PROMPT], [""], [0])
        assert len(images) == 1
        assert TOO_LONG not in logged.getvalue()
    finally:
        library.removeHandler(handler)


@pytest.mark.parametrize(("command", "usage"), [
    ("classes", "SPEC"), ("score", "RUN"), ("diagnose", "RUN"), ("select", "RUN"), ("release", "RUN"),
    ("publish", "REL"), ("report", "RUN"),
])
def test_usage_lines_name_positional_arguments_in_capitals(command: str, usage: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], prog_name="imagenet-plus")
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == f"Usage: imagenet-plus {command} [OPTIONS] {usage}"


def test_thresholds_errors_list_only_the_documented_keys(tmp_path: Path) -> None:
    from imagenet_plus.select.config import load_thresholds

    documented = set(re.findall(r"^\| `(\w+)` \|", (REPO / "docs" / "release.md").read_text(), flags=re.M))
    for text, key in (("bogus: 1\n", "bogus"), ("source: mine\n", "source")):
        path = tmp_path / f"{key}.yaml"
        path.write_text(text)
        with pytest.raises(UserError, match=f"unknown key '{key}'") as err:
            load_thresholds(path)
        known = err.value.message.split("(known keys: ")[1].rstrip(")").split(", ")
        assert {k.replace("-", "_") for k in known} <= documented, known
        assert "source" not in known
    path = tmp_path / "ok.yaml"
    path.write_text("clip-class-prob-min: 0.3\n")
    assert load_thresholds(path).source == str(path)  # select's errors still name the file


def test_inline_thresholds_refuse_source_like_any_unknown_key(tmp_path: Path) -> None:
    from imagenet_plus.pipeline.runner import load_plan

    cfg = tmp_path / "run.yaml"
    cfg.write_text("classes: imagenet-1k\nclass-limit: 2\nimages-per-class: 2\nmodel: tiny-random\n"
                   "select: {thresholds: {source: x}}\n")
    with pytest.raises(UserError, match=r"select.thresholds: unknown key 'source' \(known keys: class-fid-action"):
        load_plan(cfg, tmp_path / "R")


def test_release_default_validation_split_adapts_to_small_classes(tmp_path: Path) -> None:
    from imagenet_plus.release import ReleaseConfig, run_release
    from imagenet_plus.release.config import val_per_class_for
    from imagenet_plus.select import SelectConfig, run_select

    assert val_per_class_for([1300, 732], None) == 50  # ImageNet's 50 where the classes are large
    assert val_per_class_for([6, 9, 0], None) == 3  # half the smallest class that keeps images
    assert val_per_class_for([1, 8], None) == 0
    assert val_per_class_for([6], 5) == 5  # an explicit value is used as given
    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=10, size=16)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=6))  # the demo's quota: 6 kept per class
    rel = run_release(run, tmp_path / "rel", ReleaseConfig())
    splits = json.loads((rel / "_info.json").read_text())["splits"]
    assert splits["validation"]["num_samples"] == 9 and splits["train"]["num_samples"] == 9
    assert ReleaseConfig().val_per_class is None
    with pytest.raises(UserError, match="val-per-class"):  # an explicit value too large still follows the policy
        run_release(run, tmp_path / "rel50", ReleaseConfig(val_per_class=50))


def test_readme_says_what_a_newcomer_needs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    development = readme[readme.index("## Development"):]
    assert "make test-fast" in development and re.search(r"10–18\s+minutes on 2 CPU cores", development)
    assert "chromium-headless-shell" in readme
    offline = readme[readme.index("## Real models offline"):readme.index("## Loading a release")]
    for needle in ("hf download", "huggingface-cli download", "HF_HUB_OFFLINE=1", "--local-dir", "local folder"):
        assert needle in offline, needle
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "chromium-headless-shell" in makefile and "test-fast:" in makefile  # what the README describes
