"""Issue 20, item 2: the dataset card and the report state every threshold that differs from the defaults, alike.

Before, both filtered thresholds with ``v not in (None, False)``: ``clip_class_prob_min: 0.0`` (``0.0 == False``)
and ``drop_duplicates: false`` vanished, and ``drop_nsfw`` read "True" in the card and "yes" in the report. The
expected text below is written out from the thresholds file, not computed by the code under test.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from conftest import write_fake_run
from release_fixtures import write_fake_scores

from imagenet_plus.release import ReleaseConfig, run_release
from imagenet_plus.report import ReportConfig, run_report
from imagenet_plus.select import SelectConfig, Thresholds, run_select
from imagenet_plus.select.config import non_default_thresholds

#: The thresholds file of the test and how both documents must show it (key order: the docs table's).
THRESHOLDS_YAML = "drop-nsfw: false\nclip-class-prob-min: 0.0\ndrop_duplicates: false\ndiversity: 0.3\n"
SHOWN = ["clip_class_prob_min: 0.0", "drop_duplicates: false", "drop_nsfw: false"]


def test_non_default_thresholds_keeps_zero_and_false() -> None:
    assert non_default_thresholds(Thresholds().to_dict()) == []
    assert non_default_thresholds(None) == []
    given = {**Thresholds().to_dict(), "clip_class_prob_min": 0.0, "drop_duplicates": False, "classifier_top5": True,
             "class_fid_action": "drop", "nsfw_score_max": 0.5}
    assert non_default_thresholds(given) == [("clip_class_prob_min", "0.0"), ("classifier_top5", "true"),
                                             ("drop_duplicates", "false"), ("class_fid_action", "drop")]


def test_card_and_report_show_the_same_non_default_thresholds(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run", per_class=6, shard_size=10, size=16)
    write_fake_scores(run)
    th = tmp_path / "t.yaml"
    th.write_text(THRESHOLDS_YAML)
    run_select(run, SelectConfig(thresholds=str(th), per_class=4))
    rel = run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, shard_size=4))
    card = (rel / "README.md").read_text()
    card_line = re.search(r"Thresholds \(`imagenet-plus select`\) that differ from its defaults: (.*?) \(by", card,
                          re.S)
    assert card_line is not None, card
    assert card_line.group(1).replace("\n", " ") == ", ".join(f"`{s}`" for s in SHOWN)
    page = run_report(run, ReportConfig())
    text = html.unescape(Path(page).read_text(encoding="utf-8"))
    report_line = re.search(r"Thresholds that differ from select's defaults: (.*?)</p>", text)
    assert report_line is not None
    assert report_line.group(1) == ", ".join(SHOWN)


def test_defaults_are_stated_as_none(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run", per_class=6, shard_size=10, size=16)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=4))
    card = (run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, shard_size=4)) / "README.md").read_text()
    assert "that differ from its defaults: none (by default" in card
    text = html.unescape(Path(run_report(run, ReportConfig())).read_text(encoding="utf-8"))
    assert "Thresholds that differ from select's defaults: none</p>" in text
