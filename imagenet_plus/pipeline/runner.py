"""The one-command pipeline: ``imagenet-plus run --config CFG --out RUN``.

Input: a YAML config whose top-level keys are ``generate``'s flags and whose sections ``score:``,
``diagnose:``, ``select:``, ``release:``, ``report:``, ``evaluate:`` and ``publish:`` hold the flags of
those stages. Output: the run folder RUN (``generated/``, ``scores/``, ``selection.*``, ``report/``,
and ``pipeline.json``, the record of finished stages), the release folder (``release.out``, default
``RUN/release``), the evaluation folder (``evaluate.out``, default ``RUN/eval``) and, when
``publish.repo-id`` is set, the dataset repo on the Hub.

Order: generate → score (→ diagnose when a ``diagnose:`` section is given) → select → release → report
(→ evaluate when ``evaluate.test`` names a real test set, → publish when ``publish.repo-id`` is set).
Every setting of every stage is validated before any work starts, so a typo in the last section fails
at once, as one line naming ``FILE: section`` and the key.

The stages are entries of :data:`REGISTRY` (as torch-fidelity's registry does for feature extractors):
each :class:`StageSpec` names its config loader, its run function, the check that its outputs are still
there and whether every process of a multi-process launch takes part. Adding a stage is one
``register(StageSpec(...))`` call at its place in the order (plus its section name in
``config.STAGE_SECTIONS``, which a test keeps equal to the registry's sections).

Skipping and resuming: a stage is skipped when ``RUN/pipeline.json`` records it as finished with the
same settings (its own and those of every stage before it) and its outputs are there. A stage that is
not finished is called again, and every stage resumes by itself (generate and score skip finished
shards, select/report rewrite their small outputs atomically, release is a no-op for the same
inputs, publish's upload resumes), so a ``run`` killed at any point finishes when started again.
Changing a stage's settings re-runs that stage and the ones after it; a stage that is not configured
does not enter the chain, so adding an optional section later re-runs only the stages after it.

``select.thresholds`` may be a file path or an inline mapping of thresholds (written to
``RUN/thresholds.yaml`` for the select stage). Relative paths are relative to the current directory.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract import PIPELINE_FAILED, ReleasePaths, RunPaths
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import config_from_mapping, config_to_dict, field_name, stable_hash

#: Written by the main process when a stage fails under a multi-process launch (the others stop waiting).
FAILED_FILE = PIPELINE_FAILED
#: Default release folder (inside RUN) and evaluation folder.
DEFAULT_RELEASE = "release"
DEFAULT_EVAL = "eval"


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

    def settings(self, stage: str) -> Any:
        """The JSON-able settings of one stage (what its record in pipeline.json is hashed from), None if off."""
        return REGISTRY[stage].settings(self)


@dataclass(frozen=True)
class ConfigSource:
    """What a stage's loader reads: the config file, its sections, the run folder and earlier loaders' values."""

    path: Path
    run: Path
    sections: Mapping[str, dict[str, Any]]
    earlier: Mapping[str, Any]

    def where(self, section: str) -> str:
        """``FILE: section``, the prefix of every error about that section."""
        return f"{self.path}: {section}"

    def build(self, cls: Any, section: str, mapping: Mapping[str, Any] | None = None) -> Any:
        """A config dataclass from a section (or ``mapping``), with ``FILE: section`` in every error."""
        return _build(cls, dict(self.sections.get(section, {}) if mapping is None else mapping), self.where(section))


def _pop(section: dict[str, Any], key: str) -> Any:
    """Remove ``key`` (written with ``-`` or ``_``) from a section and return its value."""
    for k in list(section):
        if field_name(k) == field_name(key):
            return section.pop(k)
    return None


def _has(section: Mapping[str, Any], key: str) -> bool:
    return any(field_name(k) == field_name(key) and section[k] not in (None, "") for k in section)


def _build(cls: Any, mapping: dict[str, Any], source: str) -> Any:
    """``config_from_mapping``, with the source (``FILE: section``) in every error, range checks included."""
    try:
        return config_from_mapping(cls, mapping, source)
    except UserError as exc:
        if exc.message.startswith(source):
            raise
        raise UserError(f"{source}: {exc.message}") from None


def _config_settings(name: str) -> Callable[[Plan], Any]:
    """The default settings of a stage: its config as a dict (None when not configured)."""

    def settings(plan: Plan) -> Any:
        cfg = plan.values.get(name)
        return None if cfg is None else config_to_dict(cfg)

    return settings


# ------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class StageSpec:
    """One stage of ``run``.

    Attributes:
        name: the stage (its record in pipeline.json; also its config section unless ``section`` says otherwise).
        load: reads and validates its settings: ``ConfigSource`` → plan values (``{name: None}`` when off).
        run: runs it: ``Plan`` → extra facts recorded in pipeline.json. Looks its module function up when
            called, so tests can replace it.
        outputs_present: ``(Plan, its pipeline.json entry)`` → whether its outputs are still there.
        settings: ``Plan`` → the JSON-able settings its chain hash covers (default: its config as a dict).
        all_ranks: every process of a multi-process launch takes part (else the main process runs it).
        section: its config file section (None: top-level keys, as for generate).
    """

    name: str
    load: Callable[[ConfigSource], dict[str, Any]]
    run: Callable[[Plan], dict[str, Any]]
    outputs_present: Callable[[Plan, dict[str, Any]], bool]
    settings: Callable[[Plan], Any] | None = None
    all_ranks: bool = False
    section: str | None = ""

    def __post_init__(self) -> None:
        if self.settings is None:
            object.__setattr__(self, "settings", _config_settings(self.name))
        if self.section == "":
            object.__setattr__(self, "section", self.name)


#: Every stage of ``run``, in the order they run (filled by :func:`register` below).
REGISTRY: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    """Add a stage at the end of the order."""
    if spec.name in REGISTRY:
        raise ValueError(f"stage {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


# generate --------------------------------------------------------------------------------------


def _load_generate(src: ConfigSource) -> dict[str, Any]:
    from imagenet_plus.generate.config import load_generate_config

    try:
        return {"generate": load_generate_config(src.path)}
    except UserError as exc:
        raise UserError(exc.message if str(src.path) in exc.message else f"{src.path}: {exc.message}") from None


def _run_generate(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.generate import stage as generate

    result = generate.run_generate(plan.generate, plan.run)
    if not result.done:
        raise UserError(f"generate did not finish every shard of {plan.run}: run the same command again")
    return {"shards": result.num_shards}


def _generate_done(plan: Plan, entry: dict[str, Any]) -> bool:
    from imagenet_plus.contract import PARTIAL_SUFFIX, done_shards

    generated = RunPaths(plan.run).generated
    return len(done_shards(generated)) == entry.get("shards", -1) and not any(generated.glob(f"*{PARTIAL_SUFFIX}"))


register(StageSpec("generate", _load_generate, _run_generate, _generate_done,
                   settings=lambda plan: config_to_dict(plan.generate.resolved()), all_ranks=True, section=None))


# score -----------------------------------------------------------------------------------------


def _load_score(src: ConfigSource) -> dict[str, Any]:
    from imagenet_plus.score.stage import ScoreConfig

    return {"score": src.build(ScoreConfig, "score")}


def _run_score(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.score import stage as score

    score.run_score(plan.run, plan.score)
    return {}


def _score_done(plan: Plan, entry: dict[str, Any]) -> bool:
    """Done when summary.json covers exactly the finished generated shards (a top-up adds shards to score)."""
    from imagenet_plus.score import stage as score

    return score.is_finished(plan.run, plan.score)


register(StageSpec("score", _load_score, _run_score, _score_done, all_ranks=True))


# diagnose (optional: runs when the config has a ``diagnose:`` section) ------------------------------


def _load_diagnose(src: ConfigSource) -> dict[str, Any]:
    if "diagnose" not in src.sections:
        return {"diagnose": None}
    from imagenet_plus.diagnose.stage import DiagnoseConfig

    return {"diagnose": src.build(DiagnoseConfig, "diagnose")}


def _run_diagnose(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.diagnose import stage as diagnose

    summary = diagnose.run_diagnose(plan.run, plan.diagnose)
    return {"verdicts": summary.get("verdict_counts")}


def _newer_or_same(output: Path, source: Path) -> bool:
    """``output`` exists and was written after ``source`` (or ``source`` is absent)."""
    if not output.is_file():
        return False
    return not source.is_file() or output.stat().st_mtime_ns >= source.stat().st_mtime_ns


def _diagnose_done(plan: Plan, entry: dict[str, Any]) -> bool:
    """Done when the diagnosis was written after the current scores (a re-score, e.g. after a top-up, redoes it)."""
    paths = RunPaths(plan.run)
    return paths.diagnosis_parquet.is_file() and _newer_or_same(paths.diagnosis_json, paths.summary_json)


register(StageSpec("diagnose", _load_diagnose, _run_diagnose, _diagnose_done))


# select ----------------------------------------------------------------------------------------


def _inline_thresholds(src: ConfigSource, sel: dict[str, Any]) -> dict[str, Any] | None:
    """Take ``thresholds`` out of the select section when it is a mapping (validated); check a file path."""
    from imagenet_plus.select import Thresholds

    raw = sel.get("thresholds")
    if isinstance(raw, dict):
        inline = {field_name(k): v for k, v in _pop(sel, "thresholds").items()}
        if "source" in inline:
            raise UserError(f"{src.where('select.thresholds')}: unknown key 'source'")
        where = src.where("select.thresholds")
        _build(Thresholds, {**inline, "source": where}, where)
        return inline
    if raw is not None and not Path(str(raw)).is_file():
        raise UserError(f"{src.where('select')}: thresholds file not found: {raw}")
    return None


def _load_select(src: ConfigSource) -> dict[str, Any]:
    from imagenet_plus.select import SelectConfig

    sel = dict(src.sections.get("select", {}))
    inline = _inline_thresholds(src, sel)
    return {"select": src.build(SelectConfig, "select", sel), "thresholds": inline}


def _run_select(plan: Plan) -> dict[str, Any]:
    from dataclasses import replace

    from imagenet_plus.select import stage as select

    cfg = plan.select
    if plan.thresholds is not None:
        import yaml

        from imagenet_plus.io.atomic import write_bytes_atomic

        th_file = RunPaths(plan.run).thresholds_yaml
        write_bytes_atomic(th_file, yaml.safe_dump(plan.thresholds, sort_keys=True).encode())
        cfg = replace(cfg, thresholds=str(th_file))
    summary = select.run_select(plan.run, cfg)
    return {"kept": summary.num_kept}


def _select_done(plan: Plan, entry: dict[str, Any]) -> bool:
    """Done when the selection covers as many images as the current scores (a top-up adds images)."""
    import json

    paths = RunPaths(plan.run)
    if not (paths.selection_parquet.is_file() and paths.selection_json.is_file() and paths.summary_json.is_file()):
        return False
    try:
        scored = json.loads(paths.summary_json.read_text(encoding="utf-8")).get("num_images")
        selected = json.loads(paths.selection_json.read_text(encoding="utf-8")).get("num_scored")
    except (OSError, ValueError, AttributeError):
        return False
    return scored == selected


register(StageSpec("select", _load_select, _run_select, _select_done,
                   settings=lambda plan: {"config": config_to_dict(plan.select), "inline_thresholds": plan.thresholds}))


# release ---------------------------------------------------------------------------------------


def _load_release(src: ConfigSource) -> dict[str, Any]:
    from imagenet_plus.release.stage import ReleaseConfig

    rel = dict(src.sections.get("release", {}))
    out = _pop(rel, "out")
    if out is not None and not isinstance(out, str):
        raise UserError(f"{src.where('release')}: key 'out' must be a folder path, got {out!r}")
    return {"release": src.build(ReleaseConfig, "release", rel),
            "release_out": Path(out) if out else src.run / DEFAULT_RELEASE}


def _run_release(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.release import stage as release

    release.run_release(plan.run, plan.release_out, plan.release)
    return {"out": str(plan.release_out)}


def _release_done(plan: Plan, entry: dict[str, Any]) -> bool:
    """Done when the release was written after the current selection (a new selection re-releases)."""
    rel = ReleasePaths(plan.release_out)
    return rel.card.is_file() and _newer_or_same(rel.info_json, RunPaths(plan.run).selection_json)


register(StageSpec("release", _load_release, _run_release, _release_done,
                   settings=lambda plan: {"config": config_to_dict(plan.release), "out": str(plan.release_out)}))


# report ----------------------------------------------------------------------------------------


def _load_report(src: ConfigSource) -> dict[str, Any]:
    from imagenet_plus.report.stage import ReportConfig

    return {"report": src.build(ReportConfig, "report")}


def _run_report(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.report import stage as report

    return {"index": str(report.run_report(plan.run, plan.report))}


def _report_done(plan: Plan, entry: dict[str, Any]) -> bool:
    from imagenet_plus.report import stage as report

    return report.is_up_to_date(plan.run, plan.report)


register(StageSpec("report", _load_report, _run_report, _report_done))


# evaluate (optional: runs when ``evaluate.test`` names a real test set) -----------------------------


def _load_evaluate(src: ConfigSource) -> dict[str, Any]:
    if "evaluate" not in src.sections:
        return {"evaluate": None}
    from imagenet_plus.evaluate.stage import EvaluateConfig

    ev = src.sections["evaluate"]
    if not _has(ev, "test"):
        raise UserError(f"{src.where('evaluate')}: missing required setting 'test' (real images in class-id "
                        "subfolders); remove the evaluate section to skip evaluation")
    mapping = {"train": str(src.earlier["release_out"]), "out": str(src.run / DEFAULT_EVAL)}
    mapping.update({field_name(k): v for k, v in ev.items()})
    evaluate = src.build(EvaluateConfig, "evaluate", mapping)
    if not Path(evaluate.test).is_dir():
        raise UserError(f"{src.where('evaluate')}: test folder not found: {evaluate.test}")
    if evaluate.finetune and not Path(evaluate.finetune).is_dir():
        raise UserError(f"{src.where('evaluate')}: finetune folder not found: {evaluate.finetune}")
    return {"evaluate": evaluate}


def _run_evaluate(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.evaluate import stage as evaluate

    res = evaluate.run_evaluate(plan.evaluate)
    return {"accuracy": {k: v.get("accuracy") for k, v in res["results"].items()}}


def _evaluate_done(plan: Plan, entry: dict[str, Any]) -> bool:
    from imagenet_plus.contract import EVAL_JSON

    return (Path(plan.evaluate.out) / EVAL_JSON).is_file()


register(StageSpec("evaluate", _load_evaluate, _run_evaluate, _evaluate_done, all_ranks=True))


# publish (optional: runs when ``publish.repo-id`` is set) --------------------------------------------


def _check_token(src: ConfigSource) -> None:
    from huggingface_hub import get_token

    if not get_token():
        raise UserError(f"{src.where('publish')}: no Hugging Face token (set HF_TOKEN or run 'hf auth login'), "
                        "checked before any work starts")


def _load_publish(src: ConfigSource) -> dict[str, Any]:
    if "publish" not in src.sections:
        return {"publish": None}
    from imagenet_plus.publish.stage import PublishConfig

    if not _has(src.sections["publish"], "repo_id"):
        raise UserError(f"{src.where('publish')}: missing required setting 'repo-id' (USER/NAME); "
                        "remove the publish section to skip publishing")
    publish = src.build(PublishConfig, "publish")
    if not publish.dry_run:
        _check_token(src)
    return {"publish": publish}


def _run_publish(plan: Plan) -> dict[str, Any]:
    from imagenet_plus.publish import stage as publish

    return {"url": publish.run_publish(plan.release_out, plan.publish).splitlines()[0]}


register(StageSpec("publish", _load_publish, _run_publish, lambda plan, entry: True))  # nothing local to check

#: Stages in the order they run.
STAGES = tuple(REGISTRY)
#: Stages that every process of a multi-process launch takes part in (the others run on the main process).
ALL_RANK_STAGES = tuple(name for name, spec in REGISTRY.items() if spec.all_ranks)


# ------------------------------------------------------------------------------------------------
# Loading a run config


def _check_out(out: str | Path) -> Path:
    run = Path(out)
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run} is a file, not a run directory")
    return run


def _read_sections(path: Path) -> dict[str, dict[str, Any]]:
    """The stage sections of the config file (copies: loaders may pop keys)."""
    from imagenet_plus.pipeline.config import split_config_file

    _top, sections = split_config_file(path)
    return {k: dict(v) for k, v in sections.items()}


def load_plan(config_path: str | Path, out: str | Path) -> Plan:
    """Read and validate every stage's settings from the run config, stage by stage in the registry's order.

    Raises:
        UserError: a malformed file, an unknown key, a bad value, or a missing required setting, named
            as ``FILE: section``.
    """
    path = Path(config_path)
    run = _check_out(out)
    sections = _read_sections(path)
    values: dict[str, Any] = {}
    for spec in REGISTRY.values():
        values.update(spec.load(ConfigSource(path, run, sections, dict(values))))
    return Plan(run, values)


# ------------------------------------------------------------------------------------------------
# The record of finished stages


class PipelineState:
    """``RUN/pipeline.json``: for each finished stage, the hash of its settings chain and when it finished."""

    def __init__(self, run: Path) -> None:
        self.path = RunPaths(Path(run)).pipeline_json
        self.stages: dict[str, Any] = {}
        if self.path.is_file():
            import json

            try:
                self.stages = dict(json.loads(self.path.read_text(encoding="utf-8")).get("stages", {}))
            except (OSError, ValueError, AttributeError):
                self.stages = {}  # unreadable record: every stage is checked again (they all resume)

    def finished(self, stage: str, chain: str) -> bool:
        entry = self.stages.get(stage)
        return isinstance(entry, dict) and entry.get("hash") == chain

    def mark(self, stage: str, chain: str, seconds: float, **extra: Any) -> None:
        from imagenet_plus.io.atomic import write_json_atomic

        self.stages[stage] = {"hash": chain, "seconds": round(seconds, 2),
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        write_json_atomic(self.path, {"stages": self.stages})

    def forget(self, stage: str) -> None:
        from imagenet_plus.io.atomic import write_json_atomic

        if self.stages.pop(stage, None) is not None:
            write_json_atomic(self.path, {"stages": self.stages})


def outputs_present(plan: Plan, stage: str, entry: dict[str, Any]) -> bool:
    """Whether a finished stage's outputs are still there (a deleted output makes the stage run again)."""
    return REGISTRY[stage].outputs_present(plan, entry)


