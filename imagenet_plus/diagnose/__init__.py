"""Stage ``diagnose``: ``RUN/scores/`` (+ real images) → ``RUN/diagnosis.{parquet,json}``,
``RUN/diagnosis_centroids.npz``."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.diagnose.stage import VERDICT_OK, DiagnoseConfig, read_remedy_strategies, run_diagnose

__getattr__, __dir__ = lazy_exports(__name__, {
    "DiagnoseConfig": "stage",
    "VERDICT_OK": "stage",
    "read_remedy_strategies": "stage",
    "run_diagnose": "stage",
})
__all__ = ["VERDICT_OK", "DiagnoseConfig", "read_remedy_strategies", "run_diagnose"]
