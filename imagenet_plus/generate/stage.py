"""Generate stage: class set + config → ``RUN/generated/NNNNN.tar`` (+ ``NNNNN.json`` stats).

Input: a :class:`~imagenet_plus.generate.config.GenerateConfig`. Output folder: ``RUN/`` (``run.yaml``,
``classes.json``, ``generated/``). Works as one process, or one process per GPU under
``accelerate launch -m imagenet_plus generate …`` / ``torchrun`` (CPU too): shard ``s`` is made by
rank ``s % world_size``. Without a process group (:mod:`~imagenet_plus.pipeline.engines`, docs/cluster.md): a job of
a share (``--job-index/--num-jobs``, Slurm arrays) makes its shards ``s % N == I``, and ``--engine ray`` hands every
shard to Ray workers; both call :class:`ShardMaker` (the run folder and its plan → a shard, idempotent).

Crash safety: ``run.yaml`` (config, hash, plan segments) is written before any image but after the model loaded
(with several processes: after every rank found it), so a model that cannot load leaves no run.yaml tying the
folder to it; each shard is written as ``.partial`` and renamed when complete, then its stats JSON is written; a
shard is done when both exist and the samples counted from its tar headers equal its stats' count
(``contract.generated.shard_problem``: a shard zero-filled or cut since is made again; ~2.3 ms a shard of
256 samples, ~11 s for ImageNet's 5,000 shards, each rank checking its own). A re-run deletes leftovers,
skips done shards and ends with exactly the planned keys.
A re-run with another config is refused; raising ``images_per_class`` or ``--top-up`` only adds new
indices (new shards). ``--top-up --remedy`` also gives the new indices of each class that ``diagnose`` flagged
the prompt strategy it names (``RUN/diagnosis.json`` ``strategies``), recorded in the top-up segment of
``run.yaml`` and in each sample's ``json.strategy``; seeds stay what they would have been.

Throughput: the model runs on the main thread; JPEG encoding and tar writing run on a writer thread
(:mod:`~imagenet_plus.generate.writer`), so they overlap with the next batch. The plan and the run folder's
records are :mod:`~imagenet_plus.generate.state`'s.

Recipes (docs/recipes.md): what each image is made from (seed, strategy, guidance drawn from a range, paired real
image, prompt) and the order of its batches are :mod:`~imagenet_plus.generate.images`'; before the first shard
each process makes the captions and class descriptions its prompts need (:func:`~imagenet_plus.generate.inputs.
prepare_texts`); img2img batches go to the model's image-to-image twin with the paired real images.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagenet_plus.classes.prompts import build_negative_prompt
from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.contract import (
    RunPaths,
    ShardStats,
    clean_partials,
    generated_done,
    make_key,
    shard_problem,
    stats_path,
)
from imagenet_plus.contract.ownership import check_run_folder
from imagenet_plus.errors import RunInUse, UserError
from imagenet_plus.generate.config import GenerateConfig
from imagenet_plus.generate.images import (
    ImagePlan,
    batch_order,
    image_prompt,
    init_image,
    next_batch,
    plan_images,
    real_meta,
)
from imagenet_plus.generate.inputs import prepare_texts
from imagenet_plus.generate.plan import PlanItem, attempt_seed
from imagenet_plus.generate.real import RealIndex
from imagenet_plus.generate.state import STAGE, RunState, inputs_of, plan_run_state, write_run_state
from imagenet_plus.generate.writer import ShardWriterThread
from imagenet_plus.io.lock import folder_lock, is_main_process
from imagenet_plus.io.storage import location, storage_errors
from imagenet_plus.models.diffusion import DiffusersSource, check_offload, load_pipeline, model_location
from imagenet_plus.pipeline.engines import (
    ExecutionConfig,
    Resources,
    connect_ray,
    import_ray,
    job_share,
    owned_by_job,
    run_on_ray,
)
from imagenet_plus.pipeline.freshness import file_identity, is_current, mark_current
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.pipeline.ranks import init_dist, rank_share

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateResult:
    """What a ``generate`` call did (on this rank) and where the run stands."""

    run: Path
    num_shards: int
    shards_made: int
    images_made: int
    seconds: float
    done: bool


# --------------------------------------------------------------------------------------------------
# Pure helpers


def is_black(image: Any, threshold: float) -> bool:
    """True for a (nearly) all-black image: mean pixel value below ``threshold`` (0–255 scale).

    Safety checkers replace flagged images with black ones, and fp16 VAEs that overflow give black.
    """
    import numpy as np

    return float(np.asarray(image, dtype=np.uint8).mean()) < threshold


# --------------------------------------------------------------------------------------------------
# The stage


def _sample_meta(cfg: GenerateConfig, im: ImagePlan, prompt: str, negative: str, seed: int, attempt: int, nsfw: bool,
                 scheduler: str, caption: str | None) -> dict[str, Any]:
    return {
        "class_id": im.cls.id,
        "class_name": im.cls.name,
        "label": im.cls.label,
        "index": im.item.index,
        "prompt": prompt,
        "negative_prompt": negative,
        "strategy": im.strategy,
        "seed": seed,
        "model": cfg.model,
        "scheduler": scheduler,
        "steps": cfg.steps,
        "guidance": im.guidance,
        "width": cfg.resolution,
        "height": cfg.resolution,
        "attempt": attempt,
        "nsfw": nsfw,
        **real_meta(cfg, im, caption),
    }


def _call_source(source: Any, cfg: GenerateConfig, batch: Sequence[ImagePlan], prompts: list[str], negative: str,
                 seeds: list[int]) -> tuple[list[Any], list[bool]]:
    """One model call for a batch that shares a guidance value (passed for a guidance range) and, for img2img, a
    strength (the paired real images are decoded here, a batch at a time)."""
    extra: dict[str, Any] = {}
    if cfg.guidance_is_range:
        extra["guidance"] = batch[0].guidance
    if batch[0].ref is not None and cfg.init_strength is not None:
        extra["init_images"] = [init_image(im.ref, cfg.resolution) for im in batch]  # type: ignore[arg-type]
        extra["strength"] = cfg.init_strength
    return source(prompts, [negative] * len(batch), seeds, **extra)


def generate_shard(
    items: Sequence[PlanItem],
    path: Path,
    cfg: GenerateConfig,
    classes: Sequence[ClassInfo],
    source: Any,
    writer: ShardWriterThread,
    on_images: Callable[[int], None] = lambda n: None,
    rank: int = 0,
    real: RealIndex | None = None,
    captions: Mapping[str, str] | None = None,
    descriptions: Mapping[str, Sequence[str]] | None = None,
) -> ShardStats:
    """Generate one shard's images in batches, regenerating NSFW-flagged or black ones.

    Each batch shares one guidance value and is either all text-to-image or all img2img
    (:mod:`~imagenet_plus.generate.images`); a regenerated image keeps its guidance, real image and prompt.

    Args:
        items: the shard's plan items.
        path: the shard's tar.
        cfg: the resolved config.
        classes: the class set.
        source: the model (:class:`~imagenet_plus.models.diffusion.ImageSource`).
        writer: the writer thread.
        on_images: called with the number of images finished after each batch.
        rank: the process (recorded in the stats).
        real: the run's real images (captions, img2img).
        captions: the shard's captions by sample key (``caption`` strategy).
        descriptions: class descriptions by class id (``llm`` strategy).

    Returns the stats written beside the shard.
    """
    start = time.perf_counter()
    negative = build_negative_prompt(cfg.negative_prompt)
    writer.begin(path)
    captions = captions or {}
    images = plan_images(items, cfg, classes, real)
    prompts = [image_prompt(im, captions, descriptions or {}) for im in images]
    pending = deque((pos, 0) for pos in batch_order(images, cfg.batch_size))
    regenerated = {"nsfw": 0, "black": 0}
    failed: list[str] = []
    while pending:
        batch = next_batch(pending, lambda pos: images[pos].batch_key, cfg.batch_size)
        seeds = [attempt_seed(images[pos].seed, attempt) for pos, attempt in batch]
        out, nsfw = _call_source(source, cfg, [images[pos] for pos, _ in batch], [prompts[pos] for pos, _ in batch],
                                 negative, seeds)
        finished = 0
        for (pos, attempt), image, flagged, seed in zip(batch, out, nsfw, seeds):
            im = images[pos]
            black = is_black(image, cfg.black_threshold)
            if (flagged or black) and attempt + 1 < cfg.max_attempts:
                regenerated["nsfw" if flagged else "black"] += 1
                pending.append((pos, attempt + 1))
                continue
            if flagged or black:
                failed.append(im.key)
            meta = _sample_meta(cfg, im, prompts[pos], negative, seed, attempt, bool(flagged), source.scheduler_name,
                                captions.get(im.key))
            writer.put(pos, im.key, image, meta)
            finished += 1
        on_images(finished)
    seconds = time.perf_counter() - start
    stats = ShardStats(
        shard=path.stem,
        count=len(items),
        first_key=make_key(items[0].class_id, items[0].index),
        last_key=make_key(items[-1].class_id, items[-1].index),
        failures=len(failed),
        failed_keys=failed,
        regenerated=regenerated,
        seconds=round(seconds, 3),
        images_per_second=round(len(items) / seconds, 3) if seconds > 0 else None,
        rank=rank,
        model=cfg.model,
    )
    writer.end(stats)
    return stats


def make_source(cfg: GenerateConfig, device: Any) -> Any:
    """The diffusers pipeline of ``cfg.model`` wrapped as an image source (arguments mapped for its family)."""
    pipe = load_pipeline(cfg.model, device, cfg.dtype, offload=cfg.offload, compile=cfg.compile)
    source = DiffusersSource(pipe, steps=cfg.steps, guidance=cfg.guidance, width=cfg.resolution, height=cfg.resolution,
                             family=cfg.family, max_sequence_length=cfg.max_sequence_length)
    source.check_arguments(cfg.model, cfg.negative_prompt)
    if cfg.init_strength is not None:
        source.image_to_image()  # made now, so a pipeline without one fails before the first shard
    return source


def _local_device() -> Any:
    """The device of a process that is not a rank of a launch (a Ray worker): its GPU when it has one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ShardMaker:
    """The per-shard work of ``generate`` as an engine calls it: built from (run location, the run's checked plan),
    called with a shard id; returns the images it made (0 for a shard already done). Idempotent: a shard done is
    left alone, one not done (a leftover, a damaged one: :func:`_to_make`) is made whole again with the same bytes.

    The model is loaded on the first shard that needs it and kept for the next ones (a Ray worker makes many).
    The captions of a shard's real images are made (or read from ``RUN/captions/``) by the process making it; the
    class descriptions of the ``llm`` strategy are written by the driver before any shard (read here).

    Args:
        run: the run folder.
        state: the run's plan as :func:`~imagenet_plus.generate.state.plan_run_state` checked it (run.yaml written).
        source_factory: builds the image source from (resolved config, device).
    """

    def __init__(self, run: str | Path, state: RunState,
                 source_factory: Callable[[GenerateConfig, Any], Any] = make_source) -> None:
        self.paths = RunPaths(location(run))
        self.state = state
        self.source_factory = source_factory
        self._source: Any = None
        self._device: Any = None

    def __call__(self, shard: int) -> int:
        state, cfg = self.state, self.state.config
        tar = self.paths.generated_tar(shard)
        if not _to_make(tar):
            return 0
        items = state.shards()[shard]
        if self._source is None:
            self._device = _local_device()
            self._source = self.source_factory(cfg, self._device)
        texts = prepare_texts(self.paths.root, cfg, state.classes, state.inputs.real, {shard: items}, self._device,
                              False, lambda: None)
        writer = ShardWriterThread(cfg.image_format, cfg.quality, max_queue=max(8, 2 * cfg.batch_size))
        try:
            generate_shard(items, tar, cfg, state.classes, self._source, writer, real=state.inputs.real,
                           captions=texts.shard_captions(shard), descriptions=texts.descriptions)
        finally:
            writer.close()  # the tar and its stats are on disk before the shard is reported made
        return len(items)


