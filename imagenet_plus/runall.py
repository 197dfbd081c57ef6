"""The one-command pipeline: ``imagenet-plus run --config CFG --out RUN``.

Input: a YAML config whose top-level keys are ``generate``'s flags and whose sections ``score:``,
``select:``, ``release:``, ``report:``, ``evaluate:`` and ``publish:`` hold the flags of those stages.
Output: the run folder RUN (``generated/``, ``scores/``, ``selection.*``, ``report/``, and
``pipeline.json``, the record of finished stages), the release folder (``release.out``, default
``RUN/release``), the evaluation folder (``evaluate.out``, default ``RUN/eval``) and, when
``publish.repo-id`` is set, the dataset repo on the Hub.

Order: generate → score → select → release → report (→ evaluate when ``evaluate.test`` names a real
test set, → publish when ``publish.repo-id`` is set). Every setting of every stage is validated
before any work starts, so a typo in the last section fails at once, as one line naming
``FILE: section`` and the key.

Skipping and resuming: a stage is skipped when ``RUN/pipeline.json`` records it as finished with the
same settings (its own and those of every stage before it) and its outputs are there. A stage that is
not finished is called again, and every stage resumes by itself (generate and score skip finished
shards, select/report rewrite their small outputs atomically, release is a no-op for the same
inputs, publish's upload resumes), so a ``run`` killed at any point finishes when started again.
Changing a stage's settings re-runs that stage and the ones after it.

``select.thresholds`` may be a file path or an inline mapping of thresholds (written to
``RUN/thresholds.yaml`` for the select stage). Relative paths are relative to the current directory.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.configio import config_from_mapping, config_to_dict, field_name, stable_hash
from imagenet_plus.errors import UserError

#: Stages in the order they run.
STAGES = ("generate", "score", "select", "release", "report", "evaluate", "publish")
#: The record of finished stages inside RUN.
PIPELINE_FILE = "pipeline.json"
#: Written by the main process when a stage fails under a multi-process launch (the others stop waiting).
FAILED_FILE = "pipeline.failed"
#: Stages that every process of a multi-process launch takes part in (the others run on the main process).
ALL_RANK_STAGES = ("generate", "score", "evaluate")
#: Default release folder (inside RUN) and evaluation folder.
DEFAULT_RELEASE = "release"
DEFAULT_EVAL = "eval"


@dataclass(frozen=True)
class Plan:
    """Every stage's settings, validated; ``evaluate``/``publish`` are None when not configured."""

    run: Path
    generate: Any  # GenerateConfig
    score: Any  # ScoreConfig
    select: Any  # SelectConfig
    thresholds: dict[str, Any] | None  # inline thresholds (written to RUN/thresholds.yaml)
    release_out: Path
    release: Any  # ReleaseConfig
    report: Any  # ReportConfig
    evaluate: Any | None  # EvaluateConfig
    publish: Any | None  # PublishConfig

    def settings(self, stage: str) -> Any:
        """The JSON-able settings of one stage (what its record in pipeline.json is hashed from)."""
        if stage == "generate":
            return config_to_dict(self.generate.resolved())
        if stage == "select":
            return {"config": config_to_dict(self.select), "inline_thresholds": self.thresholds}
        if stage == "release":
            return {"config": config_to_dict(self.release), "out": str(self.release_out)}
        cfg = getattr(self, stage)
        return None if cfg is None else config_to_dict(cfg)


def _pop(section: dict[str, Any], key: str) -> Any:
    """Remove ``key`` (written with ``-`` or ``_``) from a section and return its value."""
    for k in list(section):
        if field_name(k) == field_name(key):
            return section.pop(k)
    return None


def _has(section: dict[str, Any], key: str) -> bool:
    return any(field_name(k) == field_name(key) and section[k] not in (None, "") for k in section)


def _build(cls: Any, mapping: dict[str, Any], source: str) -> Any:
    """``config_from_mapping``, with the source (``FILE: section``) in every error, range checks included."""
    try:
        return config_from_mapping(cls, mapping, source)
    except UserError as exc:
        if exc.message.startswith(source):
            raise
        raise UserError(f"{source}: {exc.message}") from None


