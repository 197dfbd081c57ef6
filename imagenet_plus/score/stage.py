"""The score stage: every generated image scored once, and the whole set measured against real images.

Input folder: ``RUN/generated/`` (the generated shards) and ``RUN/classes.json``; optionally a real
reference (``--reference``). Output folder: ``RUN/scores/`` (file names and records from ``imagenet_plus.contract``):

```
RUN/scores/00000.parquet            one row per sample key (columns: contract.SCORE_COLUMNS)
RUN/scores/00000.inception.npy      N×2048 float16 torch-fidelity pool3 features, rows in parquet order
RUN/scores/00000.clip.npy           N×D float16 L2-normalised CLIP image embeddings
RUN/scores/00000.logits.npy         N×1008 float32 torch-fidelity logits_unbiased (for the IS terms)
RUN/scores/00000.stats.json         count, seconds, rank and world size of the process that scored it (ScoredShard)
RUN/scores/class_text_embeddings.npy  C×D float16 CLIP embeddings of the zero-shot class texts (prompts.class_texts)
RUN/scores/models.json              the scorers the shards were computed with (ModelsRecord)
RUN/scores/summary.json             dataset metrics and what they were made from (ScoreSummary), written last
```

Pass 1 (:mod:`~imagenet_plus.score.shards`; every rank, shard ``s`` owned by rank ``s % world_size``,
resumable per shard; or the shards of a job share, or Ray workers: :mod:`~imagenet_plus.pipeline.engines`).
Ranks meet through marker files (``pipeline.ranks.rank_share``), never in a
collective: a rank that is done marks it and exits; the main rank waits for the markers, and a failed rank
stops every other one. The dataset pass (:mod:`~imagenet_plus.score.dataset_pass`, main rank) then measures
the set and writes ``summary.json``; the stage records itself current (``RUN/state/score.json``) last.

The stage is a no-op when it is current (:func:`stage_inputs`, ``pipeline.freshness.is_current``): the
same generated shards and class set, the same models (the Inception weights by content), the same reference
and extraction protocol, and the same ``metric_samples``, with every output present and every shard's scores
done by :func:`~imagenet_plus.score.files.scores_problem` (a cut or unreadable score file, or scores of a
generated shard made again, make it not current: that shard is scored again). Scores made with other models
are refused before anything in ``RUN/scores`` changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.contract import (
    SCORE_COLUMNS,
    RunPaths,
    done_shards,
    generated_done,
    library_versions,
    read_class_records,
    run_paths,
    stats_path,
)
from imagenet_plus.contract.ownership import locked_run
from imagenet_plus.contract.scores import BadShard, ModelsRecord, ScoreSummary
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import is_url, local_input, location
from imagenet_plus.pipeline import freshness
from imagenet_plus.pipeline.config import config_to_dict
from imagenet_plus.pipeline.engines import ExecutionConfig, Resources, connect_ray, import_ray, job_share, run_on_ray
from imagenet_plus.pipeline.freshness import StageInputs
from imagenet_plus.pipeline.ranks import Dist, FileRendezvous, init_dist, rank_share
from imagenet_plus.score.config import METRIC_SAMPLES, ScoreConfig, load_score_config
from imagenet_plus.score.dataset_pass import GENERATED_SAMPLE_SEED, REFERENCE_SAMPLE_SEED, measure, run_dataset_pass
from imagenet_plus.score.files import read_scores, save_npy_atomic, scores_problem
from imagenet_plus.score.networks import Scorers, check_inputs, models_record, summary_models
from imagenet_plus.score.reference import PROTOCOL, ReferenceParts, load_reference, load_reference_part
from imagenet_plus.score.shards import ShardScorer, score_own_shards, score_shard, shard_count

__all__ = ["GENERATED_SAMPLE_SEED", "METRIC_SAMPLES", "REFERENCE_SAMPLE_SEED", "SCORE_COLUMNS", "STAGE", "ScoreConfig",
           "Scorers", "is_finished", "load_score_config", "read_scores", "run_dataset_pass", "run_score",
           "score_shard", "stage_inputs"]

log = logging.getLogger(__name__)

#: The stage's name: its record is ``RUN/state/score.json``, its markers ``RUN/markers/score/``.
STAGE = "score"


def _done_stems(paths: RunPaths) -> list[str]:
    """Stems of the finished generated shards, sorted."""
    return [t.name[: -len(".tar")] for t in done_shards(paths.generated)]


def _generated_stems(paths: RunPaths) -> list[str]:
    """Stems of the finished generated shards; a tar without stats (not finished) is named in a warning."""
    stems = _done_stems(paths)
    if not stems:
        raise UserError(f"no generated shards in {paths.generated}: run 'imagenet-plus generate' first")
    for tar in sorted(paths.generated.glob("*.tar")):
        if not generated_done(tar):
            log.warning("warning: %s is not finished (no stats file %s): left out; run 'imagenet-plus generate "
                        "--out %s' to make it", tar, stats_path(tar).name, paths.root)
    return stems


def _reference_id(cfg: ScoreConfig) -> str | None:
    if cfg.reference is None:
        return None
    return cfg.reference if is_url(cfg.reference) else str(Path(cfg.reference).resolve())


def _reference_protocol(cfg: ScoreConfig) -> str | None:
    """The extraction protocol of the reference's features (a statistics file's are its author's: None)."""
    if cfg.reference is None or Path(cfg.reference).suffix == ".npz":
        return None
    return PROTOCOL