#: Seconds between two looks for another rank's failure while generating.
FAILURE_CHECK_SECONDS = 2.0


def run_generate(
    cfg: GenerateConfig,
    out: str | Path,
    top_up: bool = False,
    source_factory: Callable[[GenerateConfig, Any], Any] = make_source,
    remedy: bool = False,
    execution: ExecutionConfig | None = None,
) -> GenerateResult:
    """Generate every planned image of ``cfg`` into the run folder ``out`` (resumable).

    Under several processes the ranks meet in a collective only after short work (checking the plan, writing
    run.yaml, agreeing on the job's marker token); around its share each rank follows
    :func:`~imagenet_plus.pipeline.ranks.rank_share` (its part marked done or failed in ``RUN/markers/generate/``)
    and then waits on the other ranks' marker files, so a rank with hours of shards never holds another in a
    collective past the process-group timeout. A rank that fails marks it; the others notice between batches
    and stop with a one-line error. Every rank waits for all (not only the main one), so each returns ``done``
    for the whole run; the markers stay until the next launch's start clears them (a rank still polling must
    never see them deleted). When every shard is done, the main rank records the stage as current
    (``RUN/state/generate.json``, :func:`~imagenet_plus.generate.state.stage_inputs`).

    Args:
        cfg: generation settings.
        out: the run folder (created if missing).
        top_up: add new indices for the classes ``select`` found short (reads ``RUN/selection.json``).
        source_factory: builds the image source from (resolved config, device); tests inject fakes.
        remedy: with ``top_up``, generate the new indices of each class ``diagnose`` flagged with the prompt
            strategy it names (reads ``RUN/diagnosis.json``), instead of the configured strategies.
        execution: the engine and the job share (:mod:`~imagenet_plus.pipeline.engines`; default: accelerate,
            every shard). A job of a share holds ``RUN/.lock`` only while it checks and writes the plan (it waits
            for the other jobs' turn), then makes its own shards unlocked: each shard has one job.

    Returns:
        What this rank did, and whether every shard of the run is now done.

    Raises:
        UserError: bad settings (nothing is written), or an error on any rank.
    """
    paths = RunPaths(location(out))
    execution = execution or ExecutionConfig()
    share = job_share(execution)
    if execution.engine == "ray":
        import_ray()  # "pip install 'imagenet-plus[ray]'" before anything is written
    if share is not None and top_up:  # each job would append its own top-up segment
        raise UserError(f"--top-up plans new indices once: run 'imagenet-plus generate --top-up' in one process, then "
                        f"the jobs of the share (job {share[0]} of {share[1]}) without --top-up")
    if cfg.offload != "none":  # refused before the process group and the class set are set up
        import torch

        check_offload(cfg.offload, "cuda" if torch.cuda.is_available() else "cpu")
    if is_main_process():  # a folder that is not a run is never written nor cleaned (rank 0 decides)
        check_run_folder(paths.root)
    planned_from = file_identity(paths.run_yaml)
    state = plan_run_state(cfg, paths, top_up, remedy)  # every rank checks before anyone writes
    with storage_errors(paths.root):
        paths.root.mkdir(parents=True, exist_ok=True)
    if share is not None:
        with _plan_lock(paths.root):  # jobs take turns to check and write the plan and the class descriptions
            if file_identity(paths.run_yaml) != planned_from:
                state = plan_run_state(cfg, paths, top_up, remedy)
            if is_main_process():
                if source_factory is make_source:
                    model_location(cfg.model, find=True)
                write_run_state(state, paths)
                prepare_texts(paths.root, cfg, state.classes, state.inputs.real, {}, _local_device(), True,
                              lambda: None)
        return _generate(replace(state, new_run=False, changed=False), paths, source_factory, share)
    with folder_lock(paths.root):  # rank 0; "RUN is in use by pid N on HOST" for a second launch
        if file_identity(paths.run_yaml) != planned_from:  # another process changed the plan meanwhile
            state = plan_run_state(cfg, paths, top_up, remedy)
        if execution.engine == "ray":
            return _generate_on_ray(state, paths, source_factory, execution)
        return _generate(state, paths, source_factory)


