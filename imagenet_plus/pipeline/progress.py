"""Progress bars for long stages: tqdm with rate and ETA, shown on the main process only."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar (rate and ETA) on stderr; a silent one when ``enabled`` is False (non-main ranks)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