def stage_inputs(run: str | Path, cfg: ScoreConfig) -> StageInputs:
    """What the score stage's outputs are made from (``pipeline.freshness``).

    Settings: the models (with the Inception weights' content identity), the resolved reference path and its
    extraction protocol, ``metric_samples`` (batch size, workers and ``skip_bad_shards`` change no output).
    Upstream: ``generate``. Files: the class set and the stats JSON of every finished generated shard, so a
    top-up that adds shards makes the stage stale even where ``generate`` kept no record; a deleted stats file
    drops its shard from the list, so the stage is stale too. Outputs: ``summary.json`` and every shard's
    parquet (a shard skipped as bad keeps the stage stale: a later run tries it again), each shard's scores done
    by ``files.scores_problem`` (checked last, ~0.5 ms a shard).

    Raises:
        UserError: the Inception weights file does not exist.
    """
    paths = RunPaths(location(run))
    stems = _done_stems(paths)
    settings = {"scorers": summary_models(cfg).to_dict(), "reference_path": _reference_id(cfg),
                "reference_protocol": _reference_protocol(cfg), "metric_samples": cfg.metric_samples}
    return StageInputs(
        stage=STAGE, settings=settings, upstream=("generate",),
        files=(paths.classes_json, *(paths.generated / f"{s}.json" for s in stems)),
        outputs=(paths.summary_json, *(paths.score_files(s).parquet for s in stems)),
        intact=lambda: all(scores_problem(paths, s) is None for s in stems),
    )


def is_finished(run: str | Path, cfg: ScoreConfig) -> bool:
    """Whether ``run_score(run, cfg)`` would be a no-op: :func:`stage_inputs` is current (false before any
    shard is generated, and after a top-up added shards)."""
    paths = RunPaths(location(run))
    return bool(_done_stems(paths)) and freshness.is_current(paths, stage_inputs(run, cfg))


def _check_scores_folder(paths: RunPaths, cfg: ScoreConfig) -> None:
    """Refuse scores made with other models (reads only: nothing is changed before a refusal).

    Raises:
        UserError: ``RUN/scores`` holds scores and ``models.json`` names other models or does not read back.
    """
    has_outputs = paths.scores.is_dir() and (any(paths.scores.glob("*.npy")) or any(paths.scores.glob("*.parquet")))
    if not has_outputs or not paths.models_json.is_file():
        return
    models = models_record(cfg)
    try:
        recorded = ModelsRecord.read(paths.models_json)
    except UserError as exc:
        raise UserError(f"{paths.scores} holds scores whose models cannot be told ({exc.message}): "
                        "delete that folder to rescore") from None
    if recorded != models:
        was, now = recorded.to_dict(), models.to_dict()
        changed = ", ".join(f"{k} {was[k]!r} → {v!r}" for k, v in now.items() if was[k] != v)
        raise UserError(f"{paths.scores} was scored with other models ({changed}): delete that folder to rescore")


def _prepare_scores_folder(paths: RunPaths, cfg: ScoreConfig) -> None:
    """Refuse scores made with other models (:func:`_check_scores_folder`), then create ``RUN/scores`` and drop
    the summary and the stage's record (the stage is not done until it writes them again)."""
    _check_scores_folder(paths, cfg)
    paths.scores.mkdir(parents=True, exist_ok=True)
    paths.summary_json.unlink(missing_ok=True)  # not done: a stale summary must not mark it done after a crash
    freshness.forget(paths, [STAGE])


