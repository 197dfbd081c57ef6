"""Recipes: ready-made run configs that reproduce a published way of making synthetic ImageNet data.

A recipe is a run config (``configs/recipes/NAME.yaml``, used as ``imagenet-plus run --config FILE --out RUN``)
whose comment header cites where it comes from, one ``# key: value`` line per item of :data:`HEADER_KEYS`::

    # recipe: real-fake-no-lora
    # paper: Yuan, Zhang, Sun, Torr, Zhao, "Real-Fake: ...", ICLR 2024
    # reported CAS: 70.9 % top-1 (ResNet-50 on ImageNet-1K val, with its LoRA)
    # not reproduced: the LoRA fine-tuning of the generator, ...

The header ends at the first line that is not a comment. ``imagenet-plus recipes`` lists them (:func:`list_recipes`);
docs/recipes.md holds the same table with the reasoning. The header is read by hand (four ``key: value`` comment
lines) because YAML parsers drop comments, and a recipe key inside the YAML would be a setting ``run`` refuses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from imagenet_plus.errors import UserError

#: The header lines every recipe has, in order (``# key: value``).
HEADER_KEYS = ("recipe", "paper", "reported CAS", "not reproduced")
#: Where recipes live, relative to the project's root (and to the current folder).
RECIPES_DIR = Path("configs") / "recipes"


@dataclass(frozen=True)
class Recipe:
    """One recipe: its name, the paper, the accuracy it reports, what this tool does not reproduce, its file."""

    name: str
    paper: str
    cas: str
    not_reproduced: str
    file: str


def default_recipes_dir() -> Path:
    """``configs/recipes`` of the current folder when there is one, else of the project checkout this package is in.

    Raises:
        UserError: neither exists (an installed package without the project's ``configs/``: pass the folder).
    """
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / RECIPES_DIR).is_dir():
            return base / RECIPES_DIR
    raise UserError(f"no {RECIPES_DIR.as_posix()} folder here or in the project checkout: pass --dir FOLDER "
                    "(the recipes are in the project's repository)")


def read_recipe(path: str | Path) -> Recipe:
    """The header of a recipe file.

    Raises:
        UserError: the file is unreadable, or its header lacks a key of :data:`HEADER_KEYS` (naming it).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {getattr(exc, 'strerror', None) or exc}") from None
    found: dict[str, str] = {}
    for line in lines:
        if not line.startswith("#"):
            break
        key, sep, value = line.lstrip("#").strip().partition(":")
        if sep and key.strip() in HEADER_KEYS and key.strip() not in found:
            found[key.strip()] = value.strip()
    missing = [k for k in HEADER_KEYS if not found.get(k)]
    if missing:
        raise UserError(f"{path}: the recipe header lacks '# {missing[0]}: …' (a recipe's first comment lines name "
                        f"{', '.join(HEADER_KEYS)})")
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    return Recipe(found["recipe"], found["paper"], found["reported CAS"], found["not reproduced"], shown)


def list_recipes(folder: str | Path | None = None) -> list[Recipe]:
    """Every recipe (``*.yaml``) of ``folder`` (default :func:`default_recipes_dir`), sorted by file name.

    Raises:
        UserError: the folder is missing or holds no recipe; a file without its header.
    """
    root = Path(folder) if folder is not None else default_recipes_dir()
    if not root.is_dir():
        raise UserError(f"recipes folder not found: {root}")
    files = sorted(root.glob("*.yaml"))
    if not files:
        raise UserError(f"no recipe (*.yaml) in {root}")
    return [read_recipe(f) for f in files]


def print_recipes(recipes: list[Recipe], as_json: bool = False) -> None:
    """Print recipes on stdout: a table (name, paper, reported CAS, file), or JSON objects with every field."""
    import sys

    if as_json:
        sys.stdout.write(json.dumps([asdict(r) for r in recipes], indent=2, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(recipes)} recipes: imagenet-plus run --config FILE --out RUN", show_lines=True)
    for column in ("recipe", "paper", "reported CAS", "file"):
        table.add_column(column, overflow="fold")
    for r in recipes:
        table.add_row(r.name, r.paper, r.cas, r.file)
    Console(file=sys.stdout).print(table)
