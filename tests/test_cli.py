"""The real ``imagenet-plus`` console script, run in subprocesses: usage mistakes are short, never a traceback.

Whatever typer/click is installed (typer >= 0.29 carries its own click as ``typer._click``, whose exceptions
are not ``click``'s), a usage mistake prints the usage line and one ``Error:`` line and exits with 2.
To check another typer, put it first on the path: ``PYTHONPATH=/tmp/oldtyper pytest tests/test_cli.py``
(the environment is passed on to the subprocesses).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("classes", "generate", "score", "select", "release", "publish", "report", "evaluate", "run")


def _script() -> str:
    """The installed console script next to the interpreter running the tests (the venv's ``bin``)."""
    script = Path(sys.executable).parent / "imagenet-plus"
    if not script.is_file():
        pytest.fail(f"console script {script} not installed: run 'pip install -e .' (make setup)")
    return str(script)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    return subprocess.run([_script(), *args], capture_output=True, text=True, env=env, timeout=120)


def _check_usage_error(proc: subprocess.CompletedProcess[str], command: str, needle: str) -> None:
    """Exit 2, nothing on stdout, stderr = usage line, 'Try ... --help', one 'Error:' line naming ``needle``."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 2, (proc.returncode, out)
    assert proc.stdout == "", proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith(f"Usage: imagenet-plus {command}".rstrip()), lines
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert len(lines) <= 4, lines  # usage, try --help, error (no panel, no stack)
    assert needle in errors[0], errors[0]


def test_no_arguments_prints_help() -> None:
    proc = _run()
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert proc.returncode in (0, 2), (proc.returncode, out)  # click >= 8.2 exits 2 after no-args help
    assert "Usage: imagenet-plus" in out
    for command in COMMANDS:
        assert f"  {command}" in out, command


def test_unknown_flag() -> None:
    _check_usage_error(_run("--bogus"), "", "--bogus")


def test_unknown_flag_of_a_command() -> None:
    _check_usage_error(_run("generate", "--out", "x", "--no-such-flag"), "generate", "--no-such-flag")


def test_missing_required_option(tmp_path: Path) -> None:
    proc = _run("generate", "--images-per-class", "3")
    _check_usage_error(proc, "generate", "--out")


def test_not_a_number(tmp_path: Path) -> None:
    proc = _run("generate", "--out", str(tmp_path / "run"), "--images-per-class", "notanumber")
    _check_usage_error(proc, "generate", "--images-per-class")
    assert not (tmp_path / "run").exists(), "nothing written"


def test_unknown_command() -> None:
    _check_usage_error(_run("nosuchcommand"), "", "nosuchcommand")


def test_user_error_is_one_line(tmp_path: Path) -> None:
    proc = _run("publish", str(tmp_path / "missing"), "--repo-id", "user/name", "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: release folder not found: {tmp_path / 'missing'}"]


def test_help_of_a_command() -> None:
    proc = _run("publish", "--help")
    assert proc.returncode == 0 and "--repo-id" in proc.stdout and "--dry-run" in proc.stdout


def test_generate_help_lists_each_setting_once() -> None:
    """Settings are declared once (GenerateConfig's fields): each is one option of --help, beside the command's own."""
    import re

    from imagenet_plus.generate.config import GenerateConfig
    from imagenet_plus.pipeline.config import flag_name, settings_of

    proc = _run("generate", "--help")
    assert proc.returncode == 0, proc.stderr
    settings = settings_of(GenerateConfig)
    assert len(settings) >= 20
    for name, spec in settings.items():
        found = re.findall(rf"(?<![\w-]){re.escape(flag_name(name))}(?![\w-])", proc.stdout)
        assert len(found) == (1 if spec.cli else 0), (name, len(found))
    for own in ("--out", "--config", "--top-up", "--remedy"):
        assert re.search(rf"^\s+{own}\b", proc.stdout, re.MULTILINE), own


def test_usage_names_positional_arguments_by_their_metavar() -> None:
    proc = _run("classes", "--help")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "Usage: imagenet-plus classes [OPTIONS] SPEC"
    _check_usage_error(_run("classes"), "classes", "Missing argument 'SPEC'")
