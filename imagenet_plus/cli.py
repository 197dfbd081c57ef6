"""The ``imagenet-plus`` command line: a thin table from subcommand to library function.

Each command imports its stage module lazily, so ``imagenet-plus --help`` stays instant; only the light
settings modules (``<stage>/config.py``) are imported at start-up, because a command's options come from its
config dataclass (``@with_config_options(XConfig)``: one ``--flag`` per ``setting(...)`` field). A command
keeps only its own options in its signature (positional ``RUN``/``SPEC`` arguments with ``metavar`` set so
the usage line names them, ``--config``, ``--out``, switches such as ``--top-up``) and loads its config with
``load_config`` (or the stage's loader). A :class:`~imagenet_plus.errors.UserError` from any stage is printed
as one line (``error: …``) on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.errors import UserError
from imagenet_plus.evaluate.config import EvaluateConfig
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.io.storage import set_storage_options, storage_error
from imagenet_plus.pipeline.config import load_config, split_config_file, with_config_options
from imagenet_plus.pipeline.engines import ExecutionConfig, load_execution, split_execution
from imagenet_plus.pipeline.log import report_error, setup_logging
from imagenet_plus.publish.config import PublishConfig
from imagenet_plus.release.config import ReleaseConfig
from imagenet_plus.report.config import ReportConfig
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.select.config import SelectConfig


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer, which turns ``KeyboardInterrupt`` into a silent exit 130."""


class _Command(TyperCommand):
    """A command whose usage line names a positional argument by its metavar as click does (``RUN``, ``[REL]``),
    not in typer 0.29's braces (``{RUN}``): set ``metavar="RUN"`` on the ``typer.Argument``. Ctrl-C while it runs
    reaches :func:`main` (as :class:`_Interrupted`), which prints the one line telling how to resume."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.+)\}((?:\.\.\.)?)$", r"\1\2", p) for p in super().collect_usage_pieces(ctx)]

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


class _App(typer.Typer):
    """Every command of the app is a :class:`_Command`."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    name="imagenet-plus",
    help="Build a synthetic, quality-filtered ImageNet clone with diffusion models, and publish it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click-style help and errors: a usage mistake is the usage line and one 'Error: ...' line
    rich_markup_mode=None,
)


# --------------------------------------------------------------------------------------------------
# classes
@app.command("classes")
def classes_cmd(
    spec: Annotated[str, typer.Argument(metavar="SPEC",
                                        help="imagenet-1k | wordnet:SYNSET | path/to/classes.{csv,json,yaml}")],
    class_limit: Annotated[Optional[int], typer.Option(help="Keep only the first N classes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON objects instead of a table.")] = False,
) -> None:
    """Resolve a class set and print it in label order."""
    from imagenet_plus.classes.sets import print_classes, resolve_classes

    print_classes(resolve_classes(spec, class_limit=class_limit), as_json=as_json)


# --------------------------------------------------------------------------------------------------
# generate
@app.command("generate")
@with_config_options(GenerateConfig, ExecutionConfig)
def generate_cmd(
    out: Annotated[str, typer.Option("--out", help="Run directory or URL (s3://…; created if missing).")],
    flags: dict,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file whose keys are these flags.")] = None,
    top_up: Annotated[
        bool, typer.Option("--top-up", help="Add new indices for classes short of their quota in selection.parquet.")
    ] = False,
    remedy: Annotated[
        bool,
        typer.Option("--remedy", help="With --top-up: prompt flagged classes with the strategy in RUN/diagnosis.json."),
    ] = False,
) -> None:
    """Generate images into RUN/generated/*.tar (resumable; N GPUs: 'accelerate launch -m imagenet_plus', --engine ray,
    or --job-index/--num-jobs; see docs/cluster.md)."""
    from imagenet_plus.generate import run_generate

    stage_flags, execution_flags = split_execution(flags)
    execution = load_execution(split_config_file(config)[0], execution_flags,
                               str(config) if config is not None else "command line")
    run_generate(load_generate_config(config, stage_flags), out, top_up=top_up, remedy=remedy, execution=execution)


# --------------------------------------------------------------------------------------------------
# score
@app.command("score")
@with_config_options(ScoreConfig, ExecutionConfig)
def score_cmd(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (generated).")], flags: dict
) -> None:
    """Score every image (CLIP, Inception, classifier, realism) and the set (FID/KID/IS/PR) into RUN/scores."""
    from imagenet_plus.score import run_score

    stage_flags, execution_flags = split_execution(flags)
    summary = run_score(run, load_config(ScoreConfig, None, stage_flags, "command line"),
                        execution=load_execution(None, execution_flags, "command line"))
    if summary is None:  # a rank other than the main one, or a job of a share: its shards are done
        return

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    print(f"scored {summary.num_images} images; FID {fmt(summary.fid, '.3f')}, "
          f"IS {fmt(summary.inception_score_mean, '.3f')}, CLIP score {fmt(summary.clip_score_mean, '.2f')}")


# (end score)


# --------------------------------------------------------------------------------------------------
# diagnose
@app.command("diagnose")
@with_config_options(DiagnoseConfig)
def diagnose_cmd(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (scored).")], flags: dict
) -> None:
    """Per class: why it is weak (ambiguous, concept failure, low diversity, low adherence) and what to do."""
    from imagenet_plus.diagnose import run_diagnose

    summary = run_diagnose(run, load_config(DiagnoseConfig, None, flags, "command line"))
    counts = ", ".join(f"{verdict} {n}" for verdict, n in summary.counts_by_severity())
    print(f"diagnosed {summary.classes} classes: {counts}")

