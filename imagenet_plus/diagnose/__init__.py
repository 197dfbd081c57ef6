"""Stage ``diagnose``: ``RUN/scores/`` (+ real images) → ``RUN/diagnosis.{parquet,json}``,
``RUN/diagnosis_centroids.npz``.

``config`` holds the settings, ``evidence`` the pure math on CLIP embeddings, ``verdicts`` the rules,
``inputs`` what is read (the scores as per-class sums, a real reference), ``stage`` the stage itself.
"""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.diagnose.config import DiagnoseConfig
    from imagenet_plus.diagnose.stage import VERDICT_OK, read_remedy_strategies, run_diagnose, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "DiagnoseConfig": "config",
    "VERDICT_OK": "stage",
    "read_remedy_strategies": "stage",
    "run_diagnose": "stage",
    "stage_inputs": "stage",
})
__all__ = ["VERDICT_OK", "DiagnoseConfig", "read_remedy_strategies", "run_diagnose", "stage_inputs"]
