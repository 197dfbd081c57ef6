"""Issue 21 item 14: a hand-edited ``run.yaml`` is refused as one line naming the key, before anything is written.

The run of these tests has every kind of segment: 3 classes × 5 images (``initial``, shards 0-3), raised to 6
(``extend``, shard 4) and a top-up of 4 images of class 1 (``top-up``, shard 5). Each hostile edit is fed through
``imagenet-plus generate`` (and ``imagenet-plus run``) as a user types it; then run.yaml is put back and a re-run
ends with exactly the planned keys, each once.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cli_helpers import cli_in_process, only_error_line
from PIL import Image

from imagenet_plus.contract import RunPaths, SelectionSummary
from imagenet_plus.errors import UserError
from imagenet_plus.generate import planned_keys, run_generate
from imagenet_plus.generate.config import GenerateConfig
from imagenet_plus.io.tar import iter_shard

IDS = ("red-apple", "green-pear", "yellow-lemon")
#: The flags of the run, as a user types them (the same settings as :func:`cfg_of`).
FLAGS = ["--model", "fake/model", "--steps", "1", "--guidance", "0", "--resolution", "32", "--batch-size", "3",
         "--shard-size", "4", "--prompt-strategy", "name"]


class NoiseSource:
    """An image source without a model: noise from the seed alone."""

    scheduler_name = "NoiseScheduler"

    def __call__(self, prompts, negatives, seeds):  # type: ignore[no-untyped-def]
        images = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (32, 32, 3), dtype=np.uint8))
                  for s in seeds]
        return images, [False] * len(seeds)


def cfg_of(class_file: Path, images_per_class: int) -> GenerateConfig:
    return GenerateConfig(classes=str(class_file), images_per_class=images_per_class, model="fake/model", steps=1,
                          guidance=0.0, resolution=32, batch_size=3, shard_size=4, prompt_strategy=("name",))


def generate(class_file: Path, run: Path, images_per_class: int, top_up: bool = False) -> Any:
    return run_generate(cfg_of(class_file, images_per_class), run, top_up=top_up,
                        source_factory=lambda cfg, device: NoiseSource())


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The console entry point in-process: (exit status, its one ``error:`` line)."""
    code, out, err = cli_in_process(args, monkeypatch, capsys)
    return code, only_error_line(out, err)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder``: (sha256, mtime in ns)."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def keys_on_disk(run: Path) -> list[str]:
    return [s["__key__"] for tar in sorted((run / "generated").glob("*.tar")) for s in iter_shard(tar)]


def expected_keys(per_class: dict[str, int]) -> list[str]:
    """The keys ``{class_id}_{index:06d}`` of indices 0..n-1 of each class, worked out here by hand."""
    return sorted(f"{cid}_{i:06d}" for cid, n in per_class.items() for i in range(n))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plan")
    class_file = folder / "classes.csv"
    class_file.write_text("name\nred apple\ngreen pear\nyellow lemon\n")
    run = folder / "run"
    generate(class_file, run, 5)
    generate(class_file, run, 6)
    SelectionSummary(thresholds={}, per_class_quota=6, pass_rate={IDS[1]: 0.5}, kept={}, short={IDS[1]: 2},
                     dropped_classes=[], flagged_classes=[], reasons={}, num_kept=0, num_scored=18,
                     ).write(RunPaths(run).selection_json)
    generate(class_file, run, 6, top_up=True)  # ceil(2 / 0.5) = 4 new images of class 1
    assert sorted(keys_on_disk(run)) == expected_keys({IDS[0]: 6, IDS[1]: 10, IDS[2]: 6})
    assert [s["kind"] for s in yaml.safe_load((run / "run.yaml").read_text())["segments"]] == [
        "initial", "extend", "top-up"]
    return folder


