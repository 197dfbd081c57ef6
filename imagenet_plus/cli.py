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

from imagenet_plus.errors import UserError
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.pipeline.config import load_config, with_config_options
from imagenet_plus.pipeline.log import report_error, setup_logging
from imagenet_plus.select.config import SelectConfig


class _Command(TyperCommand):
    """A command whose usage line names a positional argument by its metavar as click does (``RUN``, ``[REL]``),
    not in typer 0.29's braces (``{RUN}``): set ``metavar="RUN"`` on the ``typer.Argument``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.+)\}((?:\.\.\.)?)$", r"\1\2", p) for p in super().collect_usage_pieces(ctx)]


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
@with_config_options(GenerateConfig)
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory (created if missing).")],
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
    """Generate images into RUN/generated/*.tar (resumable; use 'accelerate launch -m imagenet_plus' for N GPUs)."""
    from imagenet_plus.generate import run_generate

    run_generate(load_generate_config(config, flags), out, top_up=top_up, remedy=remedy)


# --------------------------------------------------------------------------------------------------
# score
@app.command("score")
def score_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (generated).")],
    reference: Annotated[
        Optional[str], typer.Option(help="Real images: folder (wnid subfolders), .tar shards, or .npz statistics.")
    ] = None,
    clip_model: Annotated[Optional[str], typer.Option(help="CLIP: Hub id, local folder, or tiny-random.")] = None,
    inception_weights: Annotated[
        Optional[str], typer.Option(help="InceptionV3 .pth, or tiny-random (default: torch-fidelity's weights).")
    ] = None,
    classifier: Annotated[
        Optional[str], typer.Option(help="timm ImageNet-1k classifier: name, hf-hub:ID, folder, or tiny-random.")
    ] = None,
    nsfw_model: Annotated[
        Optional[str], typer.Option(help="NSFW image classifier: Hub id, folder, tiny-random, or none (off).")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network batch.")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="Image decoding threads.")] = None,
    skip_bad_shards: Annotated[
        bool, typer.Option("--skip-bad-shards", help="Go on past corrupt shards (listed in summary.json).")
    ] = False,
    metric_samples: Annotated[
        Optional[int], typer.Option(help="Generated/real sample size for KID, precision/recall, realism.")
    ] = None,
) -> None:
    """Score every image (CLIP, Inception, classifier, realism) and the set (FID/KID/IS/PR) into RUN/scores."""
    from imagenet_plus.score.stage import load_score_config, run_score

    cfg = load_score_config(dict(reference=reference, clip_model=clip_model, inception_weights=inception_weights,
                                 classifier=classifier, nsfw_model=nsfw_model, batch_size=batch_size,
                                 num_workers=num_workers, skip_bad_shards=skip_bad_shards or None,
                                 metric_samples=metric_samples))
    summary = run_score(run, cfg)
    if summary is None:  # a rank other than the main one: its shards are done, the main rank finishes
        return
    fid = summary.get("fid")
    print(f"scored {summary['num_images']} images; FID {'n/a' if fid is None else f'{fid:.3f}'}, "
          f"IS {summary['inception_score_mean']:.3f}, CLIP score {summary['clip_score_mean']:.2f}")


# (end score)


# --------------------------------------------------------------------------------------------------
# diagnose
@app.command("diagnose")
def diagnose_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (scored).")],
    reference: Annotated[
        Optional[str], typer.Option(help="Real images in class-id subfolders, or an .npz of CLIP embeddings.")
    ] = None,
    max_confusion: Annotated[Optional[float], typer.Option(help="Ambiguous from this zero-shot confusion.")] = None,
    min_vendi: Annotated[Optional[float], typer.Option(help="Low diversity below this Vendi score.")] = None,
    max_pairwise_similarity: Annotated[
        Optional[float], typer.Option(help="Low diversity above this mean pairwise CLIP similarity.")
    ] = None,
    min_diversity_ratio: Annotated[
        Optional[float], typer.Option(help="Low diversity below this synthetic/real Vendi ratio.")
    ] = None,
    min_class_prob: Annotated[Optional[float], typer.Option(help="Low adherence below this class probability.")] = None,
    min_top5_rate: Annotated[Optional[float], typer.Option(help="Low adherence below this top-5 rate.")] = None,
    sample_per_class: Annotated[Optional[int], typer.Option(help="Images per class for the Vendi score.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (embedding a reference folder).")] = None,
) -> None:
    """Per class: why it is weak (ambiguous, concept failure, low diversity, low adherence) and what to do."""
    from imagenet_plus.diagnose.stage import DiagnoseConfig, run_diagnose
    from imagenet_plus.pipeline.config import config_from_mapping

    flags = dict(reference=reference, max_confusion=max_confusion, min_vendi=min_vendi,
                 max_pairwise_similarity=max_pairwise_similarity, min_diversity_ratio=min_diversity_ratio,
                 min_class_prob=min_class_prob, min_top5_rate=min_top5_rate, sample_per_class=sample_per_class,
                 device=device)
    summary = run_diagnose(run, config_from_mapping(DiagnoseConfig, flags, "command line"))
    counts = ", ".join(f"{k} {v}" for k, v in summary["verdict_counts"].items())
    print(f"diagnosed {summary['classes']} classes: {counts}")

# --------------------------------------------------------------------------------------------------
# select / release / publish
@app.command("select")
@with_config_options(SelectConfig)
def select_cmd(run: Annotated[Path, typer.Argument(help="Run directory (scored).")], flags: dict) -> None:
    """Filter by thresholds and keep the best diverse N per class: writes RUN/selection.parquet and selection.json."""
    from imagenet_plus.select import run_select

    summary = run_select(run, load_config(SelectConfig, None, flags, "command line"))
    short = summary["short"]
    print(f"kept {summary['num_kept']} of {summary['num_scored']} images; {len(short)} class(es) short of "
          f"{summary['per_class_quota']}" + (" (top up with 'imagenet-plus generate --top-up')" if short else ""))


@app.command("release")
def release_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (selected).")],
    out: Annotated[Path, typer.Option("--out", help="Release folder to create.")],
    val_per_class: Annotated[Optional[int], typer.Option(help="Validation images per class.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="Largest number of samples per tar shard.")] = None,
    imagefolder: Annotated[
        Optional[Path], typer.Option(help="Also write train/{wnid}/*.JPEG and val/{wnid}/*.JPEG here.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split and the shuffle.")] = None,
    small_classes: Annotated[Optional[str], typer.Option(
        help="A class keeping <= val-per-class images: error, train (train only) or drop.")] = None,
    license: Annotated[Optional[str], typer.Option(
        help="Dataset licence when the model's is unknown (or to override it): a Hub id or other:NAME:LINK.")] = None,
) -> None:
    """Write the release: REL/README.md (card), REL/_info.json, REL/data/{train,validation}-NNNNN.tar."""
    from imagenet_plus.pipeline.config import config_from_mapping
    from imagenet_plus.release.stage import ReleaseConfig, run_release

    flags = dict(val_per_class=val_per_class, shard_size=shard_size,
                 imagefolder=str(imagefolder) if imagefolder else None, seed=seed, small_classes=small_classes,
                 license=license)
    print(run_release(run, out, config_from_mapping(ReleaseConfig, flags, "command line")))


@app.command("publish")
def publish_cmd(
    rel: Annotated[Path, typer.Argument(help="Release folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo, USER/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing).")] = None,
    tag: Annotated[
        Optional[str], typer.Option(help="Tag the published commit (e.g. v1.0; load with revision='v1.0').")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list what would be added, changed and deleted.")
    ] = False,
) -> None:
    """Validate the release, then make the Hub repo equal to it (token from HF_TOKEN or 'hf auth login'; resumable)."""
    from imagenet_plus.pipeline.config import config_from_mapping
    from imagenet_plus.publish.stage import PublishConfig, run_publish

    flags = dict(repo_id=repo_id, private=private, revision=revision, tag=tag, dry_run=dry_run)
    print(run_publish(rel, config_from_mapping(PublishConfig, flags, "command line")))
# (end select-release-publish)

# --------------------------------------------------------------------------------------------------
# report / evaluate / run
@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (scored; selection optional).")],
    sample_classes: Annotated[Optional[int], typer.Option(help="Classes shown in the contact sheets.")] = None,
    sheet_images: Annotated[Optional[int], typer.Option(help="Best and worst images per class in a sheet.")] = None,
    thumb_size: Annotated[Optional[int], typer.Option(help="Contact-sheet thumbnail side in pixels.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the class sample.")] = None,
) -> None:
    """Write RUN/report/index.html with score histograms, per-class and per-group rates, a class map, contact sheets."""
    from imagenet_plus.pipeline.config import config_from_mapping
    from imagenet_plus.report.stage import ReportConfig, run_report

    flags = dict(sample_classes=sample_classes, sheet_images=sheet_images, thumb_size=thumb_size, seed=seed)
    cfg = config_from_mapping(ReportConfig, flags, "command line")
    index = run_report(run, cfg)
    print(index)


@app.command("evaluate")
def evaluate_cmd(
    train: Annotated[str, typer.Option(help="Synthetic training set: a release folder (or class-id image folder).")],
    test: Annotated[str, typer.Option(help="Real test images in class-id subfolders (e.g. ImageNet val by wnid).")],
    out: Annotated[str, typer.Option(help="Output folder for eval.json, plots and weights.")],
    finetune: Annotated[
        Optional[str], typer.Option(help="Real training images (class-id subfolders): adds fine-tune and real-only.")
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="small-cnn (default), resnet18 or any timm model name.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Local checkpoint to start from (no downloads).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs on the synthetic set.")] = None,
    finetune_epochs: Annotated[Optional[int], typer.Option(help="Epochs on real images (default: --epochs).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (aspect kept, letterboxed).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size per process.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, one-cycle).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed.")] = None,
    min_crop: Annotated[Optional[float], typer.Option(help="Smallest random crop area (training).")] = None,
    max_margin: Annotated[Optional[float], typer.Option(help="Largest random margin fraction (training).")] = None,
    explain: Annotated[
        Optional[int], typer.Option(help="Grad-CAM grids of N real test images per class, per phase.")
    ] = None,
) -> None:
    """Train on synthetic images and test on real ones (accuracy, macro P/R/F1, ROC-AUC, top-5); writes eval.json."""
    from imagenet_plus.evaluate.stage import EvaluateConfig, run_evaluate
    from imagenet_plus.pipeline.config import config_from_mapping

    flags = dict(
        train=train,
        test=test,
        out=out,
        finetune=finetune,
        model=model,
        weights=weights,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        workers=workers,
        seed=seed,
        min_crop=min_crop,
        max_margin=max_margin,
        explain=explain,
    )
    cfg = config_from_mapping(EvaluateConfig, flags, "command line")
    report = run_evaluate(cfg)
    for phase, m in report["results"].items():
        print(f"{phase}: accuracy={m['accuracy']:.4f} f1_macro={m['f1_macro']:.4f} roc_auc={m['roc_auc_macro']:.4f}")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", help="YAML: generate keys + score/select/release/... sections.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (created if missing).")],
) -> None:
    """Run every stage: generate, score, select, release, report (+ evaluate, publish); done stages are skipped."""
    from imagenet_plus.pipeline.runner import run_all

    run_all(config, out)


# (end report-evaluate-run)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Log debug messages and show the full traceback of errors (or set IMAGENET_PLUS_DEBUG=1).")
    )] = False,
) -> None:
    """Build a synthetic, quality-filtered ImageNet clone with diffusion models, and publish it."""
    setup_logging(verbose)


def main() -> None:
    """Console-script entry point: usage mistakes and user errors are short messages with exit status 2.

    typer runs in its standalone mode, so whichever click it uses (the ``click`` package, or the copy that
    typer >= 0.29 carries as ``typer._click``, whose exceptions are not ``click``'s classes) prints its own
    usage errors (the usage line and one ``Error:`` line, exit 2) and help. Our own errors go through
    :func:`~imagenet_plus.pipeline.log.report_error`: a :class:`~imagenet_plus.errors.UserError` is one
    ``error: ...`` line on stderr with exit status 2 (plus its traceback under ``--verbose``).
    """
    setup_logging()
    try:
        app(prog_name="imagenet-plus")
    except (UserError, KeyboardInterrupt) as exc:  # KeyboardInterrupt: raised outside click's own handling
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
