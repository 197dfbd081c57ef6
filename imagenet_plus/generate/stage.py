"""Generate stage: class set + config → ``RUN/generated/NNNNN.tar`` (+ ``NNNNN.json`` stats).

Input: a :class:`~imagenet_plus.config.GenerateConfig`. Output folder: ``RUN/`` (``run.yaml``,
``classes.json``, ``generated/``). Works as one process, or one process per GPU under
``accelerate launch -m imagenet_plus generate …`` / ``torchrun`` (CPU too): shard ``s`` is made by
rank ``s % world_size``.

Crash safety: ``run.yaml`` (config, hash, plan segments) is written before any image; each shard is
written as ``.partial`` and renamed when complete, then its stats JSON is written; a shard is done
when both exist. A re-run deletes leftovers, skips done shards and ends with exactly the planned keys.
A re-run with another config is refused; raising ``images_per_class`` or ``--top-up`` only adds new
indices (new shards). ``--top-up --remedy`` also gives the new indices of each class that ``diagnose`` flagged
the prompt strategy it names (``RUN/diagnosis.json`` ``strategies``), recorded in the top-up segment of
``run.yaml`` and in each sample's ``json.strategy``; seeds stay what they would have been.

Throughput: the model runs on the main thread; JPEG encoding and tar writing run on a writer thread
fed by a bounded queue, so they overlap with the next batch (PIL releases the GIL while encoding).
"""

from __future__ import annotations

import io
import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    RunPaths,
    clean_partials,
    library_versions,
    make_key,
    read_run_yaml,
    shard_name,
    write_run_yaml,
)
from imagenet_plus.errors import UserError
from imagenet_plus.generate.config import HASH_EXEMPT, GenerateConfig
from imagenet_plus.generate.plan import (
    PlanItem,
    Segment,
    attempt_seed,
    extend_segment,
    image_seed,
    initial_segment,
    plan_shards,
    top_up_segment,
)
from imagenet_plus.io.atomic import write_json_atomic
from imagenet_plus.io.tar import PartialTarWriter, read_stats
from imagenet_plus.pipeline.config import config_to_dict, stable_hash

#: Format name for PIL per image extension.
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: Minimum pass rate assumed when sizing a top-up (a class that passed nothing still gets a bounded top-up).
TOP_UP_MIN_PASS_RATE = 0.1


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


def encode_image(image: Any, image_format: str, quality: int) -> bytes:
    """Encode a PIL image with an explicit quality (webdataset would write quality 100)."""
    buf = io.BytesIO()
    fmt = PIL_FORMATS[image_format]
    if fmt == "PNG":
        image.save(buf, format=fmt)
    else:
        image.convert("RGB").save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def is_black(image: Any, threshold: float) -> bool:
    """True for a (nearly) all-black image: mean pixel value below ``threshold`` (0–255 scale).

    Safety checkers replace flagged images with black ones, and fp16 VAEs that overflow give black.
    """
    import numpy as np

    return float(np.asarray(image, dtype=np.uint8).mean()) < threshold


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["model: 'a' → 'b'", …]`` for keys whose values differ."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# --------------------------------------------------------------------------------------------------
# Run directory state


@dataclass(frozen=True)
class RunState:
    """The run's plan as it will be after this invocation (what run.yaml says)."""

    config: GenerateConfig
    classes: list[Any]
    run_hash: str
    segments: tuple[Segment, ...]
    new_run: bool
    changed: bool


def _hashed_config(cfg: GenerateConfig) -> dict[str, Any]:
    data = config_to_dict(cfg)
    for key in HASH_EXEMPT:
        data.pop(key, None)
    return data


