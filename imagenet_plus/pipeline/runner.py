"""The one-command pipeline: ``imagenet-plus run --config CFG --out RUN``.

Input: a YAML config whose top-level keys are ``generate``'s settings and whose sections ``score:``,
``diagnose:``, ``select:``, ``release:``, ``report:``, ``evaluate:`` and ``publish:`` hold the settings of
those stages. Output: the run folder RUN, the release folder (``release.out``, default ``RUN/release``), the
evaluation folder (``evaluate.out``, default ``RUN/eval``) and, when ``publish.repo-id`` is set, the dataset
repo on the Hub.

Order: generate → score (→ diagnose when a ``diagnose:`` section is given) → select → release → report
(→ evaluate when ``evaluate.test`` names a real test set, → publish when ``publish.repo-id`` is set).
Every setting of every stage is validated before any work starts, so a typo in the last section fails
at once, as one line naming ``FILE: section`` and the key.

The stages are entries of :data:`REGISTRY` (as torch-fidelity's registry does for feature extractors). A
:class:`StageSpec` names the stage's package face (``imagenet_plus.score``…), from which ``run`` takes its
config class, its ``run_<stage>`` function and its ``stage_inputs``; every section is loaded by the one
generic loader (``load_config(XConfig, section, None, "FILE: section")``) and the few real special cases are
small hooks (select's inline thresholds, release's ``out``, evaluate's defaults, publish's token check).
Adding a stage is one ``register(StageSpec(...))`` call at its place in the order (plus its section name in
``config.STAGE_SECTIONS``, which a test keeps equal to the registry's sections).

Skipping and resuming: ``run`` asks each stage the question the stage asks itself, through the same
function: ``freshness.is_current(paths, <stage>.stage_inputs(...))`` (the stage's settings, the fingerprints
of the stages it reads and its input files against its record ``RUN/state/{stage}.json``, and its outputs
exist). A current stage is skipped; any other runs, and every stage resumes by itself (generate and score
skip finished shards, select/report rewrite their small outputs atomically, release is a no-op for the same
inputs, publish's upload resumes), so a ``run`` killed at any point finishes when started again. A stage
that re-ran records a new fingerprint, which changes the fingerprint of every stage that reads it: changing
a stage's settings re-runs that stage and the ones after it. ``evaluate`` has no record of its own: ``run``
declares its inputs (its settings, the release's fingerprint, ``eval.json`` as output) and records it after
it ran; ``publish`` always runs (its upload is a no-op when the repo already equals the release).
``RUN/pipeline.json`` is only a log of what the last ``run`` did with each stage; nothing reads it to decide.

``select.thresholds`` may be a file path or an inline mapping of thresholds (written to
``RUN/thresholds.yaml``, rewritten only when its contents change, for the select stage). Relative paths are
relative to the current directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagenet_plus import diagnose, evaluate, generate, publish, release, report, score, select
from imagenet_plus.contract import EVAL_JSON, RunPaths
from imagenet_plus.contract.ownership import check_run_folder
from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.io.atomic import write_bytes_atomic, write_json_atomic
from imagenet_plus.io.lock import folder_lock
from imagenet_plus.io.storage import (
    STORAGE_OPTIONS_ENV,
    is_remote,
    location,
    remove_tree,
    set_storage_options,
    storage_errors,
)
from imagenet_plus.pipeline.config import config_to_dict, field_name, load_config, split_config_file
from imagenet_plus.pipeline.engines import EXECUTION_KEYS, ExecutionConfig, job_share
from imagenet_plus.pipeline.freshness import StageInputs, is_current, mark_current, what_changed
from imagenet_plus.pipeline.ranks import init_dist

log = logging.getLogger(__name__)

#: Default release folder (inside RUN) and evaluation folder.
DEFAULT_RELEASE = "release"
DEFAULT_EVAL = "eval"
#: Folder below ``RUN/markers`` where the main process tells the others what it did with each stage.
RUN_MARKERS = "run"
#: What the main process tells the others: a stage is ``running`` (all-ranks stages), ``skipped`` or ``done``.
RUNNING, SKIPPED, DONE = "running", "skipped", "done"


# ------------------------------------------------------------------------------------------------
# The plan: every stage's validated settings


@dataclass(frozen=True)
class Plan:
    """Every stage's settings, validated: ``plan.score``, ``plan.select``… (None when a stage is not configured).

    ``values`` holds what each stage's loader returned: its config under the stage name plus extra values
    (``thresholds``: select's inline thresholds; ``release_out``: the release folder); they read as attributes.
    """

    run: Path
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name.startswith("__") or name not in values:
            raise AttributeError(f"Plan has no {name!r} (stages: {', '.join(REGISTRY)})")
        return values[name]


@dataclass(frozen=True)
class ConfigSource:
    """What a stage's loader reads: the config file, its generate keys and sections, the run folder, and the
    values earlier stages' loaders returned."""

    path: Path
    run: Path
    top: Mapping[str, Any]
    sections: Mapping[str, dict[str, Any]]
    earlier: Mapping[str, Any]

    def where(self, section: str) -> str:
        """``FILE: section``, the prefix of every error about that section."""
        return f"{self.path}: {section}"


def _pop(section: dict[str, Any], key: str) -> Any:
    """Remove ``key`` (written with ``-`` or ``_``) from a section and return its value."""
    for k in list(section):
        if field_name(k) == field_name(key):
            return section.pop(k)
    return None


def _has(section: Mapping[str, Any], key: str) -> bool:
    return any(field_name(k) == field_name(key) and section[k] not in (None, "") for k in section)


# ------------------------------------------------------------------------------------------------
# The registry


def _run_and_config(spec: StageSpec, plan: Plan) -> tuple[Any, ...]:
    """The arguments most stages take, in ``run_<stage>`` and ``stage_inputs`` alike: ``(RUN, config)``."""
    return (plan.run, plan.values[spec.name])


@dataclass(frozen=True)
class StageSpec:
    """One stage of ``run``.

    Attributes:
        name: the stage (its record ``RUN/state/{name}.json``; also its config section unless ``section`` says
            otherwise).
        face: its package (lazy face), offering ``config`` (the config class), ``run_<name>`` and ``stage_inputs``;
            looked up when called, so tests can replace them.
        config: the name of its config class on ``face``.
        args: ``(spec, Plan)`` → the arguments of ``run_<name>`` and ``stage_inputs`` (default ``(RUN, config)``).
        call: ``Plan`` → runs the stage, when not ``face.run_<name>(*args)``.
        inputs: ``Plan`` → its :class:`StageInputs` (None: always runs), when not ``face.stage_inputs(*args)``.
        all_ranks: every process of a multi-process launch takes part (else the main process runs it).
        optional: runs only when its section is in the config file.
        section: its config file section (None: the top-level keys, as for generate).
        prepare: ``(ConfigSource, section mapping)`` → extra plan values; may take keys out of the mapping or add
            defaults before the config is built (select's inline thresholds, release's ``out``…).
        check: ``(ConfigSource, config)`` → raises on what the built config cannot be run with (a missing folder).
        marked_by_run: ``run`` records the stage as current after it ran (a stage without a record of its own).
    """

    name: str
    face: Any
    config: str
    args: Callable[[StageSpec, Plan], tuple[Any, ...]] = _run_and_config
    call: Callable[[Plan], Any] | None = None
    inputs: Callable[[Plan], StageInputs | None] | None = None
    all_ranks: bool = False
    optional: bool = False
    section: str | None = ""
    prepare: Callable[[ConfigSource, dict[str, Any]], dict[str, Any]] | None = None
    check: Callable[[ConfigSource, Any], None] | None = None
    marked_by_run: bool = False

    def __post_init__(self) -> None:
        if self.section == "":
            object.__setattr__(self, "section", self.name)

    def load(self, src: ConfigSource) -> dict[str, Any]:
        """Read and validate the stage's settings: ``{name: config or None, **extra values}``."""
        if self.section is None:
            mapping, where = dict(src.top), str(src.path)
        elif self.optional and self.section not in src.sections:
            return {self.name: None}
        else:
            mapping, where = dict(src.sections.get(self.section, {})), src.where(self.section)
        extra = self.prepare(src, mapping) if self.prepare is not None else {}
        cfg = load_config(getattr(self.face, self.config), mapping, None, where)
        if self.check is not None:
            self.check(src, cfg)
        return {self.name: cfg, **extra}

    def stage_inputs(self, plan: Plan) -> StageInputs | None:
        """What the stage's outputs are made from now (None: it has no freshness rule and always runs)."""
        if self.inputs is not None:
            return self.inputs(plan)
        return self.face.stage_inputs(*self.args(self, plan))

    def execute(self, plan: Plan) -> Any:
        """Run the stage."""
        if self.call is not None:
            return self.call(plan)
        return getattr(self.face, f"run_{self.name}")(*self.args(self, plan))


#: Every stage of ``run``, in the order they run (filled by :func:`register` below).
REGISTRY: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    """Add a stage at the end of the order."""
    if spec.name in REGISTRY:
        raise ValueError(f"stage {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


# generate ------------------------------------------------------------------------------------------


def _execution(src: ConfigSource, top: dict[str, Any]) -> dict[str, Any]:
    """Take the execution keys (``engine``, ``ray-address``, ``job-index``, ``num-jobs``) out of the top level: they
    are generate's and score's (:class:`~imagenet_plus.pipeline.engines.ExecutionConfig`), not a generate setting."""
    execution = {k: _pop(top, k) for k in list(top) if field_name(k) in EXECUTION_KEYS}
    return {"execution": load_config(ExecutionConfig, execution, None, str(src.path))}


def _run_generate(plan: Plan) -> None:
    result = generate.run_generate(plan.generate, plan.run, execution=plan.execution)
    if not result.done:
        share = job_share(plan.execution)
        if share is not None:  # this job's shards are made; the stages after generate need every job's
            raise UserError(f"generate made job {share[0]}'s shards of {plan.run} ({share[1]} jobs); the other jobs' "
                            "are not all done: run the stages after generate once every job finished")
        raise UserError(f"generate did not finish every shard of {plan.run}: run the same command again")


def _run_score(plan: Plan) -> Any:
    return score.run_score(plan.run, plan.score, execution=plan.execution)


register(StageSpec("generate", generate, "GenerateConfig", call=_run_generate, all_ranks=True, section=None,
                   prepare=_execution))
register(StageSpec("score", score, "ScoreConfig", call=_run_score, all_ranks=True))
register(StageSpec("diagnose", diagnose, "DiagnoseConfig", optional=True))


# select ----------------------------------------------------------------------------------------


def _inline_thresholds(src: ConfigSource, sel: dict[str, Any]) -> dict[str, Any]:
    """Take ``thresholds`` out of the select section when it is a mapping (validated); check a file path."""
    raw = sel.get("thresholds")
    if isinstance(raw, dict):
        where = src.where("select.thresholds")
        inline = {field_name(k): v for k, v in _pop(sel, "thresholds").items()}
        load_config(select.Thresholds, inline, None, where)
        return {"thresholds": inline}
    if raw is not None and not location(str(raw)).is_file():
        raise ConfigError(f"{src.where('select')}: thresholds file not found: {raw}")
    return {"thresholds": None}


def _select_args(spec: StageSpec, plan: Plan) -> tuple[Any, ...]:
    """``(RUN, config)``, inline thresholds written to ``RUN/thresholds.yaml`` (only when they changed, so the
    file's identity, an input of select, changes only then) and named by the config."""
    cfg = plan.select
    if plan.thresholds is not None:
        import yaml

        th_file = RunPaths(plan.run).thresholds_yaml
        text = yaml.safe_dump(plan.thresholds, sort_keys=True).encode()
        if not th_file.is_file() or th_file.read_bytes() != text:
            write_bytes_atomic(th_file, text)
        cfg = replace(cfg, thresholds=str(th_file))
    return (plan.run, cfg)


register(StageSpec("select", select, "SelectConfig", args=_select_args, prepare=_inline_thresholds))


# release, report ---------------------------------------------------------------------------------


def _release_out(src: ConfigSource, rel: dict[str, Any]) -> dict[str, Any]:
    out = _pop(rel, "out")
    if out is not None and not isinstance(out, str):
        raise ConfigError(f"{src.where('release')}: key 'out' must be a folder path, got {out!r}")
    return {"release_out": location(out) if out else src.run / DEFAULT_RELEASE}


def _release_args(spec: StageSpec, plan: Plan) -> tuple[Any, ...]:
    return (plan.run, plan.release_out, plan.release)


register(StageSpec("release", release, "ReleaseConfig", args=_release_args, prepare=_release_out))
register(StageSpec("report", report, "ReportConfig"))


# evaluate (optional: runs when ``evaluate.test`` names a real test set) -----------------------------


def _evaluate_defaults(src: ConfigSource, ev: dict[str, Any]) -> dict[str, Any]:
    if not _has(ev, "test"):
        raise ConfigError(f"{src.where('evaluate')}: missing required setting 'test' (real images in class-id "
                          "subfolders); remove the evaluate section to skip evaluation")
    defaults = {"train": str(src.earlier["release_out"]), "out": str(src.run / DEFAULT_EVAL)}
    for key, value in defaults.items():
        if not any(field_name(k) == key for k in ev):
            ev[key] = value
    return {}


def _evaluate_folders(src: ConfigSource, cfg: Any) -> None:
    if not location(cfg.test).is_dir():
        raise ConfigError(f"{src.where('evaluate')}: test folder not found: {cfg.test}")
    if cfg.finetune and not location(cfg.finetune).is_dir():
        raise ConfigError(f"{src.where('evaluate')}: finetune folder not found: {cfg.finetune}")


def _evaluate_inputs(plan: Plan) -> StageInputs:
    """evaluate's inputs, declared by ``run``: its settings and the release it trains on; ``eval.json`` its output."""
    return StageInputs("evaluate", settings=config_to_dict(plan.evaluate), upstream=("release",),
                       outputs=(Path(plan.evaluate.out) / EVAL_JSON,))


register(StageSpec("evaluate", evaluate, "EvaluateConfig", args=lambda spec, plan: (plan.evaluate,),
                   inputs=_evaluate_inputs, all_ranks=True, optional=True, prepare=_evaluate_defaults,
                   check=_evaluate_folders, marked_by_run=True))


# publish (optional: runs when ``publish.repo-id`` is set) --------------------------------------------


def _require_repo_id(src: ConfigSource, pub: dict[str, Any]) -> dict[str, Any]:
    if not _has(pub, "repo_id"):
        raise ConfigError(f"{src.where('publish')}: missing required setting 'repo-id' (USER/NAME); "
                          "remove the publish section to skip publishing")
    return {}


def _check_token(src: ConfigSource, cfg: Any) -> None:
    if cfg.dry_run:
        return
    from huggingface_hub import get_token

    if not get_token():
        raise UserError(f"{src.where('publish')}: no Hugging Face token (set HF_TOKEN or run 'hf auth login'), "
                        "checked before any work starts")


register(StageSpec("publish", publish, "PublishConfig", args=lambda spec, plan: (plan.release_out, plan.publish),
                   inputs=lambda plan: None, optional=True, prepare=_require_repo_id, check=_check_token))

#: Stages in the order they run.
STAGES = tuple(REGISTRY)
#: Stages that every process of a multi-process launch takes part in (the others run on the main process).
ALL_RANK_STAGES = tuple(name for name, spec in REGISTRY.items() if spec.all_ranks)


# ------------------------------------------------------------------------------------------------
# Loading a run config


def load_plan(config_path: str | Path, out: str | Path) -> Plan:
    """Read and validate every stage's settings from the run config, stage by stage in the registry's order.

    Raises:
        UserError: a malformed file, an unknown key, a bad value, or a missing required setting, named
            as ``FILE: section``.
    """
    path = Path(config_path)
    top, sections = split_config_file(path)
    options = next((top.pop(k) for k in list(top) if field_name(k) == "storage_options"), None)
    if options is not None and not os.environ.get(STORAGE_OPTIONS_ENV):  # --storage-options (or the variable) wins
        set_storage_options(options, f"{path}: storage-options")
    run = location(out)
    if not is_remote(run) and run.exists() and not run.is_dir():
        raise UserError(f"--out {run} is a file, not a run directory")
    values: dict[str, Any] = {}
    for spec in REGISTRY.values():
        src = ConfigSource(path, run, dict(top), {k: dict(v) for k, v in sections.items()}, dict(values))
        values.update(spec.load(src))
    return Plan(run, values)


# ------------------------------------------------------------------------------------------------
# Telling the other processes (files, never a collective) and the log


class MainProcessNotes:
    """The files through which the main process tells the others what it did with each stage.

    ``RUN/markers/run/{stage}`` holds ``running`` (an all-ranks stage the others must join), ``skipped`` or
    ``done``; ``RUN/pipeline.failed`` holds the main process's error. The main process clears them when a
    launch starts (before the one start-up barrier), so notes of an earlier launch never count.
    """

    def __init__(self, paths: RunPaths, poll: float = 2.0) -> None:
        self.folder = paths.markers / RUN_MARKERS
        self.failed = paths.pipeline_failed
        self.poll = poll

    def clear(self) -> None:
        remove_tree(self.folder)
        self.failed.unlink(missing_ok=True)

    def tell(self, stage: str, word: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / stage, f"{word}\n".encode())

    def fail(self, stage: str, exc: BaseException) -> None:
        """Tell the others that ``stage`` failed on the main process, and why (first line: the stage)."""
        message = exc.message if isinstance(exc, UserError) else type(exc).__name__
        write_bytes_atomic(self.failed, f"{stage}\n{message}\n".encode())

    def wait(self, stage: str, words: tuple[str, ...]) -> str:
        """Poll until the main process said one of ``words`` about ``stage``.

        Raises:
            UserError: the main process failed (its message).
        """
        note = self.folder / stage
        while True:
            if self.failed.is_file():
                failed_stage, _, reason = self.failed.read_text(encoding="utf-8").strip().partition("\n")
                raise UserError(f"stage {failed_stage} failed on the main process: {reason}")
            word = note.read_text(encoding="utf-8").strip() if note.is_file() else ""
            if word in words:
                return word
            time.sleep(self.poll)


def _log_outcome(paths: RunPaths, stage: str, outcome: str | None, seconds: float = 0.0) -> None:
    """Record what this ``run`` did with a stage in ``RUN/pipeline.json`` (None: not configured, dropped)."""
    try:
        stages = dict(json.loads(paths.pipeline_json.read_text(encoding="utf-8"))["stages"])
    except (OSError, ValueError, KeyError, TypeError):
        stages = {}
    if outcome is None:
        if stages.pop(stage, None) is None:
            return
    else:
        stages[stage] = {"outcome": outcome, "seconds": round(seconds, 2),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(paths.pipeline_json, {"stages": stages})


# ------------------------------------------------------------------------------------------------
# Running


def _launch() -> tuple[int, int]:
    """(rank, world size) set by ``torchrun`` / ``accelerate launch`` (0, 1 for a plain process)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _lead(plan: Plan, spec: StageSpec, notes: MainProcessNotes, world_size: int) -> str:
    """The main process: skip the stage when it is current, else run it; tell the others."""
    paths = RunPaths(plan.run)
    several = world_size > 1
    inputs = spec.stage_inputs(plan)
    if inputs is not None and is_current(paths, inputs):
        log.info(f"run: {spec.name}: already done, skipped")
        if several:
            notes.tell(spec.name, SKIPPED)
        _log_outcome(paths, spec.name, SKIPPED)
        return "skipped"
    if inputs is not None:
        changed = ", ".join(what_changed(paths, inputs)) or "an output is missing"
        log.debug(f"run: {spec.name}: not current ({changed})")
    if several and spec.all_ranks:
        notes.tell(spec.name, RUNNING)
    log.info(f"run: {spec.name}: running" + (f" ({world_size} processes)" if several and spec.all_ranks else ""))
    start = time.perf_counter()
    spec.execute(plan)
    if spec.marked_by_run and inputs is not None:
        mark_current(paths, inputs)
    seconds = time.perf_counter() - start
    if several and not spec.all_ranks:
        notes.tell(spec.name, DONE)
    _log_outcome(paths, spec.name, "ran", seconds)
    if inputs is not None and not spec.marked_by_run and not is_current(paths, spec.stage_inputs(plan)):
        log.warning(f"run: {spec.name}: finished without recording itself as current; it will run again")
    log.info(f"run: {spec.name}: done in {seconds:.1f}s")
    return "ran"


def _follow(plan: Plan, spec: StageSpec, notes: MainProcessNotes) -> str:
    """Another process: join an all-ranks stage the main process runs; wait for it to finish a main-only one."""
    if spec.all_ranks:
        if notes.wait(spec.name, (RUNNING, SKIPPED)) == SKIPPED:
            return "skipped"
        spec.execute(plan)
        return "ran"
    return "skipped" if notes.wait(spec.name, (SKIPPED, DONE)) == SKIPPED else "ran on the main process"


def run_all(config_path: str | Path, out: str | Path) -> dict[str, str]:
    """Run every configured stage in order, skipping the current ones (see the module docstring).

    Under ``accelerate launch -m imagenet_plus run`` (or torchrun), every process takes part in the
    stages marked ``all_ranks`` (generate, score, evaluate); the others run on the main process. The main
    process alone decides which stages run (so the processes cannot disagree) and tells the others through
    files (:class:`MainProcessNotes`); they wait on those files, never in a collective.

    Args:
        config_path: the run config (generate keys + stage sections).
        out: the run folder.

    Returns:
        ``{stage: "ran" | "skipped" | "not configured" | "ran on the main process"}``.

    Raises:
        UserError: a config error (before any work), or the first stage error.
    """
    plan = load_plan(config_path, out)
    rank, world_size = _launch()
    notes = MainProcessNotes(RunPaths(plan.run))
    if rank == 0:
        check_run_folder(plan.run)  # a folder that is not a run is never written nor cleaned
        with storage_errors(plan.run):
            plan.run.mkdir(parents=True, exist_ok=True)
    with folder_lock(plan.run):  # rank 0 holds RUN/.lock for the whole pipeline; its stages take it again
        if rank == 0:
            notes.clear()
        if world_size > 1:
            init_dist().barrier()  # nobody reads the run folder before the main process has cleaned it
        return run_stages(plan, rank, world_size, notes)


def run_stages(plan: Plan, rank: int, world_size: int, notes: MainProcessNotes) -> dict[str, str]:
    """Every stage of ``plan`` in order, as process ``rank`` of ``world_size`` (see :func:`run_all`)."""
    main = rank == 0
    paths = RunPaths(plan.run)
    outcome: dict[str, str] = {}
    for name, spec in REGISTRY.items():
        if plan.values.get(name) is None:
            outcome[name] = "not configured"
            if main:
                _log_outcome(paths, name, None)
        elif main:
            try:
                outcome[name] = _lead(plan, spec, notes, world_size)
            except BaseException as exc:
                if world_size > 1:
                    notes.fail(name, exc)  # the others stop waiting, with the same message
                raise
        else:
            outcome[name] = _follow(plan, spec, notes)
    if main:
        release_out = plan.values.get("release_out")
        log.info(f"run: finished: {plan.run} (report: {paths.report_index}, release: {release_out})")
    return outcome
