"""Stage ``select``: ``RUN/scores/`` + thresholds → ``RUN/selection.parquet`` and ``RUN/selection.json``."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.select.config import SelectConfig, Thresholds
    from imagenet_plus.select.stage import run_select, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "SelectConfig": "config",
    "Thresholds": "config",
    "run_select": "stage",
    "stage_inputs": "stage",
})
__all__ = ["SelectConfig", "Thresholds", "run_select", "stage_inputs"]
