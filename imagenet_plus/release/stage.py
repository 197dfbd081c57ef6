"""Release: the kept images of a run as an ImageNet-style WebDataset release. Reads ``RUN``, writes ``REL``.

Input: ``RUN/selection.parquet`` (from ``select``), ``RUN/generated/*.tar``, ``RUN/scores/*.parquet`` and
``summary.json``, ``RUN/classes.json``, ``RUN/run.yaml``. Output (names from :mod:`imagenet_plus.contract`)::

    REL/README.md                 dataset card (YAML configs + dataset_info.features) — see card.py
    REL/_info.json                per split: name, num_samples, filenames, shard_lengths (timm's format),
                                  plus the class list, the image member and the release fingerprint
    REL/data/train-00000.tar      training shards, samples shuffled across classes with a fixed seed
    REL/data/validation-00000.tar validation shards (``val_per_class`` images of every class)

and with ``--imagefolder DIR`` also ``DIR/train/{wnid}/{key}.JPEG`` and ``DIR/val/{wnid}/{key}.JPEG``
(torchvision's ``ImageFolder`` layout; ``.png``/``.webp`` when the run wrote those formats).

Image bytes are copied from the generated shards, never re-encoded. Each sample's ``json`` holds the
generation metadata and, under ``scores``, its scores and the select composite.

The stage in steps: :mod:`~imagenet_plus.release.plan` (what goes where: the kept keys and their split),
:mod:`~imagenet_plus.release.sources` (one pass over the generated tars: where each kept sample's members are;
the score columns), :mod:`~imagenet_plus.release.writer` (shards, ``_info.json``, the card of
:mod:`~imagenet_plus.release.card`, the image folder).

Freshness: :func:`stage_inputs` declares what a release is made from (its settings, the ``select`` stage it
reads, ``selection.parquet`` and ``classes.json``); its fingerprint (:mod:`imagenet_plus.pipeline.freshness`)
is recorded in ``RUN/state/release.json`` and in ``_info.json``, so a release folder says which run state made
it. Releasing again into a folder that holds the same fingerprint is a no-op; one holding this run's own earlier
release (after a top-up, other thresholds…) is rebuilt and swapped in (:mod:`~imagenet_plus.release.ownership`);
a folder holding anything else (another run's release, other files) is refused. The image folder works the
same way (``DIR.partial``, fingerprint in ``DIR/.imagenet-plus-release.json``). Both are built in
``NAME.partial`` and swapped in only when complete, so a failure never leaves half a release under the final
name. A ``NAME.partial`` is the project's only when it
holds the marker file ``.imagenet-plus``; the process building it holds a lock on that file, so a second
``release`` to the same ``--out`` stops at once ("REL is in use by pid N on HOST"). An unmarked ``NAME.partial``
(a user's folder), and an ``--out`` that names no folder of its own (``.``, ``..``, the current folder or one
above it) are refused, with nothing deleted.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from imagenet_plus.contract import (
    IMAGEFOLDER_MARKER,
    ReleaseInfo,
    ReleasePaths,
    RunPaths,
    RunRecord,
    read_run_record,
    run_paths,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import claimed_partial
from imagenet_plus.io.storage import location
from imagenet_plus.pipeline.freshness import StageInputs, fingerprint, is_current, mark_current
from imagenet_plus.release.config import ReleaseConfig
from imagenet_plus.release.ownership import (
    imagefolder_owned,
    release_owned,
    replaceable_imagefolder,
    replaceable_release,
)
from imagenet_plus.release.plan import plan_release
from imagenet_plus.release.sources import ReleaseSources, index_generated, read_release_scores
from imagenet_plus.release.writer import (
    check_apart,
    check_output_path,
    check_target,
    imagefolder_fingerprint_of,
    release_fingerprint_of,
    write_imagefolder,
    write_release,
)

__all__ = ["ReleaseConfig", "run_release", "stage_inputs"]

log = logging.getLogger(__name__)

#: The stage's name (its record is ``RUN/state/release.json``).
STAGE = "release"


def stage_inputs(run: str | Path, out: str | Path, cfg: ReleaseConfig) -> StageInputs:
    """What the release in ``out`` is made from, for :mod:`imagenet_plus.pipeline.freshness`.

    Args:
        run: the run directory.
        out: the release folder.
        cfg: the release settings (``imagefolder`` changes no release byte: it is an output, not a setting).

    Returns:
        The settings that change the release, the ``select`` stage it reads (its recorded fingerprint covers
        the scores and generated shards), ``selection.parquet`` and ``classes.json`` (so a run without a
        ``select`` record is covered too), and the outputs that must exist: ``REL/_info.json``,
        ``REL/README.md`` and, with an image folder, its marker.
    """
    paths = RunPaths(location(run))
    rel = ReleasePaths(location(out))
    outputs = [rel.info_json, rel.card]
    if cfg.imagefolder:
        outputs.append(Path(cfg.imagefolder) / IMAGEFOLDER_MARKER)
    settings = {"val_per_class": cfg.val_per_class, "shard_size": cfg.shard_size, "seed": cfg.seed,
                "small_classes": cfg.small_classes, "license": cfg.license}
    return StageInputs(stage=STAGE, settings=settings, upstream=("select",),
                       files=(paths.selection_parquet, paths.classes_json), outputs=tuple(outputs))


def _facts(out: Path, info: ReleaseInfo) -> dict[str, object]:
    return {"out": str(out), "samples": {s: i.num_samples for s, i in info.splits.items()}}


def run_release(run: str | Path, out: str | Path, cfg: ReleaseConfig) -> Path:
    """Build the release folder ``out`` from the kept images of ``run`` (see the module docstring).

    Nothing is written when ``out`` (and the image folder) already hold the release of these inputs: the stage
    is current (:func:`stage_inputs`); its record ``RUN/state/release.json`` is written last.

    Args:
        run: the run directory (``select`` done).
        out: the release folder to create.
        cfg: the release settings.

    Returns:
        The release folder.

    Raises:
        UserError: ``select`` not run, a class too small for the validation split, corrupt inputs, a class id
            or key that is not a safe file name, or ``out`` (or the image folder) holding something else.
    """
    paths = run_paths(run)
    out = check_output_path(location(out), "--out")
    folder = check_output_path(location(cfg.imagefolder), "--imagefolder") if cfg.imagefolder else None
    if folder is not None:
        check_apart(out, folder)
    if not paths.selection_parquet.is_file():
        raise UserError(f"{paths.selection_parquet} not found: run 'imagenet-plus select {paths.root}' before release")
    inputs = stage_inputs(paths.root, out, cfg)
    fp = fingerprint(paths, inputs)
    run = read_run_record(paths)
    rel_done, folder_done = _done(out, folder, fp, run)
    if rel_done and folder_done:
        log.info("release %s is up to date (fingerprint %s)", out, fp)
        if not is_current(paths, inputs):  # made from these inputs, but its record is missing: write it
            mark_current(paths, inputs, _facts(out, ReleaseInfo.read(ReleasePaths(out).info_json)))
        return out
    # one process builds a folder at a time: the lock is its partial folder's ("REL is in use by pid N on HOST")
    with claimed_partial(out), claimed_partial(folder) if folder is not None else contextlib.nullcontext():
        rel_done, folder_done = _done(out, folder, fp, run)  # again under the lock: another process may have built it
        plan = plan_release(paths, cfg)
        index = index_generated(paths, plan.rows)
        sources = ReleaseSources(plan, index, read_release_scores(paths, plan.rows))
        old_info = ReleasePaths(out).info_json  # an earlier release of this run (_done refused any other)
        info = ReleaseInfo.read(old_info) if rel_done else write_release(
            paths, out, cfg, fp, sources, release_owned(ReleaseInfo.read(old_info)) if old_info.is_file() else None)
        if folder is not None and not folder_done:
            write_imagefolder(folder, fp, sources, run, imagefolder_owned)
    mark_current(paths, inputs, _facts(out, info))
    return out


def _done(out: Path, folder: Path | None, fp: str, run: RunRecord) -> tuple[bool, bool]:
    """Whether the release folder and the image folder (True when none is asked for) already hold this build; an
    earlier build made from this same run may be replaced (:mod:`~imagenet_plus.release.ownership`)."""
    rel_done = check_target(out, release_fingerprint_of, fp, "--out", lambda f: replaceable_release(f, run))
    folder_done = check_target(folder, imagefolder_fingerprint_of, fp, "--imagefolder",
                               lambda f: replaceable_imagefolder(f, run)) if folder else True
    return rel_done, folder_done
