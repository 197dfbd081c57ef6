"""The run folder's plan: ``RUN/run.yaml`` and ``RUN/classes.json`` checked, extended and written, and what
``generate``'s outputs are made from (:func:`stage_inputs`, the freshness rule ``run`` and the stage share).

A run folder belongs to one config: a re-run with settings that change images (or another class set) is
refused; raising ``images_per_class`` appends an ``extend`` segment; ``--top-up`` appends a ``top-up`` segment
for the classes ``select`` found short (``--remedy``: with the prompt strategy ``diagnose`` names).

A hand-edited run.yaml is refused before anything is written, as one line naming the key: a plan that
contradicts itself (the contract's ``check_plan``), the run's config or class set (:func:`check_recorded_run`),
or the shards on disk (:func:`check_shards_on_disk`: a shard beyond the plan, or one whose stats hold other keys
than the plan gives it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagenet_plus import diagnose
from imagenet_plus.classes.prompts import STRATEGIES
from imagenet_plus.classes.sets import ClassInfo, read_classes_json, resolve_classes, write_classes_json
from imagenet_plus.contract import (
    RunPaths,
    RunRecord,
    SelectionSummary,
    ShardStats,
    generated_done,
    library_versions,
    make_key,
    new_run_id,
    read_run_record,
    shard_name,
    stats_path,
    write_run_yaml,
)
from imagenet_plus.contract.run import RESTORE_RUN_YAML
from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.generate.config import REAL_FINGERPRINT, GenerateConfig, hashed_settings, run_settings
from imagenet_plus.generate.inputs import RunInputs, check_paired_images, resolve_inputs, without_labels
from imagenet_plus.generate.plan import (
    PlanItem,
    Segment,
    ShardBounds,
    extend_segment,
    initial_segment,
    plan_shards,
    shard_bounds,
    top_up_segment,
)
from imagenet_plus.io.storage import location
from imagenet_plus.pipeline.config import config_from_mapping, stable_hash
from imagenet_plus.pipeline.freshness import StageInputs

#: The stage's name: its record ``RUN/state/generate.json`` and its marker folder ``RUN/markers/generate``.
STAGE = "generate"
#: Minimum pass rate assumed when sizing a top-up (a class that passed nothing still gets a bounded top-up).
TOP_UP_MIN_PASS_RATE = 0.1


@dataclass(frozen=True)
class RunState:
    """The run's plan as it will be after this invocation (what run.yaml says)."""

    config: GenerateConfig
    classes: list[ClassInfo]
    run_hash: str
    segments: tuple[Segment, ...]
    new_run: bool
    changed: bool
    inputs: RunInputs = RunInputs()
    run_id: str | None = None

    def shards(self) -> list[list[PlanItem]]:
        """The plan cut into shards (shard numbers run on across segments)."""
        return plan_shards(self.segments, [c.id for c in self.classes], self.config.shard_size)

    def record(self) -> RunRecord:
        """The run.yaml record of this plan."""
        config = run_settings(self.config, self.inputs.fingerprint)
        return RunRecord(config=config, config_hash=self.run_hash, versions=library_versions(),
                         num_classes=len(self.classes), num_images=sum(s.num_items for s in self.segments),
                         segments=self.segments, run_id=self.run_id)


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["model: 'a' → 'b'", …]`` for keys whose values differ."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _read_top_up_counts(paths: RunPaths, classes: Sequence[ClassInfo]) -> tuple[dict[int, int], str]:
    """New images per label for classes short of their quota, from ``RUN/selection.json``; and its hash."""
    if not paths.selection_json.is_file():
        raise UserError(f"--top-up needs {paths.selection_json}: run 'imagenet-plus score' and 'select' first")
    text = paths.selection_json.read_text(encoding="utf-8")
    try:
        selection = SelectionSummary.from_dict(json.loads(text), paths.selection_json)
    except json.JSONDecodeError as exc:
        raise UserError(f"{paths.selection_json}: malformed selection summary ({exc})") from None
    label_of = {c.id: c.label for c in classes}
    counts: dict[int, int] = {}
    for class_id, missing in selection.short.items():
        if class_id not in label_of:
            raise UserError(f"{paths.selection_json}: unknown class id {class_id!r} in 'short'")
        rate = max(float(selection.pass_rate.get(class_id, 0.0) or 0.0), TOP_UP_MIN_PASS_RATE)
        if int(missing) > 0:
            counts[label_of[class_id]] = math.ceil(int(missing) / rate)
    return counts, stable_hash(text)