# --------------------------------------------------------------------------------------------------
# select / release / publish
@app.command("select")
@with_config_options(SelectConfig)
def select_cmd(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (scored).")], flags: dict
) -> None:
    """Filter by thresholds and keep the best diverse N per class: writes RUN/selection.parquet and selection.json."""
    from imagenet_plus.select import run_select

    summary = run_select(run, load_config(SelectConfig, None, flags, "command line"))
    short = summary.short
    print(f"kept {summary.num_kept} of {summary.num_scored} images; {len(short)} class(es) short of "
          f"{summary.per_class_quota}" + (" (top up with 'imagenet-plus generate --top-up')" if short else ""))


@app.command("release")
@with_config_options(ReleaseConfig)
def release_cmd(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (selected).")],
    out: Annotated[str, typer.Option("--out", help="Release folder or URL to create.")],
    flags: dict,
) -> None:
    """Write the release: REL/README.md (card), REL/_info.json, REL/data/{train,validation}-NNNNN.tar."""
    from imagenet_plus.release import run_release

    print(run_release(run, out, load_config(ReleaseConfig, None, flags, "command line")))


@app.command("publish")
@with_config_options(PublishConfig)
def publish_cmd(rel: Annotated[str, typer.Argument(metavar="REL", help="Release folder or URL.")], flags: dict) -> None:
    """Validate the release, then make the Hub repo equal to it (token from HF_TOKEN or 'hf auth login'; resumable)."""
    from imagenet_plus.publish import run_publish

    print(run_publish(rel, load_config(PublishConfig, None, flags, "command line")))
# (end select-release-publish)

# --------------------------------------------------------------------------------------------------
# report / evaluate / run
@app.command("report")
@with_config_options(ReportConfig)
def report_cmd(run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (scored; selection optional).")],
               flags: dict) -> None:
    """Write RUN/report/index.html with score histograms, per-class and per-group rates, a class map, contact sheets."""
    from imagenet_plus.report import run_report

    print(run_report(run, load_config(ReportConfig, None, flags, "command line")))


@app.command("evaluate")
@with_config_options(EvaluateConfig)
def evaluate_cmd(flags: dict) -> None:
    """Train on synthetic images and test on real ones (accuracy, macro P/R/F1, ROC-AUC, top-5); writes eval.json."""
    from imagenet_plus.evaluate import run_evaluate

    report = run_evaluate(load_config(EvaluateConfig, None, flags, "command line"))
    for phase, m in report["results"].items():
        print(f"{phase}: accuracy={m['accuracy']:.4f} f1_macro={m['f1_macro']:.4f} roc_auc={m['roc_auc_macro']:.4f}")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", help="YAML: generate keys + score/select/release/... sections.")],
    out: Annotated[str, typer.Option("--out", help="Run directory or URL (s3://…; created if missing).")],
) -> None:
    """Run every stage: generate, score, select, release, report (+ evaluate, publish); done stages are skipped."""
    from imagenet_plus.pipeline.runner import run_all

    run_all(config, out)


# (end report-evaluate-run)


@app.command("recipes")
def recipes_cmd(
    folder: Annotated[Optional[Path], typer.Option("--dir", help="Recipes folder (default: configs/recipes).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON objects instead of a table.")] = False,
) -> None:
    """List the recipes: run configs that reproduce published ways of making synthetic ImageNet data."""
    from imagenet_plus.pipeline.recipes import list_recipes, print_recipes

    print_recipes(list_recipes(folder), as_json=as_json)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Log debug messages and show the full traceback of errors (or set IMAGENET_PLUS_DEBUG=1).")
    )] = False,
    storage_options: Annotated[Optional[str], typer.Option("--storage-options", help=(
        "JSON object of fsspec options for s3://, gs://, hf:// locations, e.g. '{\"endpoint_url\": "
        "\"http://127.0.0.1:9000\"}' (docs/storage.md).")
    )] = None,
) -> None:
    """Build a synthetic, quality-filtered ImageNet clone with diffusion models, and publish it."""
    setup_logging(verbose)
    set_storage_options(storage_options)


def main() -> None:
    """Console-script entry point: usage mistakes and user errors are short messages with exit status 2.

    typer runs in its standalone mode, so whichever click it uses (the ``click`` package, or the copy that
    typer >= 0.29 carries as ``typer._click``, whose exceptions are not ``click``'s classes) prints its own
    usage errors (the usage line and one ``Error:`` line, exit 2) and help. Our own errors go through
    :func:`~imagenet_plus.pipeline.log.report_error`: a :class:`~imagenet_plus.errors.UserError` is one
    ``error: ...`` line on stderr with exit status 2 (plus its traceback under ``--verbose``). An ``OSError`` of
    a full, read-only or forbidden disk that reached here is one line too
    (:func:`~imagenet_plus.io.storage.storage_error`). Ctrl-C prints "interrupted; re-run the same command to
    resume" and exits 130.
    """
    setup_logging()
    try:
        app(prog_name="imagenet-plus")
    except (_Interrupted, KeyboardInterrupt):  # Ctrl-C: one line, exit 130; what a stage left, a re-run cleans
        sys.exit(report_error(KeyboardInterrupt()))
    except UserError as exc:
        sys.exit(report_error(exc))
    except OSError as exc:  # last resort: a full, read-only or forbidden disk that no writer named
        error = storage_error(exc)
        if error is None:
            raise
        sys.exit(report_error(error))


if __name__ == "__main__":
    main()