def _generate_on_ray(state: RunState, paths: RunPaths, source_factory: Callable[[GenerateConfig, Any], Any],
                     execution: ExecutionConfig) -> GenerateResult:
    """:func:`run_generate` with ``--engine ray``: this process (the driver) writes the plan and the class
    descriptions, cleans leftovers, and hands every shard not done to the Ray cluster (:class:`ShardMaker` on
    each worker); it records the stage as current when every shard is done."""
    cfg = state.config
    if source_factory is make_source:  # run.yaml ties the folder to the model: it must be found first
        model_location(cfg.model, find=True)
    gpus = 1.0 if _cluster_has_gpus(execution) else 0.0  # joins the cluster before anything is written
    write_run_state(state, paths)
    clean_partials(paths.generated)
    shards = state.shards()
    todo = [s for s in range(len(shards)) if _to_make(paths.generated_tar(s))]
    start = time.perf_counter()
    if todo:
        prepare_texts(paths.root, cfg, state.classes, state.inputs.real, {}, _local_device(), True, lambda: None)
        run_on_ray(functools.partial(ShardMaker, str(paths.root), state, source_factory), todo,
                   {s: len(shards[s]) for s in todo}, Resources(num_cpus=1, num_gpus=gpus), execution.ray_address,
                   "generate (ray)")
    return _finish(state, paths, shards, todo, sum(len(shards[s]) for s in todo), time.perf_counter() - start)