def _read_remedy(paths: RunPaths, classes: Sequence[ClassInfo]) -> dict[int, str]:
    """Prompt strategy per label for the classes ``diagnose`` flagged, from ``RUN/diagnosis.json``."""
    if not paths.diagnosis_json.is_file():
        raise UserError(f"--remedy needs {paths.diagnosis_json}: run 'imagenet-plus diagnose {paths.root}' first")
    label_of = {c.id: c.label for c in classes}
    out: dict[int, str] = {}
    for class_id, strategy in diagnose.read_remedy_strategies(paths.root).items():
        if class_id not in label_of:
            raise UserError(f"{paths.diagnosis_json}: unknown class id {class_id!r} in 'strategies'")
        if strategy not in STRATEGIES:
            raise UserError(f"{paths.diagnosis_json}: unknown prompt strategy {strategy!r} for class {class_id!r} "
                            f"(choose from {', '.join(STRATEGIES)})")
        out[label_of[class_id]] = strategy
    return out


def recorded_config(paths: RunPaths, recorded: RunRecord) -> GenerateConfig:
    """The config run.yaml records, validated as a :class:`GenerateConfig` (every key, its type and range).

    The fingerprint of the real images (:data:`~imagenet_plus.generate.config.REAL_FINGERPRINT`) is recorded beside
    the settings, not one of them: it is checked to be a string and left out.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range, named with ``RUN/run.yaml: config``.
    """
    settings = dict(recorded.config)
    fingerprint = settings.pop(REAL_FINGERPRINT, None)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ConfigError(f"{paths.run_yaml}: config: '{REAL_FINGERPRINT}' must be a string, got {fingerprint!r}")
    return config_from_mapping(GenerateConfig, settings, f"{paths.run_yaml}: config")


