"""The installed libraries satisfy pyproject.toml's bounds, so a fresh install behaves like the tested one.

pyproject.toml's bounds admit only versions the suite was run with. This test reads the requirements from
pyproject.toml itself (not from the installed metadata, which may be stale) and the installed versions from
``importlib.metadata``, and fails naming every library outside its bounds.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Libraries that break their API between minor versions: their upper bound must stop at the next minor.
#: (typer is not here: every typer minor from 0.19.2 to 0.29 was checked with tests/test_cli.py, see pyproject.)
MINOR_CAPPED = ("torch", "torchvision", "diffusers", "transformers", "datasets", "huggingface-hub")


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project.get("optional-dependencies", {}).get("test", [])]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def _upper(req: Requirement) -> Version | None:
    uppers = [Version(s.version) for s in req.specifier if s.operator in ("<", "<=")]
    return min(uppers) if uppers else None


def violations(requirements: list[Requirement]) -> list[str]:
    """One line per requirement whose library is missing or installed outside its bounds."""
    bad = []
    for req in requirements:
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req.name}: not installed (pyproject.toml requires {req})")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            bad.append(f"{req.name} {installed} is outside pyproject.toml's bounds {req.specifier}")
    return bad


def test_installed_versions_satisfy_pyproject_bounds() -> None:
    bad = violations(_requirements())
    assert not bad, "installed versions the suite was not run with (run 'make setup'):\n" + "\n".join(bad)


def test_the_check_catches_a_violation() -> None:
    installed = metadata.version("torch")
    assert violations([Requirement("torch>=999")]) == [f"torch {installed} is outside pyproject.toml's bounds >=999"]
    assert violations([Requirement("no-such-package-xyz>=1")])[0].startswith("no-such-package-xyz: not installed")


def test_every_dependency_is_bounded_on_both_sides() -> None:
    unbounded = [str(r) for r in _requirements()
                 if _upper(r) is None or not any(s.operator in (">", ">=", "==", "~=") for s in r.specifier)]
    assert not unbounded, f"requirements without a lower and an upper bound: {unbounded}"


def test_fast_moving_libraries_are_capped_at_the_next_minor() -> None:
    reqs = {r.name.lower(): r for r in _requirements()}
    for name in MINOR_CAPPED:
        upper = _upper(reqs[name])
        assert upper is not None, name
        lowers = [Version(s.version) for s in reqs[name].specifier if s.operator in (">=", "==")]
        assert lowers and (upper.major, upper.minor) <= (lowers[0].major, lowers[0].minor + 1), (
            f"{name}: {reqs[name].specifier} admits minor versions the suite never ran with")


def test_installed_metadata_matches_pyproject() -> None:
    """The editable install is up to date with pyproject.toml (else 'make setup' was not re-run)."""
    installed = {str(Requirement(r)).replace(" ", "") for r in metadata.requires("imagenet-plus") or []
                 if "extra ==" not in r}
    declared = {str(Requirement(r)).replace(" ", "") for r in _pyproject()["project"]["dependencies"]}
    assert installed == declared, (
        f"pyproject.toml changed since the install: re-run 'make setup' (differs: {sorted(installed ^ declared)})")
