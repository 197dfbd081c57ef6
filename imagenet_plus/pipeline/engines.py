"""Who makes which shard: the engines of ``generate`` and ``score`` (``--engine``, ``--job-index/--num-jobs``).

The per-shard work of a stage is a callable built from (run location, the stage's resolved settings) and called
with a shard id; it is idempotent (a shard already done is skipped, a shard made again gives the same bytes), so an
engine only decides who calls it for which shard, and any shard may be made twice without harm:

- ``accelerate`` (default): one process, or one per GPU under ``accelerate launch``/``torchrun``; shard ``s``
  belongs to rank ``s % world_size`` (:mod:`~imagenet_plus.pipeline.ranks`). Ranks meet through marker files.
- **job share** (``--job-index I --num-jobs N``, or a Slurm job array: ``SLURM_ARRAY_TASK_ID`` minus
  ``SLURM_ARRAY_TASK_MIN`` and ``SLURM_ARRAY_TASK_COUNT``): this process makes the shards ``s % N == I`` and
  nothing else, with no process group and no waiting for the other jobs; the job that finds every shard done
  records the stage as current, and a later plain run makes whatever a lost job left. It composes with
  ``accelerate``: under ``accelerate launch`` the job's shards are split across its ranks.
- ``ray``: the driver (this process) plans the run and hands every shard to a Ray cluster (``ray.init(address)``
  from ``--ray-address``/``RAY_ADDRESS``; without either, a local one), then runs the stage's single-process
  part (score's dataset pass). See :func:`run_on_ray`.

Settings (:class:`ExecutionConfig`) change where and how shards are made, never what: they are outside every
stage's config hash and freshness settings, so switching engines between two invocations resumes the same run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.io.storage import STORAGE_OPTIONS_ENV
from imagenet_plus.pipeline.config import field_name, load_config, setting, settings_of
from imagenet_plus.pipeline.progress import progress_bar

log = logging.getLogger(__name__)

#: The engines ``--engine`` takes.
ENGINES = ("accelerate", "ray")
#: Environment variables of a Slurm job array (the task id runs from ``SLURM_ARRAY_TASK_MIN``, not always 0).
SLURM_TASK_ID, SLURM_TASK_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
SLURM_TASK_MIN = "SLURM_ARRAY_TASK_MIN"
#: Ray's own variable naming the cluster to join.
RAY_ADDRESS_ENV = "RAY_ADDRESS"
#: What to install for ``--engine ray``.
RAY_EXTRA = "pip install 'imagenet-plus[ray]'"
#: Times Ray restarts a dead shard worker and retries the shard it was making (a node lost, a process killed).
RAY_RETRIES = 3


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how ``generate`` and ``score`` make their shards (flags of both; top-level keys of a config file).

    None of these changes an output byte, so none is part of a config hash or a stage's freshness settings.
    """

    engine: str = setting("accelerate", "accelerate (one process, or accelerate launch/torchrun) or ray.")
    ray_address: str | None = setting(None, "Ray cluster to join (default: RAY_ADDRESS, else a local one).")
    job_index: int | None = setting(
        None, "Make only the shards s with s % num-jobs == job-index (default: SLURM_ARRAY_TASK_ID).")
    num_jobs: int | None = setting(
        None, "Number of separate jobs sharing the shards (default: SLURM_ARRAY_TASK_COUNT).")

    def __post_init__(self) -> None:
        src = "execution settings"
        if self.engine not in ENGINES:
            raise ConfigError(f"{src}: 'engine' must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if (self.job_index is None) != (self.num_jobs is None):
            raise ConfigError(f"{src}: give 'job-index' and 'num-jobs' together")
        if self.num_jobs is not None and self.num_jobs < 1:
            raise ConfigError(f"{src}: 'num-jobs' must be positive, got {self.num_jobs}")
        if self.job_index is not None and self.num_jobs is not None and not 0 <= self.job_index < self.num_jobs:
            raise ConfigError(f"{src}: 'job-index' must be within 0..{self.num_jobs - 1}, got {self.job_index}")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError(f"{src}: 'ray-address' needs 'engine: ray'")
        if self.engine == "ray" and self.num_jobs is not None:
            raise ConfigError(f"{src}: 'job-index'/'num-jobs' split shards between separate processes; with "
                              "'engine: ray' the Ray cluster makes every shard (leave them out)")


#: The execution keys (field names) of a config file's top level.
EXECUTION_KEYS = tuple(settings_of(ExecutionConfig))


def split_execution(mapping: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the other keys, the execution keys) of a mapping: a config file's top level or the flags of a command."""
    rest: dict[str, Any] = {}
    execution: dict[str, Any] = {}
    for key, value in mapping.items():
        (execution if field_name(key) in EXECUTION_KEYS else rest)[key] = value
    return rest, execution


def load_execution(file_mapping: Mapping[str, Any] | None, flags: Mapping[str, Any] | None,
                   source: str) -> ExecutionConfig:
    """The execution settings of a config file's top level, overridden by the flags (other keys are ignored)."""
    return load_config(ExecutionConfig, split_execution(file_mapping or {})[1], split_execution(flags or {})[1], source)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r}: expected an integer (set by Slurm for a job array)") from None


