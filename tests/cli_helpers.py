"""The console entry point run in this process, as a user types it: one helper for the test files that check
what ``imagenet-plus ARGS`` prints and exits with."""

from __future__ import annotations

import sys

import pytest


def cli_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``imagenet-plus ARGS`` through ``cli.main``: (exit status, stdout, stderr)."""
    from imagenet_plus.cli import main

    monkeypatch.setattr(sys, "argv", ["imagenet-plus", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def only_error_line(out: str, err: str) -> str:
    """The one line stderr holds, an ``error: …`` line, with no traceback anywhere."""
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