def _load_reference(cfg: ScoreConfig, models: Scorers, dist: Dist, rdv: FileRendezvous) -> Any:
    """The real reference, loaded before scoring so that a bad reference stops the stage early.

    One process: ``reference.load_reference``. Several: every rank extracts the features of its block of
    the reference into the rendezvous folder (``reference.load_reference_part``; nothing when they are
    cached) and goes on scoring; a bad image stops every rank. Returns the ``Reference`` or, when the parts
    must still be merged (once every rank is done), the main rank's ``ReferenceParts``; ``None`` on the
    other ranks and without a reference.
    """
    if cfg.reference is None:
        return None
    inception = models.inception if not str(cfg.reference).endswith(".npz") else None
    reference = local_input(cfg.reference)  # a URL is read from a local copy (io.storage)
    if dist.world_size == 1:
        return load_reference(reference, inception, cfg.batch_size, show_progress=True)
    return load_reference_part(reference, inception, rdv.folder, dist.rank, dist.world_size, cfg.batch_size,
                               show_progress=dist.is_main, check=lambda: rdv.check(every=1.0))


def _scored_shards(paths: RunPaths, stems: list[str]) -> tuple[list[str], list[BadShard]]:
    """(good stems, bad shards) once every rank is done; a shard neither scored nor bad is an error."""
    bad = [BadShard.read(paths.score_files(s).bad) for s in stems if paths.score_files(s).bad.is_file()]
    bad_stems = {b.shard for b in bad}
    missing = [s for s in stems if s not in bad_stems and scores_problem(paths, s) is not None]
    if missing:
        raise UserError(f"scores missing for shards {', '.join(missing)} in {paths.scores}: run score again")
    for b in bad:
        log.warning("warning: bad shard %s left out of the scores: %s", b.shard, b.error)
    return [s for s in stems if s not in bad_stems], bad


def _write_summary(paths: RunPaths, cfg: ScoreConfig, stems: list[str], classes: list[dict[str, Any]],
                   reference: Any, device: Any) -> ScoreSummary:
    """The dataset pass over the good shards, then ``summary.json`` with the run's fields (written last).

    ``reference`` may be the parts every rank extracted (``reference.ReferenceParts``): they are merged here
    (and cached), once every rank is done.
    """
    good, bad = _scored_shards(paths, stems)
    if isinstance(reference, ReferenceParts):
        reference = reference.merge(show_progress=True)
    models_record(cfg).write(paths.models_json)
    summary = ScoreSummary.of(
        measure(paths, good, classes, reference, device, cfg.metric_samples),
        shards=stems,
        bad_shards=bad,
        models=summary_models(cfg),
        reference=None if reference is None else reference.describe(),
        reference_arg=_reference_id(cfg),
        config=config_to_dict(cfg),
        versions=library_versions(),
    )
    summary.write(paths.summary_json)
    return summary


def _score_on_ray(paths: RunPaths, cfg: ScoreConfig, stems: list[str], classes: list[dict[str, Any]],
                  inputs: StageInputs, scorers: Scorers | None, execution: ExecutionConfig) -> ScoreSummary:
    """:func:`run_score` with ``--engine ray``: pass 1 on the Ray cluster (a :class:`~imagenet_plus.score.shards.
    ShardScorer` per worker), then the reference and the dataset pass in this process (the driver)."""
    import functools

    todo = [i for i, s in enumerate(stems) if scores_problem(paths, s) is not None]
    gpus = 1.0 if connect_ray(execution.ray_address).cluster_resources().get("GPU", 0) > 0 else 0.0
    run_on_ray(functools.partial(ShardScorer, str(paths.root), cfg, stems, classes), todo,
               {i: shard_count(paths, stems[i]) for i in todo}, Resources(num_cpus=1, num_gpus=gpus),
               execution.ray_address, "score (ray)")
    dist = init_dist()
    models = scorers or Scorers(cfg, dist.device, [ClassInfo.from_dict(c) for c in classes])
    reference = None if cfg.reference is None else _load_reference(cfg, models, dist, None)  # type: ignore[arg-type]
    if not paths.class_text_embeddings.is_file():
        save_npy_atomic(paths.class_text_embeddings, models.class_embeddings.astype(np.float16))
    summary = _write_summary(paths, cfg, stems, classes, reference, dist.device)
    freshness.mark_current(paths, inputs, {"images_scored": summary.num_images,
                                           "shards_skipped": len(summary.bad_shards)})
    return summary