def _read_top_up_counts(paths: RunPaths, classes: Sequence[Any]) -> tuple[dict[int, int], str]:
    """New images per label for classes short of their quota, from ``RUN/selection.json``."""
    if not paths.selection_json.is_file():
        raise UserError(f"--top-up needs {paths.selection_json}: run 'imagenet-plus score' and 'select' first")
    text = paths.selection_json.read_text(encoding="utf-8")
    try:
        selection = json.loads(text)
        short = selection["short"]
        pass_rate = selection.get("pass_rate", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{paths.selection_json}: malformed selection summary ({exc})") from None
    label_of = {c.id: c.label for c in classes}
    counts: dict[int, int] = {}
    for class_id, missing in short.items():
        if class_id not in label_of:
            raise UserError(f"{paths.selection_json}: unknown class id {class_id!r} in 'short'")
        rate = max(float(pass_rate.get(class_id, 0.0) or 0.0), TOP_UP_MIN_PASS_RATE)
        if int(missing) > 0:
            counts[label_of[class_id]] = math.ceil(int(missing) / rate)
    return counts, stable_hash(text)


def _read_remedy(paths: RunPaths, classes: Sequence[Any]) -> dict[int, str]:
    """Prompt strategy per label for the classes ``diagnose`` flagged, from ``RUN/diagnosis.json``."""
    from imagenet_plus.diagnose.stage import read_remedy_strategies
    from imagenet_plus.generate.config import PROMPT_STRATEGIES

    if not paths.diagnosis_json.is_file():
        raise UserError(f"--remedy needs {paths.diagnosis_json}: run 'imagenet-plus diagnose {paths.root}' first")
    label_of = {c.id: c.label for c in classes}
    out: dict[int, str] = {}
    for class_id, strategy in read_remedy_strategies(paths.root).items():
        if class_id not in label_of:
            raise UserError(f"{paths.diagnosis_json}: unknown class id {class_id!r} in 'strategies'")
        if strategy not in PROMPT_STRATEGIES:
            raise UserError(f"{paths.diagnosis_json}: unknown prompt strategy {strategy!r} for class {class_id!r} "
                            f"(choose from {', '.join(PROMPT_STRATEGIES)})")
        out[label_of[class_id]] = strategy
    return out


def plan_run_state(cfg: GenerateConfig, paths: RunPaths, top_up: bool, remedy: bool = False) -> RunState:
    """Check the run folder against the config and work out the plan (reads only, writes nothing).

    Raises:
        UserError: ``RUN`` is a file; it was made with another config or class set; images per class
            would shrink; ``--top-up`` without a selection; ``--remedy`` without ``--top-up`` or a diagnosis.
    """
    from imagenet_plus.classes.sets import resolve_classes

    if remedy and not top_up:
        raise UserError("--remedy only works with --top-up (it sets the prompt strategy of the new indices)")
    if paths.root.exists() and not paths.root.is_dir():
        raise UserError(f"--out {paths.root} is a file, not a run directory")
    cfg = cfg.resolved()
    classes = resolve_classes(cfg.classes, class_limit=cfg.class_limit)
    for c in classes:
        make_key(c.id, 0)  # every class id must give valid keys
    hashed = _hashed_config(cfg)
    run_hash = stable_hash({"config": hashed, "classes": [c.to_dict() for c in classes]})

    if not paths.run_yaml.exists():
        if top_up:
            raise UserError(f"--top-up needs an existing run in {paths.root}")
        segments = (initial_segment(len(classes), cfg.images_per_class),)
        return RunState(cfg, classes, run_hash, segments, new_run=True, changed=True)

    recorded = read_run_yaml(paths)
    if recorded.get("config_hash") != run_hash:
        old = dict(recorded.get("config", {}))
        for key in HASH_EXEMPT:
            old.pop(key, None)
        changes = diff_configs(old, hashed) or ["the class set's contents"]
        raise UserError(
            f"{paths.root} was made with another config ({'; '.join(changes)}): use another --out, "
            "or the original settings"
        )
    segments = tuple(Segment.from_dict(s) for s in recorded.get("segments", []))
    old_ipc = int(recorded["config"]["images_per_class"])
    changed = False
    if cfg.images_per_class < old_ipc:
        raise UserError(
            f"{paths.root} already has {old_ipc} images per class; images-per-class {cfg.images_per_class} "
            "would drop planned images (use another --out)"
        )
    if cfg.images_per_class > old_ipc:
        segments += (extend_segment(len(classes), old_ipc, cfg.images_per_class),)
        changed = True
    if top_up:
        counts, based_on = _read_top_up_counts(paths, classes)
        strategies = _read_remedy(paths, classes) if remedy else None
        already = any(s.kind == "top-up" and s.based_on == based_on for s in segments)
        if counts and not already:
            segments += (top_up_segment(segments, counts, based_on, strategies),)
            changed = True
    return RunState(cfg, classes, run_hash, segments, new_run=False, changed=changed)


def write_run_state(state: RunState, paths: RunPaths) -> None:
    """Write ``classes.json`` (new runs) and ``run.yaml`` (when the plan changed)."""
    from imagenet_plus.classes.sets import write_classes_json

    paths.generated.mkdir(parents=True, exist_ok=True)
    if state.new_run:
        write_classes_json(paths.classes_json, state.classes)
    if state.changed:
        write_run_yaml(
            paths,
            {
                "config": config_to_dict(state.config),
                "config_hash": state.run_hash,
                "versions": library_versions(),
                "num_classes": len(state.classes),
                "num_images": sum(s.num_items for s in state.segments),
                "segments": [s.to_dict() for s in state.segments],
            },
        )


# --------------------------------------------------------------------------------------------------
# Writer thread


class ShardWriterThread:
    """Encodes images and writes shards on a background thread, in plan order.

    Commands go through a bounded queue: ``begin(path)``, ``put(position, key, image, meta)`` (any
    order; samples are written in position order), ``end(stats)`` (commit the tar, then its stats
    JSON). Errors on the thread are re-raised on the next call from the main thread.
    """

    def __init__(self, image_format: str, quality: int, max_queue: int = 64) -> None:
        self.image_format = image_format
        self.quality = quality
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _send(self, msg: tuple[str, Any] | None) -> None:
        while True:
            self._check()
            try:
                self._queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def begin(self, path: Path) -> None:
        self._send(("begin", path))

    def put(self, position: int, key: str, image: Any, meta: dict[str, Any]) -> None:
        self._send(("sample", (position, key, image, meta)))

    def end(self, stats: dict[str, Any]) -> None:
        self._send(("end", stats))

    def close(self) -> None:
        """Finish all queued work and stop the thread (re-raises its error, if any)."""
        if self._thread.is_alive():
            self._send(None)
            self._thread.join()
        self._check()

    def _loop(self) -> None:
        writer: PartialTarWriter | None = None
        buffered: dict[int, dict[str, Any]] = {}
        next_pos = 0
        try:
            while True:
                msg = self._queue.get()
                if msg is None:
                    return
                kind, payload = msg
                if kind == "begin":
                    writer, buffered, next_pos = PartialTarWriter(payload), {}, 0
                elif kind == "sample":
                    position, key, image, meta = payload
                    buffered[position] = {
                        "__key__": key,
                        self.image_format: encode_image(image, self.image_format, self.quality),
                        "cls": str(meta["label"]).encode(),
                        "json": json.dumps(meta, sort_keys=True).encode(),
                    }
                    while next_pos in buffered and writer is not None:
                        writer.write(buffered.pop(next_pos))
                        next_pos += 1
                elif kind == "end":
                    assert writer is not None and not buffered, "shard ended with samples missing"
                    writer.commit()
                    write_json_atomic(writer.path.with_suffix(".json"), payload)
                    writer = None
        except BaseException as exc:  # handed to the main thread
            self._error = exc
            if writer is not None:
                writer.abort()
            # drain so that the main thread never blocks on a full queue
            while True:
                try:
                    if self._queue.get_nowait() is None:
                        return
                except queue.Empty:
                    return


# --------------------------------------------------------------------------------------------------
# The stage


def _sample_meta(cfg: GenerateConfig, cls: Any, item: PlanItem, prompt: str, negative: str, strategy: str,
                 seed: int, attempt: int, nsfw: bool, scheduler: str) -> dict[str, Any]:
    return {
        "class_id": cls.id,
        "class_name": cls.name,
        "label": cls.label,
        "index": item.index,
        "prompt": prompt,
        "negative_prompt": negative,
        "strategy": strategy,
        "seed": seed,
        "model": cfg.model,
        "scheduler": scheduler,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "width": cfg.resolution,
        "height": cfg.resolution,
        "attempt": attempt,
        "nsfw": nsfw,
    }


def generate_shard(
    items: Sequence[PlanItem],
    path: Path,
    cfg: GenerateConfig,
    classes: Sequence[Any],
    source: Any,
    writer: ShardWriterThread,
    on_images: Callable[[int], None] = lambda n: None,
    rank: int = 0,
) -> dict[str, Any]:
    """Generate one shard's images in batches, regenerating NSFW-flagged or black ones.

    Returns the stats dict written beside the shard.
    """
    from imagenet_plus.classes.prompts import build_negative_prompt, build_prompt, choose_strategy

    start = time.perf_counter()
    negative = build_negative_prompt(cfg.negative_prompt)
    writer.begin(path)
    prepared = []
    for item in items:
        cls = classes[item.label]
        seed = image_seed(cfg.seed, cls.id, item.index)
        strategy = item.strategy or choose_strategy(cfg.prompt_strategy, seed)
        prepared.append((item, cls, seed, strategy, build_prompt(cls, strategy, seed)))
    pending = deque((pos, 0) for pos in range(len(prepared)))
    regenerated = {"nsfw": 0, "black": 0}
    failed: list[str] = []
    while pending:
        batch = [pending.popleft() for _ in range(min(cfg.batch_size, len(pending)))]
        seeds = [attempt_seed(prepared[pos][2], attempt) for pos, attempt in batch]
        prompts = [prepared[pos][4] for pos, _ in batch]
        images, nsfw = source(prompts, [negative] * len(batch), seeds)
        finished = 0
        for (pos, attempt), image, flagged, seed in zip(batch, images, nsfw, seeds):
            item, cls, _, strategy, prompt = prepared[pos]
            black = is_black(image, cfg.black_threshold)
            if (flagged or black) and attempt + 1 < cfg.max_attempts:
                regenerated["nsfw" if flagged else "black"] += 1
                pending.append((pos, attempt + 1))
                continue
            key = make_key(cls.id, item.index)
            if flagged or black:
                failed.append(key)
            meta = _sample_meta(
                cfg, cls, item, prompt, negative, strategy, seed, attempt, bool(flagged), source.scheduler_name
            )
            writer.put(pos, key, image, meta)
            finished += 1
        on_images(finished)
    seconds = time.perf_counter() - start
    stats = {
        "shard": path.stem,
        "count": len(items),
        "first_key": make_key(items[0].class_id, items[0].index),
        "last_key": make_key(items[-1].class_id, items[-1].index),
        "failures": len(failed),
        "failed_keys": failed,
        "regenerated": regenerated,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(items) / seconds, 3) if seconds > 0 else None,
        "rank": rank,
        "model": cfg.model,
    }
    writer.end(stats)
    return stats