def load_plan(config_path: str | Path, out: str | Path) -> Plan:
    """Read and validate every stage's settings from the run config.

    Raises:
        UserError: a malformed file, an unknown key, a bad value, or a missing required setting, named
            as ``FILE: section``.
    """
    from imagenet_plus.config import load_generate_config, split_config_file
    from imagenet_plus.evaluate import EvaluateConfig
    from imagenet_plus.publish import PublishConfig
    from imagenet_plus.release import ReleaseConfig
    from imagenet_plus.report import ReportConfig
    from imagenet_plus.score import ScoreConfig
    from imagenet_plus.select import SelectConfig, Thresholds

    path = Path(config_path)
    run = Path(out)
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run} is a file, not a run directory")
    _top, sections = split_config_file(path)
    try:
        generate = load_generate_config(path)
    except UserError as exc:
        raise UserError(exc.message if str(path) in exc.message else f"{path}: {exc.message}") from None
    sections = {k: dict(v) for k, v in sections.items()}

    score = _build(ScoreConfig, sections.get("score", {}), f"{path}: score")

    sel = sections.get("select", {})
    inline = None
    raw_th = sel.get("thresholds")
    if isinstance(raw_th, dict):
        inline = {field_name(k): v for k, v in _pop(sel, "thresholds").items()}
        if "source" in inline:
            raise UserError(f"{path}: select.thresholds: unknown key 'source'")
        where = f"{path}: select.thresholds"
        _build(Thresholds, {**inline, "source": where}, where)
    elif raw_th is not None and not Path(str(raw_th)).is_file():
        raise UserError(f"{path}: select: thresholds file not found: {raw_th}")
    select = _build(SelectConfig, sel, f"{path}: select")

    rel = sections.get("release", {})
    rel_out = _pop(rel, "out")
    if rel_out is not None and not isinstance(rel_out, str):
        raise UserError(f"{path}: release: key 'out' must be a folder path, got {rel_out!r}")
    release_out = Path(rel_out) if rel_out else run / DEFAULT_RELEASE
    release = _build(ReleaseConfig, rel, f"{path}: release")

    report = _build(ReportConfig, sections.get("report", {}), f"{path}: report")

    evaluate = None
    if "evaluate" in sections:
        ev = sections["evaluate"]
        if not _has(ev, "test"):
            raise UserError(
                f"{path}: evaluate: missing required setting 'test' (real images in class-id subfolders); "
                "remove the evaluate section to skip evaluation"
            )
        mapping = {"train": str(release_out), "out": str(run / DEFAULT_EVAL)}
        mapping.update({field_name(k): v for k, v in ev.items()})
        evaluate = _build(EvaluateConfig, mapping, f"{path}: evaluate")
        if not Path(evaluate.test).is_dir():
            raise UserError(f"{path}: evaluate: test folder not found: {evaluate.test}")
        if evaluate.finetune and not Path(evaluate.finetune).is_dir():
            raise UserError(f"{path}: evaluate: finetune folder not found: {evaluate.finetune}")

    publish = None
    if "publish" in sections:
        pub = sections["publish"]
        if not _has(pub, "repo_id"):
            raise UserError(
                f"{path}: publish: missing required setting 'repo-id' (USER/NAME); "
                "remove the publish section to skip publishing"
            )
        publish = _build(PublishConfig, pub, f"{path}: publish")
        if not publish.dry_run:
            from huggingface_hub import get_token

            if not get_token():
                raise UserError(
                    f"{path}: publish: no Hugging Face token (set HF_TOKEN or run 'hf auth login'), "
                    "checked before any work starts"
                )
    return Plan(run, generate, score, select, inline, release_out, release, report, evaluate, publish)


# ------------------------------------------------------------------------------------------------
# The record of finished stages