def check_recorded_run(paths: RunPaths, recorded: RunRecord, classes: Sequence[ClassInfo], run_hash: str,
                       hashed: dict[str, Any]) -> None:
    """Refuse a run.yaml whose config, class count or prompt strategies contradict the run: what
    :func:`~imagenet_plus.contract.run.check_plan` cannot tell from the file alone.

    Args:
        paths: the run folder.
        recorded: its run.yaml.
        classes: the class set of this invocation.
        run_hash: the hash of this invocation's config and class set.
        hashed: this invocation's settings that change images. When ``run_hash`` equals the recorded
            ``config_hash``, the recorded config must hold the same values: a hand edit of ``config.shard_size``
            would otherwise re-cut the plan that the shards on disk were made from.

    Raises:
        UserError: one line naming the key.
    """
    recorded_config(paths, recorded)
    if recorded.num_classes != len(classes):
        raise UserError(f"{paths.run_yaml}: key 'num_classes' is {recorded.num_classes}, but the run's class set has "
                        f"{len(classes)} classes: put back {len(classes)}")
    for i, seg in enumerate(recorded.segments):
        for k, (_label, strategy) in enumerate(seg.strategies):
            if strategy not in STRATEGIES:
                raise UserError(f"{paths.run_yaml}: key 'segments[{i}].strategies[{k}]' names the unknown prompt "
                                f"strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if recorded.config_hash == run_hash:
        old = hashed_settings(recorded.config)
        for key in sorted(set(old) | set(hashed)):
            if old.get(key) != hashed.get(key):
                raise UserError(f"{paths.run_yaml}: key 'config.{key}' is {old.get(key)!r}, but the run was made with "
                                f"{hashed.get(key)!r} (its config_hash says so): put back {hashed.get(key)!r}")


def _shard_number(paths: RunPaths, path: Path) -> int | None:
    """``generated/00012.tar`` or ``generated/00012.json`` → 12; None for any other name."""
    stem = path.name.partition(".")[0]
    if not stem.isdigit():
        return None
    tar = paths.generated_tar(int(stem))
    return int(stem) if path.name in (tar.name, stats_path(tar).name) else None


def check_shards_on_disk(paths: RunPaths, shards: Sequence[ShardBounds]) -> None:
    """Refuse a plan that contradicts the generated shards on disk (run.yaml's segments edited by hand).

    A shard file (``NNNNN.tar`` or its stats ``NNNNN.json``) beyond the plan's last shard, or a finished shard whose
    stats record other keys or another count than the plan gives it, means the plan is not the one the shards
    were made from: generating on would skip planned images (they look done) or plan keys twice. Reads only the
    folder listing and the stats JSONs (not the tars); about 0.4 s for the 5,079 shards of an ImageNet-size run.

    Raises:
        UserError: one line naming the file, what it holds and what run.yaml plans.
    """
    if not paths.generated.is_dir():
        return
    numbers = {p: _shard_number(paths, p) for p in paths.generated.iterdir()}
    beyond = sorted(p for p, n in numbers.items() if n is not None and n >= len(shards))
    if beyond:
        last = f"{shard_name(0)}..{shard_name(len(shards) - 1)}" if shards else "none"
        raise UserError(f"{beyond[0]} is beyond the plan of {paths.run_yaml} (its shards: {last}): run.yaml's segments "
                        f"no longer plan the images on disk; {RESTORE_RUN_YAML}")
    for s, planned in enumerate(shards):
        stats_file = stats_path(paths.generated_tar(s))
        if not stats_file.is_file():
            continue
        try:
            stats = ShardStats.read(stats_file)
        except UserError:
            continue  # a stats file that does not read back is the done rule's to judge, not a plan contradiction
        if (stats.count, stats.first_key, stats.last_key) != (planned.count, planned.first_key, planned.last_key):
            raise UserError(f"{stats_file}: shard {shard_name(s)} holds {stats.count} images {stats.first_key}.."
                            f"{stats.last_key}, but {paths.run_yaml} plans {planned.count} images {planned.first_key}.."
                            f"{planned.last_key} for it: run.yaml's segments no longer plan the images on disk; "
                            f"{RESTORE_RUN_YAML}")


def plan_run_state(cfg: GenerateConfig, paths: RunPaths, top_up: bool, remedy: bool = False,
                   check_real: bool = True) -> RunState:
    """Check the run folder against the config and work out the plan (reads only, writes nothing).

    The run's inputs are resolved here (:func:`~imagenet_plus.generate.inputs.resolve_inputs`: real images and their
    fingerprint, which is part of the hash; the captioner and prompt model checked); with ``check_real`` the real
    images paired with the images the plan adds are opened (:func:`~imagenet_plus.generate.inputs.check_paired_images`).

    Raises:
        UserError: ``RUN`` is a file; it was made with another config or class set; images per class
            would shrink; ``--top-up`` without a selection; ``--remedy`` without ``--top-up`` or a diagnosis;
            a run.yaml that does not read back, or whose plan contradicts itself, the run's config and class set
            (:func:`check_recorded_run`) or the shards on disk (:func:`check_shards_on_disk`); real images missing or
            unreadable; an absent captioner or prompt model.
    """
    if remedy and not top_up:
        raise UserError("--remedy only works with --top-up (it sets the prompt strategy of the new indices)")
    if paths.root.exists() and not paths.root.is_dir():
        raise UserError(f"--out {paths.root} is a file, not a run directory")
    cfg = cfg.resolved()
    classes = resolve_classes(cfg.classes, class_limit=cfg.class_limit)
    for c in classes:
        make_key(c.id, 0)  # every class id must give valid keys
    inputs = resolve_inputs(cfg, classes)
    hashed = hashed_settings(run_settings(cfg, inputs.fingerprint))
    run_hash = stable_hash({"config": hashed, "classes": [c.to_dict() for c in classes]})

    if not paths.run_yaml.exists():
        if top_up:
            raise UserError(f"--top-up needs an existing run in {paths.root}")
        segments = (initial_segment(len(classes), cfg.images_per_class),)
        return _with_inputs(RunState(cfg, classes, run_hash, segments, True, True, inputs, run_id=new_run_id()), 0,
                            check_real)

    recorded = read_run_record(paths)  # the plan checked against itself (contract.run.check_plan)
    if recorded.config_hash != run_hash:
        changes = diff_configs(hashed_settings(recorded.config), hashed) or ["the class set's contents"]
        raise UserError(
            f"{paths.root} was made with another config ({'; '.join(changes)}): use another --out, "
            "or the original settings"
        )
    check_recorded_run(paths, recorded, classes, run_hash, hashed)
    segments = recorded.segments
    old_ipc = recorded_config(paths, recorded).images_per_class
    changed = False
    if cfg.images_per_class < old_ipc:
        raise UserError(
            f"{paths.root} already has {old_ipc} images per class; images-per-class {cfg.images_per_class} "
            "would drop planned images (use another --out)"
        )
    check_shards_on_disk(paths, shard_bounds(segments, [c.id for c in classes], cfg.shard_size))
    if cfg.images_per_class > old_ipc:
        segments += (extend_segment(segments, cfg.images_per_class - old_ipc),)
        changed = True
    if top_up:
        counts, based_on = _read_top_up_counts(paths, classes)
        strategies = _read_remedy(paths, classes) if remedy else None
        already = any(s.kind == "top-up" and s.based_on == based_on for s in segments)
        if counts and not already:
            segments += (top_up_segment(segments, counts, based_on, strategies),)
            changed = True
    state = RunState(cfg, classes, run_hash, segments, False, changed, inputs,
                     run_id=recorded.run_id or new_run_id())
    return _with_inputs(state, len(recorded.segments), check_real)


def _with_inputs(state: RunState, first_new: int, check_real: bool) -> RunState:
    """The new segments (from ``first_new`` on) without the classes skipped for lack of real images, and their
    paired real images checked (with ``check_real``)."""
    skipped = state.inputs.skipped_labels(state.classes)
    new = tuple(s for s in (without_labels(seg, skipped) for seg in state.segments[first_new:]) if s.ranges)
    if check_real:
        check_paired_images(new, [c.id for c in state.classes], state.config, state.inputs)
    return replace(state, segments=state.segments[:first_new] + new)


def write_run_state(state: RunState, paths: RunPaths) -> None:
    """Write ``classes.json`` (new runs) and ``run.yaml`` (when the plan changed)."""
    paths.generated.mkdir(parents=True, exist_ok=True)
    if state.new_run:
        write_classes_json(paths.classes_json, state.classes)
    if state.changed:
        write_run_yaml(paths, state.record())


def inputs_of(paths: RunPaths, state: RunState) -> StageInputs:
    """What the run's generated shards are made from: the config hash and the plan's segments (settings), the
    stats JSONs of the shards done so far (files), and every planned shard's tar and stats (outputs)."""
    tars = [paths.generated_tar(s) for s in range(len(state.shards()))]
    return StageInputs(
        STAGE,
        settings={"config_hash": state.run_hash, "segments": [s.to_dict() for s in state.segments]},
        files=tuple(stats_path(t) for t in tars if generated_done(t)),
        outputs=tuple(p for t in tars for p in (t, stats_path(t))),
    )


def stage_inputs(run: str | Path, cfg: GenerateConfig) -> StageInputs:
    """``generate``'s freshness declaration for the run folder ``run`` and the config ``cfg`` (reads only).

    Raises:
        UserError: as :func:`plan_run_state` (the run folder holds another config, …).
    """
    paths = RunPaths(location(run))
    return inputs_of(paths, plan_run_state(cfg, paths, top_up=False, check_real=False))


def planned_keys(run: str | Path) -> list[str]:
    """Every key the run's plan holds, in shard order (for checks and downstream stages)."""
    paths = RunPaths(location(run))
    recorded = read_run_record(paths)
    classes = read_classes_json(paths.classes_json)
    shards = plan_shards(recorded.segments, [c.id for c in classes], recorded_config(paths, recorded).shard_size)
    return [make_key(it.class_id, it.index) for shard in shards for it in shard]