def _cluster_has_gpus(execution: ExecutionConfig) -> bool:
    """Whether the Ray cluster has GPUs (then each shard worker takes one)."""
    return connect_ray(execution.ray_address).cluster_resources().get("GPU", 0) > 0


def _finish(state: RunState, paths: RunPaths, shards: list[list[PlanItem]], todo: list[int], made: int,
            seconds: float) -> GenerateResult:
    """Record the stage as current when every shard is done (the driver of a Ray run, a job of a share)."""
    missing = [s for s in range(len(shards)) if not generated_done(paths.generated_tar(s))]
    if not missing:
        mark_current(paths, inputs_of(paths, state), {"num_shards": len(shards), "num_planned": sum(map(len, shards))})
    log.info(f"generate: {paths.root}: {len(shards) - len(missing)}/{len(shards)} shards done "
             f"({sum(len(x) for x in shards)} images planned); made {made} images in {seconds:.1f}s")
    return GenerateResult(paths.root, len(shards), len(todo), made, seconds, done=not missing)


def _generate(state: RunState, paths: RunPaths, source_factory: Callable[[GenerateConfig, Any], Any],
              share: tuple[int, int] | None = None) -> GenerateResult:
    """:func:`run_generate` once the plan is checked and the run is locked: write it, make this rank's shards
    (of this job's share, when one is given: then the plan is already written, and only this job's leftovers are
    made again, never another job's shard in the making)."""
    cfg = state.config
    dist = init_dist()
    check_offload(cfg.offload, dist.device)
    shards = state.shards()
    mine = [s for s in range(len(shards)) if owned_by_job(s, share)]
    todo = [s for s in mine if dist.owns(mine.index(s)) and not generated_done(paths.generated_tar(s))]
    # run.yaml ties the folder to this model, so it is written only once the model is known to load: one process
    # loads it first; several first check that every rank finds it (local, cached or answering: seconds), then load
    # it in their share below, where a failure is marked for the others (no collective waits on a load).
    source = source_factory(cfg, dist.device) if todo and dist.world_size == 1 else None
    if dist.world_size > 1 and source_factory is make_source:  # an injected factory brings its own model
        model_location(cfg.model, find=True)
    dist.barrier()
    if dist.is_main and share is None:  # a job of a share wrote the plan under the lock; it never cleans others'
        write_run_state(state, paths)
        clean_partials(paths.generated)
    dist.barrier()

    shards = state.shards()
    todo = [s for s in mine if dist.owns(mine.index(s)) and _to_make(paths.generated_tar(s))]
    if share is not None and dist.world_size == 1:
        return _generate_share(state, paths, source, source_factory, todo, dist, share)
    if dist.world_size == 1 and not todo:  # nothing to do (the header check found no damaged shard): write nothing
        if not is_current(paths, inputs_of(paths, state)):
            mark_current(paths, inputs_of(paths, state), {"num_shards": len(shards),
                                                          "num_planned": sum(map(len, shards))})
        log.info(f"generate: {paths.root}: {len(shards)}/{len(shards)} shards done, nothing to do")
        return GenerateResult(paths.root, len(shards), 0, 0, 0.0, done=True)
    start = time.perf_counter()
    made = 0
    markers = paths.markers / STAGE if share is None else paths.markers / STAGE / f"job-{share[0]:05d}"
    with rank_share(markers, dist) as rdv:
        texts = prepare_texts(paths.root, cfg, state.classes, state.inputs.real, {s: shards[s] for s in todo},
                              dist.device, dist.is_main and share is None, rdv.check)
        if todo:
            source = source if source is not None else source_factory(cfg, dist.device)
            writer = ShardWriterThread(cfg.image_format, cfg.quality, max_queue=max(8, 2 * cfg.batch_size))
            desc = "generate" if dist.world_size == 1 else f"generate (rank 0 of {dist.world_size})"
            bar = progress_bar(sum(len(shards[s]) for s in todo), desc, enabled=dist.is_main)

            def on_images(n: int) -> None:
                bar.update(n)
                rdv.check(every=FAILURE_CHECK_SECONDS)  # another rank failed: stop now, not at the end

            try:
                for s in todo:
                    generate_shard(shards[s], paths.generated_tar(s), cfg, state.classes, source, writer, on_images,
                                   rank=dist.rank, real=state.inputs.real, captions=texts.shard_captions(s),
                                   descriptions=texts.descriptions)
                    made += len(shards[s])
                writer.close()
            finally:
                bar.close()
    seconds = time.perf_counter() - start
    rdv.wait_for_all()
    if dist.world_size == 1:
        rdv.close()
    missing = [s for s in range(len(shards)) if not generated_done(paths.generated_tar(s))]
    if dist.is_main and share is not None:
        return _finish(state, paths, shards, todo, made, seconds)
    if dist.is_main:
        if not missing:
            facts = {"num_shards": len(shards), "num_planned": sum(map(len, shards))}
            mark_current(paths, inputs_of(paths, state), facts)
        log.info(
            f"generate: {paths.root}: {len(shards) - len(missing)}/{len(shards)} shards done "
            f"({sum(len(x) for x in shards)} images planned); made {made} images in {seconds:.1f}s on rank 0"
        )
    return GenerateResult(paths.root, len(shards), len(todo), made, seconds, done=not missing)