class PipelineState:
    """``RUN/pipeline.json``: for each finished stage, the hash of its settings chain and when it finished."""

    def __init__(self, run: Path) -> None:
        self.path = run / PIPELINE_FILE
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
        from imagenet_plus.shards import write_json_atomic

        self.stages[stage] = {"hash": chain, "seconds": round(seconds, 2),
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        write_json_atomic(self.path, {"stages": self.stages})

    def forget(self, stage: str) -> None:
        from imagenet_plus.shards import write_json_atomic

        if self.stages.pop(stage, None) is not None:
            write_json_atomic(self.path, {"stages": self.stages})


def outputs_present(plan: Plan, stage: str, entry: dict[str, Any]) -> bool:
    """Whether a finished stage's outputs are still there (a deleted output makes the stage run again)."""
    from imagenet_plus.contract import RunPaths, done_shards

    paths = RunPaths(plan.run)
    if stage == "generate":
        return len(done_shards(paths.generated)) == entry.get("shards", -1) and not any(
            paths.generated.glob("*.partial"))
    if stage == "score":
        return paths.summary_json.is_file()
    if stage == "select":
        return paths.selection_parquet.is_file() and paths.selection_json.is_file()
    if stage == "release":
        return (plan.release_out / "_info.json").is_file() and (plan.release_out / "README.md").is_file()
    if stage == "report":
        from imagenet_plus.report import is_up_to_date

        return is_up_to_date(plan.run, plan.report)
    if stage == "evaluate":
        return (Path(plan.evaluate.out) / "eval.json").is_file()
    return True  # publish: nothing local to check


def _log(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


def _run_stage(plan: Plan, stage: str) -> dict[str, Any]:
    """Call one stage's function (looked up at call time); returns extra facts for pipeline.json."""
    if stage == "generate":
        from imagenet_plus import generate

        result = generate.run_generate(plan.generate, plan.run)
        if not result.done:
            raise UserError(f"generate did not finish every shard of {plan.run}: run the same command again")
        return {"shards": result.num_shards}
    if stage == "score":
        from imagenet_plus import score

        score.run_score(plan.run, plan.score)
        return {}
    if stage == "select":
        from dataclasses import replace

        from imagenet_plus import select

        cfg = plan.select
        if plan.thresholds is not None:
            import yaml

            from imagenet_plus.shards import write_bytes_atomic

            th_file = plan.run / "thresholds.yaml"
            write_bytes_atomic(th_file, yaml.safe_dump(plan.thresholds, sort_keys=True).encode())
            cfg = replace(cfg, thresholds=str(th_file))
        summary = select.run_select(plan.run, cfg)
        return {"kept": summary.get("num_kept")}
    if stage == "release":
        from imagenet_plus import release

        release.run_release(plan.run, plan.release_out, plan.release)
        return {"out": str(plan.release_out)}
    if stage == "report":
        from imagenet_plus import report

        return {"index": str(report.run_report(plan.run, plan.report))}
    if stage == "evaluate":
        from imagenet_plus import evaluate

        res = evaluate.run_evaluate(plan.evaluate)
        return {"accuracy": {k: v.get("accuracy") for k, v in res["results"].items()}}
    if stage == "publish":
        from imagenet_plus import publish

        return {"url": publish.run_publish(plan.release_out, plan.publish).splitlines()[0]}
    raise ValueError(f"unknown stage {stage}")


def _launch() -> tuple[int, int]:
    """(rank, world size) set by ``torchrun`` / ``accelerate launch`` (0, 1 for a plain process)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _wait_for_main(plan: Plan, stage: str, chain: str, poll: float = 2.0) -> None:
    """On a non-main process: wait (no collective, so no timeout) until the main process has finished ``stage``."""
    failed = plan.run / FAILED_FILE
    while not PipelineState(plan.run).finished(stage, chain):
        if failed.is_file():
            raise UserError(f"stage {stage} failed on the main process: {failed.read_text(encoding='utf-8').strip()}")
        time.sleep(poll)


def run_all(config_path: str | Path, out: str | Path) -> dict[str, str]:
    """Run every configured stage in order, skipping the finished ones (see the module docstring).

    Under ``accelerate launch -m imagenet_plus run`` (or torchrun), every process takes part in
    generate, score and evaluate; select, release, report and publish run on the main process while
    the others wait for its record in ``pipeline.json``.

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
    if main:
        plan.run.mkdir(parents=True, exist_ok=True)
        (plan.run / FAILED_FILE).unlink(missing_ok=True)
    if world_size > 1:
        from imagenet_plus.distributed import init_dist

        init_dist().barrier()  # nobody reads the run folder before the main process has cleaned it
    chain = ""
    outcome: dict[str, str] = {}
    for stage in STAGES:
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
            continue
        if not main and stage not in ALL_RANK_STAGES:
            _wait_for_main(plan, stage, chain)
            outcome[stage] = "ran on the main process"
            continue
        if main:
            _log(f"{stage}: running" + (f" ({world_size} processes)" if stage in ALL_RANK_STAGES and world_size > 1
                                         else ""))
        start = time.perf_counter()
        try:
            extra = _run_stage(plan, stage)
        except BaseException as exc:
            if main and world_size > 1:
                message = exc.message if isinstance(exc, UserError) else type(exc).__name__
                (plan.run / FAILED_FILE).write_text(f"{message}\n", encoding="utf-8")
            raise
        seconds = time.perf_counter() - start
        if main:
            state.mark(stage, chain, seconds, **extra)
            _log(f"{stage}: done in {seconds:.1f}s")
        outcome[stage] = "ran"
    if main:
        _log(f"finished: {plan.run} (report: {plan.run / 'report' / 'index.html'}, release: {plan.release_out})")
    return outcome