@pytest.fixture
def copy(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run (files, mtimes) and its class file (the same path: it is part of the config)."""
    run = Path(shutil.copytree(finished_run / "run", tmp_path / "run"))
    return run, finished_run / "classes.csv"


def edit(run: Path, change: Callable[[dict], Any]) -> bytes:
    """Hand-edit run.yaml as a user would (load, change, dump); returns the original bytes."""
    path = run / "run.yaml"
    original = path.read_bytes()
    data = yaml.safe_load(original)
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return original


def _drop_top_up(d: dict) -> None:
    d["segments"].pop()
    d["num_images"] -= 4


def _shorten_top_up(d: dict) -> None:
    d["segments"][2]["ranges"] = [[1, 6, 8]]
    d["num_images"] -= 2


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        *parents, last = path.split(".")
        target = d
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[int(last) if last.isdigit() else last] = value

    return change


#: (hand edit, the one line's needle). The run.yaml path starts every message.
EDITS = {
    "lower images_per_class": (
        _set("config.images_per_class", 3),
        "key 'config.images_per_class' is 3, but the 'initial' and 'extend' segments plan 6 images of class 0: "
        "put back 6"),
    "deleted segments": (_set("segments", []), "key 'segments' is empty"),
    "deleted top-up segment": (_drop_top_up, "generated/00005.json is beyond the plan of"),
    "shortened top-up": (_shorten_top_up, f"generated/00005.json: shard 00005 holds 4 images {IDS[1]}_000006.."
                                          f"{IDS[1]}_000009, but "),
    "overlapping segments": (_set("segments.1.ranges.0", [0, 3, 4]),
                             "key 'segments[1].ranges[0]' starts class 0 at index 3, but earlier segments already "
                             "plan indices up to 4: index 3 would be generated twice"),
    "gap between segments": (_set("segments.1.ranges.0", [0, 6, 7]),
                             "key 'segments[1].ranges[0]' starts class 0 at index 6, but earlier segments end at 5"),
    "first segment not initial": (_set("segments.0.kind", "extend"), "key 'segments[0].kind' is 'extend'"),
    "unknown class in a segment": (_set("segments.2.ranges.0", [7, 6, 10]),
                                   "key 'segments[2].ranges[0]' names class 7, but num_classes is 3"),
    "num_images": (_set("num_images", 99), "key 'num_images' is 99, but the segments plan 22 images: put back 22"),
    "num_classes": (_set("num_classes", 4), "key 'segments[0].ranges' has no range of class 3"),
    "shard_size": (_set("config.shard_size", 5),
                   "key 'config.shard_size' is 5, but the run was made with 4 (its config_hash says so): put back 4"),
    "images_per_class type": (_set("config.images_per_class", "six"),
                              "key 'config.images_per_class' must be a positive integer, got 'six'"),
    "quality type": (_set("config.quality", "high"), "run.yaml: config: key 'quality'"),
    "num_classes type": (_set("num_classes", "three"), "key 'num_classes' must be an integer, got 'three'"),
    "ranges type": (_set("segments.0.ranges", [[0, 0]]), "key 'segments[0].ranges' must be a list of"),
    "unknown strategy": (_set("segments.2.strategies", [[1, "poetic"]]),
                         "key 'segments[2].strategies[0]' names the unknown prompt strategy 'poetic'"),
    "strategy of a class without indices": (_set("segments.2.strategies", [[0, "gloss"]]),
                                            "key 'segments[2].strategies[0]' names class 0, which has no range"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_hand_edited_run_yaml_is_refused_by_generate_with_one_line_and_nothing_written(
        case: str, copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run, class_file = copy
    change, needle = EDITS[case]
    original = edit(run, change)
    before = snapshot(run)
    # the user raises images per class to 8 on the hand-edited run
    code, line = run_main(["generate", "--out", str(run), "--classes", str(class_file), "--images-per-class", "8",
                           *FLAGS], monkeypatch, capsys)
    assert code == 2
    assert line.startswith(f"error: {run / 'run.yaml'}: ") or line.startswith(f"error: {run / 'generated'}"), line
    assert needle in line, line
    assert snapshot(run) == before, "nothing written, nothing deleted"
    # run.yaml put back: the same command ends with exactly the planned keys, each once (8 per class + the top-up)
    (run / "run.yaml").write_bytes(original)
    result = generate(class_file, run, 8)
    keys = keys_on_disk(run)
    assert result.done and not [k for k, n in Counter(keys).items() if n > 1]
    assert sorted(keys) == expected_keys({IDS[0]: 8, IDS[1]: 12, IDS[2]: 8}) == sorted(planned_keys(run))


def test_hand_edited_run_yaml_is_refused_by_run_before_any_stage(
        copy: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run, class_file = copy
    config = tmp_path / "config.yaml"
    config.write_text(f"classes: {class_file}\nimages-per-class: 6\nmodel: fake/model\nsteps: 1\nguidance: 0\n"
                      "resolution: 32\nbatch-size: 3\nshard-size: 4\nprompt-strategy: [name]\n")
    for case in ("deleted segments", "lower images_per_class", "deleted top-up segment"):
        change, needle = EDITS[case]
        original = edit(run, change)
        before = snapshot(run)
        code, line = run_main(["run", "--config", str(config), "--out", str(run)], monkeypatch, capsys)
        assert code == 2 and needle in line, line
        assert snapshot(run) == before, case
        (run / "run.yaml").write_bytes(original)


def test_lowering_images_per_class_in_run_yaml_no_longer_makes_duplicate_keys(copy: tuple[Path, Path]) -> None:
    """The issue's reproduction: images_per_class lowered from 6 to 3 in run.yaml, then generate with 7. Before the
    check, generate planned indices 3..6 again (an ``extend`` segment from 3) and wrote duplicate keys."""
    run, class_file = copy
    edit(run, _set("config.images_per_class", 3))
    with pytest.raises(UserError, match="is 3, but the 'initial' and 'extend' segments plan 6 images"):
        generate(class_file, run, 7)
    assert len(keys_on_disk(run)) == len(set(keys_on_disk(run))) == 22


def test_raising_images_per_class_after_a_top_up_plans_each_index_once(copy: tuple[Path, Path]) -> None:
    """Not a hand edit: a top-up gave class 1 indices 6..9; raising images per class to 7 gives every class one more
    index after its last (class 1: 10), where it used to plan index 6 of class 1 a second time."""
    run, class_file = copy
    generate(class_file, run, 7)
    keys = keys_on_disk(run)
    assert len(keys) == len(set(keys)) == 25
    assert sorted(keys) == expected_keys({IDS[0]: 7, IDS[1]: 11, IDS[2]: 7}) == sorted(planned_keys(run))