def _generate_share(state: RunState, paths: RunPaths, source: Any,
                    source_factory: Callable[[GenerateConfig, Any], Any], todo: list[int], dist: Any,
                    share: tuple[int, int]) -> GenerateResult:
    """One process of a job share: its shards through :class:`ShardMaker` (the function a Ray worker calls), with
    a progress bar; no process group, no markers. The job that finds every shard done records the stage."""
    shards = state.shards()
    maker = ShardMaker(paths.root, state, source_factory)
    maker._source, maker._device = source, dist.device
    start = time.perf_counter()
    made = 0
    with progress_bar(sum(len(shards[s]) for s in todo), f"generate (job {share[0]} of {share[1]})") as bar:
        for s in todo:
            n = maker(s)
            made += n
            bar.update(n)
    return _finish(state, paths, shards, todo, made, time.perf_counter() - start)


@contextlib.contextmanager
def _plan_lock(root: Path) -> Iterator[None]:
    """``RUN/.lock`` for a job of a share while it checks and writes the plan: taken in turn (the other jobs of
    the share wait for it: seconds each), not refused."""
    said = False
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(folder_lock(root))
                break
            except RunInUse as exc:
                if not said:
                    log.info(f"generate: waiting for the plan lock ({exc.message})")
                    said = True
                time.sleep(LOCK_POLL_SECONDS)
        yield


#: Seconds between two tries of ``RUN/.lock`` by a job of a share.
LOCK_POLL_SECONDS = 0.2


def _to_make(tar: Path) -> bool:
    """Whether a planned shard must be made: not done, or done but failing the header count of its done rule
    (``contract.generated.shard_problem``). The project wrote such a shard, so it may replace it: it is named in
    a warning and its stats are deleted first, so that until it is made again it is not done for any stage
    (a kill meanwhile leaves a tar without stats: a leftover) and scores of it are stale."""
    why = shard_problem(tar)
    if why is not None and generated_done(tar):
        log.warning(f"warning: making shard {tar} again: {why}")
        stats_path(tar).unlink(missing_ok=True)
    return why is not None


def shard_stats(run: str | Path) -> list[ShardStats]:
    """The stats of every finished shard, in shard order.

    Raises:
        UserError: a stats file that does not read back as :class:`~imagenet_plus.contract.ShardStats`.
    """
    paths = RunPaths(location(run))
    return [ShardStats.read(p) for p in sorted(paths.generated.glob("*.json"))]