def make_source(cfg: GenerateConfig, device: Any) -> Any:
    """The diffusers pipeline of ``cfg.model`` wrapped as an image source (arguments mapped for its family)."""
    from imagenet_plus.models.diffusion import DiffusersSource, load_pipeline

    pipe = load_pipeline(cfg.model, device, cfg.dtype, offload=cfg.offload, compile=cfg.compile)
    source = DiffusersSource(pipe, steps=cfg.steps, guidance=cfg.guidance, width=cfg.resolution, height=cfg.resolution,
                             family=cfg.family, max_sequence_length=cfg.max_sequence_length)
    source.check_arguments(cfg.model, cfg.negative_prompt)
    return source


#: The marker folder of this stage under ``RUN/markers`` (see :class:`~imagenet_plus.distributed.FileRendezvous`).
STAGE = "generate"
#: Seconds between two looks for another rank's failure while generating.
FAILURE_CHECK_SECONDS = 2.0


def run_generate(
    cfg: GenerateConfig,
    out: str | Path,
    top_up: bool = False,
    source_factory: Callable[[GenerateConfig, Any], Any] = make_source,
    remedy: bool = False,
) -> GenerateResult:
    """Generate every planned image of ``cfg`` into the run folder ``out`` (resumable).

    Under several processes the ranks meet in a collective only after short work (checking the plan, writing
    run.yaml, agreeing on the job's marker token); at the end each rank marks its part done in
    ``RUN/markers/generate/`` and waits on the other ranks' marker files (``distributed.FileRendezvous``), so
    a rank with hours of shards never holds another in a collective past the process-group timeout. A rank
    that fails marks it; the others notice between batches and stop with a one-line error. Every rank waits
    for all (not only the main one), so each returns ``done`` for the whole run; the markers stay until the
    next launch's start clears them (a rank still polling must never see them deleted).

    Args:
        cfg: generation settings.
        out: the run folder (created if missing).
        top_up: add new indices for the classes ``select`` found short (reads ``RUN/selection.json``).
        source_factory: builds the image source from (resolved config, device); tests inject fakes.
        remedy: with ``top_up``, generate the new indices of each class ``diagnose`` flagged with the prompt
            strategy it names (reads ``RUN/diagnosis.json``), instead of the configured strategies.

    Returns:
        What this rank did, and whether every shard of the run is now done.

    Raises:
        UserError: bad settings (nothing is written), or an error on any rank.
    """
    from imagenet_plus.models.diffusion import check_offload
    from imagenet_plus.pipeline.progress import progress_bar
    from imagenet_plus.pipeline.ranks import FileRendezvous, init_dist

    paths = RunPaths(Path(out))
    if cfg.offload != "none":  # refused before the process group and the class set are set up
        import torch

        check_offload(cfg.offload, "cuda" if torch.cuda.is_available() else "cpu")
    state = plan_run_state(cfg, paths, top_up, remedy)  # every rank checks before anyone writes
    cfg = state.config
    dist = init_dist()
    check_offload(cfg.offload, dist.device)
    dist.barrier()
    if dist.is_main:
        write_run_state(state, paths)
        clean_partials(paths.generated)
    dist.barrier()
    rdv = FileRendezvous.start(paths.markers / STAGE, dist)

    shards = plan_shards(state.segments, [c.id for c in state.classes], cfg.shard_size)
    done = {s for s in range(len(shards)) if _is_done(paths, s)}
    todo = [s for s in range(len(shards)) if dist.owns(s) and s not in done]
    start = time.perf_counter()
    made = 0
    try:
        if todo:
            source = source_factory(cfg, dist.device)
            writer = ShardWriterThread(cfg.image_format, cfg.quality, max_queue=max(8, 2 * cfg.batch_size))
            total = sum(len(shards[s]) for s in todo)
            desc = "generate" if dist.world_size == 1 else f"generate (rank 0 of {dist.world_size})"
            bar = progress_bar(total, desc, enabled=dist.is_main)

            def on_images(n: int) -> None:
                bar.update(n)
                rdv.check(every=FAILURE_CHECK_SECONDS)  # another rank failed: stop now, not at the end

            try:
                for s in todo:
                    path = paths.generated / f"{shard_name(s)}.tar"
                    generate_shard(shards[s], path, cfg, state.classes, source, writer, on_images, rank=dist.rank)
                    made += len(shards[s])
                writer.close()
            finally:
                bar.close()
    except BaseException as exc:
        rdv.fail(exc)
        raise
    seconds = time.perf_counter() - start
    rdv.done()
    rdv.wait_for_all()
    if dist.world_size == 1:
        rdv.close()
    missing = [s for s in range(len(shards)) if not _is_done(paths, s)]
    if dist.is_main:
        _log(
            f"generate: {paths.root}: {len(shards) - len(missing)}/{len(shards)} shards done "
            f"({sum(len(x) for x in shards)} images planned); made {made} images in {seconds:.1f}s on rank 0"
        )
    return GenerateResult(paths.root, len(shards), len(todo), made, seconds, done=not missing)


def _is_done(paths: RunPaths, shard: int) -> bool:
    stem = paths.generated / shard_name(shard)
    return stem.with_suffix(".tar").is_file() and stem.with_suffix(".json").is_file()


def _log(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def planned_keys(run: str | Path) -> list[str]:
    """Every key the run's plan holds, in shard order (for checks and downstream stages)."""
    paths = RunPaths(Path(run))
    recorded = read_run_yaml(paths)
    from imagenet_plus.classes.sets import read_classes_json

    classes = read_classes_json(paths.classes_json)
    segments = [Segment.from_dict(s) for s in recorded.get("segments", [])]
    shards = plan_shards(segments, [c.id for c in classes], int(recorded["config"]["shard_size"]))
    return [make_key(it.class_id, it.index) for shard in shards for it in shard]


def shard_stats(run: str | Path) -> list[dict[str, Any]]:
    """The stats JSON of every finished shard."""
    paths = RunPaths(Path(run))
    return [read_stats(p) for p in sorted(paths.generated.glob("*.json"))]
