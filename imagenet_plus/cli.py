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

from imagenet_plus.errors import UserError

app = typer.Typer(
    name="imagenet-plus",
    help="Build a synthetic, quality-filtered ImageNet clone with diffusion models, and publish it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    from imagenet_plus.classes import print_classes, resolve_classes

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
    negative_prompt: Annotated[Optional[str], typer.Option(help="Negative prompt for every image.")] = None,
    image_format: Annotated[Optional[str], typer.Option(help="jpg, png or webp.")] = None,
    quality: Annotated[Optional[int], typer.Option(help="JPEG/WebP quality.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="Images per shard.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option(help="Tries per image when NSFW-flagged or black.")] = None,
    top_up: Annotated[
        bool, typer.Option("--top-up", help="Add new indices for classes short of their quota in selection.parquet.")
    ] = False,
) -> None:
    """Generate images into RUN/generated/*.tar (resumable; use 'accelerate launch -m imagenet_plus' for N GPUs)."""
    from imagenet_plus.config import load_generate_config
    from imagenet_plus.generate import run_generate

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
    )
    cfg = load_generate_config(config, overrides)
    run_generate(cfg, out, top_up=top_up)


# --------------------------------------------------------------------------------------------------
# score
# (end score)

# --------------------------------------------------------------------------------------------------
# select / release / publish
# (end select-release-publish)

# --------------------------------------------------------------------------------------------------
# report / evaluate / run
# (end report-evaluate-run)


def main() -> None:
    """Console-script entry point: one-line errors, exit status 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(1)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
