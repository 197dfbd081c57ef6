"""Issue 21 item 13: a class id too long for the file names built from it is refused where ids are made.

The limit (``contract.names.CLASS_ID_MAX``) is derived from the longest such name, a diagnosis contact sheet
being written (``diagnosis-{id}.jpg.partial``), against ``NAME_MAX``: an id of exactly the limit goes through
generate, diagnose, select, release (with the image-folder export) and report, and one character more would
not fit in the file system's names (the file system itself says so).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli_in_process
from PIL import Image

from imagenet_plus.classes.sets import read_classes_json, resolve_classes
from imagenet_plus.contract.names import CLASS_ID_MAX, NAME_MAX, PARTIAL_SUFFIX
from imagenet_plus.errors import UserError
from imagenet_plus.generate import planned_keys, run_generate
from imagenet_plus.generate.config import GenerateConfig
from imagenet_plus.io.tar import iter_shard

LONG = "a" * 300


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The console entry point in-process: (exit status, stderr)."""
    code, out, err = cli_in_process(args, monkeypatch, capsys)
    assert "Traceback" not in out + err
    return code, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class NoiseSource:
    """An image source without a model: noise from the seed alone."""

    scheduler_name = "NoiseScheduler"

    def __call__(self, prompts, negatives, seeds):  # type: ignore[no-untyped-def]
        images = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (32, 32, 3), dtype=np.uint8))
                  for s in seeds]
        return images, [False] * len(seeds)


def cfg_of(class_file: Path, **kw) -> GenerateConfig:  # type: ignore[no-untyped-def]
    base = dict(classes=str(class_file), images_per_class=3, model="fake/model", steps=1, guidance=0.0,
                resolution=32, batch_size=4, shard_size=4, prompt_strategy=("name",))
    return GenerateConfig(**{**base, **kw})


def generated_keys(run: Path) -> list[str]:
    return [s["__key__"] for tar in sorted((run / "generated").glob("*.tar")) for s in iter_shard(tar)]