def job_share(execution: ExecutionConfig, environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(index, count)`` of this job among separate jobs, or None when it makes every shard.

    ``--job-index/--num-jobs`` when given; else, in a Slurm job array, ``SLURM_ARRAY_TASK_ID -
    SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT`` (``--array=1-8`` gives indices 0..7; an array with a
    step, ``--array=0-15:4``, is refused: its ids are not consecutive). Under ``engine: ray`` never a share.

    Raises:
        UserError: Slurm variables that do not describe consecutive ids.
    """
    if execution.num_jobs is not None and execution.job_index is not None:
        return (execution.job_index, execution.num_jobs) if execution.num_jobs > 1 else None
    if execution.engine == "ray":
        return None
    env = os.environ if environ is None else environ
    task, count = _env_int(env, SLURM_TASK_ID), _env_int(env, SLURM_TASK_COUNT)
    if task is None or count is None:
        return None
    index = task - (_env_int(env, SLURM_TASK_MIN) or 0)
    if not 0 <= index < count:
        raise UserError(f"{SLURM_TASK_ID}={task} is not within {SLURM_TASK_MIN}..{SLURM_TASK_MIN}+"
                        f"{SLURM_TASK_COUNT}-1 (an array with a step, --array=A-B:S, is not supported: use "
                        "--job-index/--num-jobs)")
    if count < 2:
        return None
    log.info(f"Slurm array task {task} ({index} of {count}): making the shards s with s % {count} == {index} only "
             "(--job-index 0 --num-jobs 1 makes every shard)")
    return index, count


def owned_by_job(shard: int, share: tuple[int, int] | None) -> bool:
    """Whether this job makes ``shard`` (every shard without a share)."""
    return share is None or shard % share[1] == share[0]


# --------------------------------------------------------------------------------------------------
# Ray


@dataclass(frozen=True)
class Resources:
    """What one shard worker asks of the Ray cluster."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


def import_ray() -> Any:
    """``ray``, or a one-line error saying what to install."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray: {RAY_EXTRA}") from None
    return ray


def connect_ray(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (``--ray-address``, else ``RAY_ADDRESS``) or start a local one;
    a cluster this process already joined is used as is.

    Raises:
        UserError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get(RAY_ADDRESS_ENV) or None
    if address is not None:
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise UserError(f"cannot reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None
    return ray


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) address that no server answers, in seconds: ``ray.init``
    would retry for minutes. ``auto`` and other forms are left to Ray.

    Raises:
        UserError: nothing listens there (naming the address and the reason).
    """
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (start it with 'ray start "
                        f"--head', or check --ray-address / {RAY_ADDRESS_ENV})") from None


def worker_count(ray: Any, resources: Resources, num_shards: int) -> int:
    """Shard workers to start: as many as the cluster's GPUs (or CPUs) fit at once, at most one per shard."""
    total = ray.cluster_resources()
    if resources.num_gpus > 0:
        fit = int(total.get("GPU", 0) // resources.num_gpus)
    else:
        fit = int(total.get("CPU", 1) // max(resources.num_cpus, 1e-9))
    return max(1, min(fit, num_shards))


class _ShardWorker:
    """The Ray actor around a stage's per-shard callable: built once per worker (a model loaded once), called
    once per shard."""

    def __init__(self, factory: Callable[[], Callable[[int], int]]) -> None:
        self.make = factory()

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard: int) -> int:
        return int(self.make(shard))


def _last_line(text: str) -> str:
    """The message of the exception at the end of a Ray error's text (``module.Error: message`` → ``message``)."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), text)
    head, sep, rest = line.partition(": ")
    return rest if sep and "." in head and " " not in head else line


def worker_environment() -> dict[str, str]:
    """The environment variables a Ray worker gets from the driver: no progress bars (the driver shows one over all
    shards), and the storage options of ``--storage-options`` or a config's ``storage-options:`` (the workers of a
    cluster do not share the driver's environment; credentials stay with each node's own environment)."""
    env = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if os.environ.get(STORAGE_OPTIONS_ENV):
        env[STORAGE_OPTIONS_ENV] = os.environ[STORAGE_OPTIONS_ENV]
    return env


def run_on_ray(factory: Callable[[], Callable[[int], int]], shards: Sequence[int], sizes: Mapping[int, int],
               resources: Resources, address: str | None, desc: str) -> None:
    """Make ``shards`` on a Ray cluster; return when every one is made.

    **Actors, not one task per shard.** Each worker is a Ray actor that builds the stage's per-shard callable once
    (``factory()``: the diffusion pipeline or the scoring networks loaded once, like Ray's own batch-inference
    recipe ``map_batches(Model, concurrency=GPUs)``) and is then handed shards one at a time from a queue on the
    driver, so a fast worker takes more shards. One task per shard would load the model for every shard: Ray does
    not reuse a GPU task's worker process (``max_calls=1`` by default for GPU tasks, since a reused process keeps
    its CUDA context on the GPU of its first task). Dead workers: an actor is restarted (``max_restarts``) and the
    shard it was making is retried on it (``max_task_retries``), on any node with the resources, up to
    :data:`RAY_RETRIES` times; a shard made half is made again whole (shards are idempotent). An error raised by
    the shard itself (a corrupt input, a model that does not load) is not retried: it stops the run as one line.

    Args:
        factory: builds the per-shard callable (picklable: a ``functools.partial`` of a module-level class).
        shards: the shard ids to make.
        sizes: images per shard, for the progress bar (over every shard, on the driver).
        resources: what each worker asks for.
        address: the cluster (None: ``RAY_ADDRESS`` or a local one).
        desc: the progress bar's label.

    Raises:
        UserError: Ray missing or unreachable; a shard that failed (named), or whose worker died too often.
    """
    if not shards:
        return
    ray = connect_ray(address)
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    actor_cls = ray.remote(max_restarts=RAY_RETRIES, max_task_retries=RAY_RETRIES)(_ShardWorker)
    # progress is the driver's: the workers' own bars (model loading) would only interleave on its stderr
    options = dict(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                   runtime_env={"env_vars": worker_environment()})
    workers = [actor_cls.options(**options).remote(factory) for _ in range(worker_count(ray, resources, len(shards)))]
    log.info(f"{desc}: {len(shards)} shards on {len(workers)} Ray workers")
    queue = list(shards)[::-1]
    running: dict[Any, tuple[int, Any]] = {}

    def submit(worker: Any) -> None:
        shard = queue.pop()
        running[worker.run.remote(shard)] = (shard, worker)

    try:
        with progress_bar(sum(sizes.get(s, 0) for s in shards), desc) as bar:
            for worker in workers:
                if queue:
                    submit(worker)
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                shard, worker = running.pop(ref)
                try:
                    ray.get(ref)
                except RayTaskError as exc:
                    cause = exc.as_instanceof_cause()
                    message = getattr(cause, "message", None) or str(cause).splitlines()[-1]
                    raise UserError(f"shard {shard}: {message}") from None
                except RayActorError as exc:
                    if getattr(exc, "actor_init_failed", False):  # the worker's set-up raised: retrying cannot help
                        raise UserError(f"a Ray worker could not start: {_last_line(str(exc))}") from None
                    raise UserError(f"shard {shard}: its Ray worker died {RAY_RETRIES + 1} times "
                                    f"({type(exc).__name__}); run the same command again") from None
                except WorkerCrashedError as exc:
                    raise UserError(f"shard {shard}: its Ray worker died {RAY_RETRIES + 1} times "
                                    f"({type(exc).__name__}); run the same command again") from None
                bar.update(sizes.get(shard, 0))
                if queue:
                    submit(worker)
    finally:
        for worker in workers:
            ray.kill(worker)
