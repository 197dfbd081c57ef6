"""Stage ``diagnose``: ``RUN/scores/`` (+ real images) → ``RUN/diagnosis.{parquet,json}``,
``RUN/diagnosis_centroids.npz``."""

from imagenet_plus.diagnose.stage import DiagnoseConfig, read_remedy_strategies, run_diagnose

__all__ = ["DiagnoseConfig", "read_remedy_strategies", "run_diagnose"]