# ------------------------------------------------------------------------------------------------
# Running


def _log(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


def _run_stage(plan: Plan, stage: str) -> dict[str, Any]:
    """Call one stage's function (looked up at call time); returns extra facts for pipeline.json."""
    if stage not in REGISTRY:
        raise ValueError(f"unknown stage {stage}")
    return REGISTRY[stage].run(plan)


def _launch() -> tuple[int, int]:
    """(rank, world size) set by ``torchrun`` / ``accelerate launch`` (0, 1 for a plain process)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _wait_for_main(plan: Plan, stage: str, chain: str, poll: float = 2.0) -> None:
    """On a non-main process: wait (no collective, so no timeout) until the main process has finished ``stage``."""
    failed = RunPaths(plan.run).pipeline_failed
    while not PipelineState(plan.run).finished(stage, chain):
        if failed.is_file():
            raise UserError(f"stage {stage} failed on the main process: {failed.read_text(encoding='utf-8').strip()}")
        time.sleep(poll)


def _start(plan: Plan, main: bool, world_size: int) -> None:
    """The main process creates RUN and clears an old failure marker; every process then meets once."""
    if main:
        plan.run.mkdir(parents=True, exist_ok=True)
        RunPaths(plan.run).pipeline_failed.unlink(missing_ok=True)
    if world_size > 1:
        from imagenet_plus.pipeline.ranks import init_dist

        init_dist().barrier()  # nobody reads the run folder before the main process has cleaned it


def _execute(plan: Plan, stage: str, chain: str, main: bool, world_size: int) -> None:
    """Run one stage; record it in pipeline.json (main process), or leave a failure marker for the others."""
    if main:
        _log(f"{stage}: running" + (f" ({world_size} processes)" if REGISTRY[stage].all_ranks and world_size > 1
                                     else ""))
    start = time.perf_counter()
    try:
        extra = _run_stage(plan, stage)
    except BaseException as exc:
        if main and world_size > 1:
            message = exc.message if isinstance(exc, UserError) else type(exc).__name__
            RunPaths(plan.run).pipeline_failed.write_text(f"{message}\n", encoding="utf-8")
        raise
    seconds = time.perf_counter() - start
    if main:
        PipelineState(plan.run).mark(stage, chain, seconds, **extra)
        _log(f"{stage}: done in {seconds:.1f}s")


def run_all(config_path: str | Path, out: str | Path) -> dict[str, str]:
    """Run every configured stage in order, skipping the finished ones (see the module docstring).

    Under ``accelerate launch -m imagenet_plus run`` (or torchrun), every process takes part in the
    stages marked ``all_ranks`` (generate, score, evaluate); the others run on the main process while
    the other processes wait for its record in ``pipeline.json``.

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
    main = rank == 0
    _start(plan, main, world_size)
    chain = ""
    outcome: dict[str, str] = {}
    for stage, spec in REGISTRY.items():
        settings = plan.settings(stage)
        state = PipelineState(plan.run)
        if settings is None:
            outcome[stage] = "not configured"
            if main:
                state.forget(stage)
            continue
        chain = stable_hash([chain, stage, settings])
        if state.finished(stage, chain) and outputs_present(plan, stage, state.stages[stage]):
            if main:
                _log(f"{stage}: already done, skipped")
            outcome[stage] = "skipped"
        elif not main and not spec.all_ranks:
            _wait_for_main(plan, stage, chain)
            outcome[stage] = "ran on the main process"
        else:
            _execute(plan, stage, chain, main, world_size)
            outcome[stage] = "ran"
    if main:
        _log(f"finished: {plan.run} (report: {RunPaths(plan.run).report_index}, release: {plan.release_out})")
    return outcome