def run_score(run: str | Path, cfg: ScoreConfig, scorers: Scorers | None = None,
              execution: ExecutionConfig | None = None) -> ScoreSummary | None:
    """Score every generated image of ``run`` and write ``RUN/scores`` (resumable; no-op when current).

    Under ``torchrun``/``accelerate launch`` each rank scores its own shards, marks itself done and returns
    ``None``; the main rank waits for the markers (no collective: no process-group timeout can fire), runs the
    dataset pass and returns the summary. A rank that fails marks it and every other rank stops within
    seconds with an error naming it. A reference folder or shards not yet cached is extracted by every rank
    before it scores, one contiguous block each, into the rendezvous folder; the main rank merges the blocks
    in order after the wait (the same features as one process), caches them and runs the dataset pass.

    Args:
        run: the run directory.
        cfg: the stage settings.
        scorers: already loaded networks (built from ``cfg`` when ``None``); they must match ``cfg``.
        execution: the engine and the job share (:mod:`~imagenet_plus.pipeline.engines`). With ``--engine ray``
            pass 1 runs on the Ray cluster and the rest here; a job of a share scores its shards and returns
            ``None`` (the dataset pass is a later plain ``score``'s).

    Returns:
        ``RUN/scores/summary.json`` (``None`` on ranks other than the main one, unless the stage was current).

    Raises:
        UserError: no shards, a missing model or weights file, an unknown classifier, an empty or unreadable
            reference, or scores made with other models.
        CorruptShard: a shard does not read back (unless ``skip_bad_shards``).
        PeerRankFailed: another rank failed.
    """
    execution = execution or ExecutionConfig()
    if execution.engine == "ray":
        import_ray()  # "pip install 'imagenet-plus[ray]'" before anything is written
    if job_share(execution) is not None:  # separate jobs score at once, each its own shards: no RUN/.lock
        return _run_score(run, cfg, scorers, execution)
    return _run_score_locked(run, cfg, scorers, execution)


@locked_run
def _run_score_locked(run: str | Path, cfg: ScoreConfig, scorers: Scorers | None,
                      execution: ExecutionConfig) -> ScoreSummary | None:
    """:func:`run_score` holding ``RUN/.lock``."""
    return _run_score(run, cfg, scorers, execution)


def _run_score(run: str | Path, cfg: ScoreConfig, scorers: Scorers | None,
               execution: ExecutionConfig) -> ScoreSummary | None:
    paths = run_paths(run)
    stems = _generated_stems(paths)
    classes = read_class_records(paths)
    inputs = stage_inputs(paths.root, cfg)
    if freshness.is_current(paths, inputs):
        return ScoreSummary.read(paths.summary_json)
    check_inputs(cfg)
    share = job_share(execution)
    _prepare_scores_folder(paths, cfg)
    if execution.engine == "ray":
        return _score_on_ray(paths, cfg, stems, classes, inputs, scorers, execution)
    dist = init_dist()
    markers = paths.markers / STAGE if share is None else paths.markers / STAGE / f"job-{share[0]:05d}"
    with rank_share(markers, dist) as rdv:
        models = scorers or Scorers(cfg, dist.device, [ClassInfo.from_dict(c) for c in classes])
        reference = _load_reference(cfg, models, dist, rdv) if share is None else None
        score_own_shards(paths, stems, models, cfg, len(classes), dist, rdv, share)
        if dist.is_main and share is None and not paths.class_text_embeddings.is_file():
            save_npy_atomic(paths.class_text_embeddings, models.class_embeddings.astype(np.float16))
    if share is not None:  # a job's shards are scored; a plain 'score' runs the dataset pass once every job ended
        rdv.wait_for_all()
        if dist.is_main:
            rdv.close()
            log.info(f"score: job {share[0]} of {share[1]} scored its shards of {paths.root}; run 'imagenet-plus "
                     "score' once every job ended for the dataset metrics")
        return None
    if not dist.is_main:
        return None
    try:
        rdv.wait_for_all()
        summary = _write_summary(paths, cfg, stems, classes, reference, dist.device)
    finally:
        rdv.close()
    freshness.mark_current(paths, inputs, {"images_scored": summary.num_images,
                                           "shards_skipped": len(summary.bad_shards)})
    return summary
