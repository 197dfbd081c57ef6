"""The ``imagenet-plus`` command line: a thin table from subcommand to library function.

Each command imports its stage module lazily, so ``imagenet-plus --help`` stays instant. A
:class:`~imagenet_plus.errors.UserError` from any stage is printed as one line (``error: …``) on
stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import load_config, with_config_options
from imagenet_plus.pipeline.log import report_error, setup_logging
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.select.config import SelectConfig

app = typer.Typer(
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
    spec: Annotated[str, typer.Argument(help="imagenet-1k | wordnet:SYNSET | path/to/classes.{csv,json,yaml}")],
    class_limit: Annotated[Optional[int], typer.Option(help="Keep only the first N classes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON objects instead of a table.")] = False,
) -> None:
    """Resolve a class set and print it in label order."""
    from imagenet_plus.classes.sets import print_classes, resolve_classes

    print_classes(resolve_classes(spec, class_limit=class_limit), as_json=as_json)


# --------------------------------------------------------------------------------------------------
# generate
@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory (created if missing).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file whose keys are these flags.")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class set spec (see 'imagenet-plus classes').")] = None,
    class_limit: Annotated[Optional[int], typer.Option(help="Keep only the first N classes.")] = None,
    images_per_class: Annotated[Optional[int], typer.Option(help="Images per class (may grow on a re-run).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Diffusers model: Hub id, local path, or tiny-random.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Inference steps (default: model preset).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per pipeline call.")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side in pixels, multiple of 8.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Global seed.")] = None,
    prompt_strategy: Annotated[
        Optional[str], typer.Option(help="Comma list of name,gloss,hypernym,diverse; one is picked per image.")
    ] = None,
    negative_prompt: Annotated[
        Optional[str], typer.Option(help="Negative prompt for every image ('default' = a stock list).")
    ] = None,
    image_format: Annotated[Optional[str], typer.Option(help="jpg, png or webp.")] = None,
    quality: Annotated[Optional[int], typer.Option(help="JPEG/WebP quality.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="Images per shard.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option(help="Tries per image when NSFW-flagged or black.")] = None,
    family: Annotated[
        Optional[str], typer.Option(help="Pipeline family of a model without a preset: sd, sdxl, flux or sd3.")
    ] = None,
    max_sequence_length: Annotated[
        Optional[int], typer.Option(help="T5 tokens kept per prompt (FLUX, SD3; default: model preset).")
    ] = None,
    offload: Annotated[
        Optional[str], typer.Option(help="none, model or sequential: diffusers' CPU offload for small GPUs.")
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option("--compile/--no-compile", help="torch.compile the UNet/transformer and VAE decoder."),
    ] = None,
    top_up: Annotated[
        bool, typer.Option("--top-up", help="Add new indices for classes short of their quota in selection.parquet.")
    ] = False,
    remedy: Annotated[
        bool,
        typer.Option("--remedy", help="With --top-up: prompt flagged classes with the strategy in RUN/diagnosis.json."),
    ] = False,
) -> None:
    """Generate images into RUN/generated/*.tar (resumable; use 'accelerate launch -m imagenet_plus' for N GPUs)."""
    from imagenet_plus.generate.config import load_generate_config
    from imagenet_plus.generate.stage import run_generate

    overrides = dict(
        classes=classes,
        class_limit=class_limit,
        images_per_class=images_per_class,
        model=model,
        steps=steps,
        guidance=guidance,
        batch_size=batch_size,
        resolution=resolution,
        seed=seed,
        prompt_strategy=prompt_strategy,
        negative_prompt=negative_prompt,
        image_format=image_format,
        quality=quality,
        shard_size=shard_size,
        dtype=dtype,
        max_attempts=max_attempts,
        family=family,
        max_sequence_length=max_sequence_length,
        offload=offload,
        compile=compile,
    )
    cfg = load_generate_config(config, overrides)
    run_generate(cfg, out, top_up=top_up, remedy=remedy)


# --------------------------------------------------------------------------------------------------
# score
@app.command("score")
@with_config_options(ScoreConfig)
def score_cmd(run: Annotated[Path, typer.Argument(help="Run directory (generated).")], flags: dict) -> None:
    """Score every image (CLIP, Inception, classifier, realism) and the set (FID/KID/IS/PR) into RUN/scores."""
    from imagenet_plus.score import run_score

    summary = run_score(run, load_config(ScoreConfig, None, flags, "command line"))
    if summary is None:  # a rank other than the main one: its shards are done, the main rank finishes
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
def diagnose_cmd(run: Annotated[Path, typer.Argument(help="Run directory (scored).")], flags: dict) -> None:
    """Per class: why it is weak (ambiguous, concept failure, low diversity, low adherence) and what to do."""
    from imagenet_plus.diagnose import run_diagnose

    summary = run_diagnose(run, load_config(DiagnoseConfig, None, flags, "command line"))
    counts = ", ".join(f"{verdict} {n}" for verdict, n in summary.counts_by_severity())
    print(f"diagnosed {summary.classes} classes: {counts}")

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