def test_a_300_character_class_id_is_one_line_in_classes_and_generate_and_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    classes = tmp_path / "classes.csv"
    classes.write_text(f"name,id\nred apple,{LONG}\ngreen pear,pear\n")
    before = classes.read_bytes()
    code, err = run_main(["classes", str(classes)], monkeypatch, capsys)
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: {classes}: row 1 (line 2): class id 'aaaaaaaaaaaaaaaaaaaaaaaa...' is 300 "
                           "characters long"), line
    assert f"at most {CLASS_ID_MAX} fit in a file name" in line
    run = tmp_path / "run"
    code, err = run_main(["generate", "--out", str(run), "--classes", str(classes), "--model", "tiny-random",
                          "--images-per-class", "2"], monkeypatch, capsys)
    assert code == 2 and one_error_line(err) == line
    assert not run.exists() and classes.read_bytes() == before
    # corrected: an id of exactly the limit; generate ends with exactly the planned keys
    classes.write_text(f"name,id\nred apple,{'a' * CLASS_ID_MAX}\ngreen pear,pear\n")
    result = run_generate(cfg_of(classes), run, source_factory=lambda cfg, device: NoiseSource())
    keys = generated_keys(run)
    assert result.done and keys == planned_keys(run)
    assert sorted(keys) == sorted([f"{'a' * CLASS_ID_MAX}_{i:06d}" for i in range(3)] +
                                  [f"pear_{i:06d}" for i in range(3)])


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        # a slug made from a long name (no id given): the row and what the id was made from are named
        ("long-name.csv", f"name\n{'word ' * 60}\n",
         "row 1 (line 2): class id 'word-word-word-word-word...' (made from its name) is 299 characters long"),
        ("long-id.json", json.dumps([{"name": "fox"}, {"name": "owl", "id": LONG}]),
         "row 2: class id 'aaaaaaaaaaaaaaaaaaaaaaaa...' is 300 characters long"),
        ("long-id.yaml", f"classes:\n  - name: fox\n    id: {'b' * (CLASS_ID_MAX + 1)}\n",
         f"row 1: class id 'bbbbbbbbbbbbbbbbbbbbbbbb...' is {CLASS_ID_MAX + 1} characters long"),
        # an id that sanitises to a long slug ("My ID" → "my-id"): named as made from its id
        ("sanitised.csv", f"name,id\nfox,{'X ' * 150}\n", "class id 'x-x-x-x-x-x-x-x-x-x-x-x-...' (made from its id)"),
    ],
)
def test_every_custom_file_format_refuses_a_long_id_naming_the_row(tmp_path: Path, name: str, content: str,
                                                                    needle: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as err:
        resolve_classes(str(path))
    message = err.value.message
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message, message


def test_the_limit_itself_is_accepted_in_every_format(tmp_path: Path) -> None:
    ok = "c" * CLASS_ID_MAX
    for path, content in ((tmp_path / "a.csv", f"name,id\nfox,{ok}\n"),
                          (tmp_path / "a.json", json.dumps([{"name": "fox", "id": ok}])),
                          (tmp_path / "a.yaml", f"- {{name: fox, id: {ok}}}\n")):
        path.write_text(content)
        assert [c.id for c in resolve_classes(str(path))] == [ok]


def test_a_hand_edited_classes_json_with_a_long_id_is_named(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps([{"label": 0, "id": "b" * (CLASS_ID_MAX + 1), "name": "fox"}]))
    with pytest.raises(UserError, match=rf"^{path}: entry 1: class id 'b+\.\.\.' is {CLASS_ID_MAX + 1} characters"):
        read_classes_json(path)


def test_the_limit_is_the_longest_name_that_fits_in_the_file_system(tmp_path: Path) -> None:
    """The arithmetic of ``CLASS_ID_MAX`` against the file system: at the limit the longest name the project builds
    from an id (a diagnosis sheet while written) is exactly ``NAME_MAX`` long and can be created; one more
    character is refused by the OS with ENAMETOOLONG."""
    if os.pathconf(tmp_path, "PC_NAME_MAX") != NAME_MAX:
        pytest.skip(f"this file system's NAME_MAX is not {NAME_MAX}")
    longest = f"diagnosis-{'d' * CLASS_ID_MAX}.jpg{PARTIAL_SUFFIX}"
    assert len(longest) == NAME_MAX
    (tmp_path / longest).write_bytes(b"")
    with pytest.raises(OSError) as err:
        (tmp_path / f"diagnosis-{'d' * (CLASS_ID_MAX + 1)}.jpg{PARTIAL_SUFFIX}").write_bytes(b"")
    assert err.value.errno == errno.ENAMETOOLONG


@pytest.mark.slow
def test_an_id_of_exactly_the_limit_goes_through_every_stage_that_names_files_after_it(tmp_path: Path) -> None:
    """generate → (scores) → diagnose → select → release --imagefolder → report, with the id of the limit: the
    diagnosis sheet (the longest name) and the image-folder files are written under their full names."""
    from release_fixtures import write_fake_scores

    from imagenet_plus.contract import CLASS_TEXT_EMBEDDINGS
    from imagenet_plus.diagnose import run_diagnose
    from imagenet_plus.diagnose.config import DiagnoseConfig
    from imagenet_plus.release.stage import ReleaseConfig, run_release
    from imagenet_plus.report import ReportConfig, run_report
    from imagenet_plus.select import SelectConfig, run_select

    long_id = "x" * CLASS_ID_MAX
    classes = tmp_path / "classes.csv"
    classes.write_text(f"name,id\nlong thing,{long_id}\npear,\n")
    run = tmp_path / "run"
    run_generate(cfg_of(classes, images_per_class=6), run, source_factory=lambda cfg, device: NoiseSource())
    write_fake_scores(run)
    np.save(run / "scores" / CLASS_TEXT_EMBEDDINGS, np.random.default_rng(0).normal(size=(2, 16)).astype(np.float16))
    summary = run_diagnose(run, DiagnoseConfig(min_vendi=100.0))  # every class low-diversity: both get a sheet
    assert long_id in [c.class_id for c in summary.flagged_classes]
    run_select(run, SelectConfig(per_class=4))
    folder = tmp_path / "imagefolder"
    run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, shard_size=4, imagefolder=str(folder)))
    exported = sorted(p.name for p in (folder / "train" / long_id).iterdir())
    assert len(exported) == 3 and all(len(n) == CLASS_ID_MAX + 12 for n in exported)  # {id}_{index:06d}.JPEG
    index = run_report(run, ReportConfig(sample_classes=2, sheet_images=2))
    sheets = index.parent / "sheets"
    assert (sheets / f"diagnosis-{long_id}.jpg").is_file() and (sheets / f"{long_id}.jpg").is_file()
    assert len(f"diagnosis-{long_id}.jpg{PARTIAL_SUFFIX}") == NAME_MAX
    assert not list(tmp_path.rglob(f"*{PARTIAL_SUFFIX}"))
