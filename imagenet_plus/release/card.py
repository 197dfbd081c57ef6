"""The dataset card of a release (``REL/README.md``): rendering from ``card_template.md`` and validation.

The card's YAML header is what the Hub (and ``datasets.load_dataset(REL)``) reads: ``configs`` maps each
split to its tar shards, and ``dataset_info.features`` declares every member of a sample (``jpg`` image,
``cls`` class label with the class ids as names, ``json`` struct, ``__key__``) so that the packaged
``webdataset`` builder gives typed columns without inference (datasets >= 4 runs no loading scripts).
The YAML is built with huggingface_hub's :class:`~huggingface_hub.DatasetCardData` and the features with
``datasets.DatasetInfo._to_yaml_dict`` (the same code that writes cards in ``push_to_hub``), so the
format is exactly what the loaders parse back; :func:`validate_card` parses it back the same way.

The card's text comes from :func:`card_text`: its template variables are built from :class:`CardInputs` (the
run's ``run.yaml``, score summary, selection and diagnosis beside the written release's ``_info.json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagenet_plus.contract import (
    COMMON_SAMPLE_FIELDS,
    RELEASE_DATA_DIR,
    RELEASE_SCORE_FIELDS,
    SCORES_MEMBER,
    VERDICT_OK,
    DiagnosisSummary,
    ReleaseInfo,
    RunPaths,
    ScoreSummary,
    SelectionSummary,
    card_metric_rows,
)
from imagenet_plus.errors import UserError
from imagenet_plus.generate.guidance import DEFAULT_LEVELS
from imagenet_plus.models.registry import model_license  # noqa: F401 (the card's licence follows the model's)
from imagenet_plus.select.config import non_default_thresholds

if TYPE_CHECKING:
    from imagenet_plus.release.sources import ReleaseSources

#: The template shipped with the project (a Jinja2 markdown file; ``{{ card_data }}`` is the YAML header).
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "card_template.md"

REQUIRED_YAML_KEYS = ("pretty_name", "license", "task_categories", "size_categories", "configs", "dataset_info")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "1B<n<10B"


def json_fields(extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``json`` member's struct: {field: dtype or {score: dtype}} (``scores`` nested); ``extra`` holds the
    fields beyond :data:`~imagenet_plus.contract.COMMON_SAMPLE_FIELDS` the samples carry (the real-image ones)."""
    fields: dict[str, Any] = dict(COMMON_SAMPLE_FIELDS)
    fields.update(extra or {})
    fields[SCORES_MEMBER] = dict(RELEASE_SCORE_FIELDS)
    return fields


def release_features(class_ids: Sequence[str], image_ext: str, extra_meta: Mapping[str, str] | None = None) -> Any:
    """The ``datasets.Features`` of a release sample as the webdataset builder yields it.

    Args:
        class_ids: class names of the ClassLabel, in label order (unique wnids / slugs).
        image_ext: the image member (``jpg``, ``png`` or ``webp``).
        extra_meta: metadata fields beyond :data:`~imagenet_plus.contract.COMMON_SAMPLE_FIELDS` (name → dtype).
    """
    import datasets

    def to_feature(spec: Any) -> Any:
        if isinstance(spec, dict):
            return {k: to_feature(v) for k, v in spec.items()}
        return datasets.Value(spec)

    return datasets.Features({
        image_ext: datasets.Image(),
        "cls": datasets.ClassLabel(names=list(class_ids)),
        "json": to_feature(json_fields(extra_meta)),
        "__key__": datasets.Value("string"),
    })


def dataset_info_yaml(features: Any, split_counts: Mapping[str, int], split_bytes: Mapping[str, int]) -> dict[str, Any]:
    """``dataset_info`` for the card: features and splits, in the YAML form datasets writes and reads."""
    import datasets

    splits = datasets.SplitDict()
    for name, n in split_counts.items():
        splits.add(datasets.SplitInfo(name=name, num_examples=int(n), num_bytes=int(split_bytes.get(name, 0))))
    info = datasets.DatasetInfo(features=features, splits=splits)
    yaml_dict = info._to_yaml_dict()
    yaml_dict["download_size"] = int(sum(split_bytes.values()))
    return yaml_dict


def render_card(context: Mapping[str, Any], template_path: str | Path | None = None) -> str:
    """Render the dataset card.

    Args:
        context: the template variables; must hold ``card_yaml`` (keyword arguments of ``DatasetCardData``)
            plus whatever the template body uses.
        template_path: a Jinja2 markdown template (default :data:`DEFAULT_TEMPLATE`).

    Returns:
        The card text (YAML header + markdown body).
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    path = Path(template_path) if template_path else DEFAULT_TEMPLATE
    if not path.is_file():
        raise UserError(f"dataset card template not found: {path}")
    data = DatasetCardData(**dict(context["card_yaml"]))
    body = {k: v for k, v in context.items() if k != "card_yaml"}
    card = DatasetCard.from_template(data, template_path=str(path), **body)
    return str(card)


def validate_card(text: str, source: str) -> dict[str, Any]:
    """Parse a card back as the Hub and datasets do and check what the loaders need.

    Args:
        text: the card text.
        source: where it came from (used in errors).

    Returns:
        The YAML header as a dict.

    Raises:
        UserError: the YAML does not load, misses a required key, or its ``dataset_info``/``configs``
            do not parse with datasets.
    """
    import datasets
    import yaml
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    if not text.startswith("---"):
        raise UserError(f"{source}: the card has no YAML header (it must start with '---')")
    try:
        card = DatasetCard(text, ignore_metadata_errors=False)
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{source}: the card's YAML does not load: {exc}") from None
    meta = card.data.to_dict()
    missing = [k for k in REQUIRED_YAML_KEYS if k not in meta]
    if missing:
        raise UserError(f"{source}: the card's YAML lacks {', '.join(missing)}")
    try:
        info = datasets.DatasetInfo._from_yaml_dict(dict(meta["dataset_info"]))
        configs = MetadataConfigs.from_dataset_card_data(card.data)
    except Exception as exc:  # datasets raises several types for malformed metadata
        raise UserError(f"{source}: the card's dataset_info/configs do not parse: {exc}") from None
    if info.features is None or "cls" not in info.features or "__key__" not in info.features:
        raise UserError(f"{source}: dataset_info.features must declare cls and __key__")
    if not configs:
        raise UserError(f"{source}: the card's YAML has no configs with data_files")
    return meta


# ------------------------------------------------------------------------------------------------------------
# the card's text: its template variables, from the run and the new release


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _metrics_rows(summary: ScoreSummary | None) -> list[tuple[str, str]]:
    """The card's metrics table: (label, value) per :func:`~imagenet_plus.contract.card_metric_rows` row."""

    def value(key: str | None) -> Any:
        return None if summary is None or key is None else getattr(summary, key)

    def pm(mean: Any, std: Any) -> str:
        return "not computed" if mean is None else f"{_fmt(mean)} ± {_fmt(std)}"

    return [(m.card_label or m.label, pm(value(m.key), value(m.std_key)) if m.std_key else _fmt(value(m.key)))
            for m in card_metric_rows()]


#: Classes listed by name in the card's small-class line (the rest are counted).
MAX_LISTED_CLASSES = 50


@dataclass(frozen=True)
class CardInputs:
    """What the card is rendered from."""

    run_yaml: dict[str, Any]
    summary: ScoreSummary | None
    selection: SelectionSummary | None
    info: ReleaseInfo
    split_bytes: dict[str, int]
    per_class: dict[str, Counter]
    extra_meta: dict[str, str]
    scheduler: str
    small: list[str]
    small_policy: str
    license: str | None = None
    diagnosis: DiagnosisSummary | None = None

    @property
    def counts(self) -> dict[str, int]:
        """split → samples released."""
        return {s: i.num_samples for s, i in self.info.splits.items()}

    @classmethod
    def gather(cls, paths: RunPaths, run_yaml: dict[str, Any], info: ReleaseInfo, split_bytes: dict[str, int],
               sources: ReleaseSources, small_policy: str, license: str | None) -> CardInputs:
        """Read the run's records the card cites (selection, score summary, diagnosis) beside the new release."""
        selection = SelectionSummary.read(paths.selection_json) if paths.selection_json.is_file() else None
        summary = ScoreSummary.read(paths.summary_json) if paths.summary_json.is_file() else None
        diagnosis = DiagnosisSummary.read(paths.diagnosis_json) if paths.diagnosis_json.is_file() else None
        return cls(run_yaml=run_yaml, summary=summary, selection=selection, info=info,
                   split_bytes=split_bytes, per_class=sources.plan.per_class_counts(),
                   extra_meta=sources.index.extra_meta, scheduler=", ".join(sorted(sources.index.schedulers)),
                   small=sources.plan.small, small_policy=small_policy, license=license,
                   diagnosis=diagnosis)


def _card_yaml(inp: CardInputs) -> dict[str, Any]:
    """The card's YAML header: license from the model, configs per split, dataset_info from datasets."""
    config = inp.run_yaml.get("config", {})
    model = str(config.get("model", "unknown"))
    lic, lic_name, lic_link, _ = model_license(model, override=inp.license)
    counts = inp.counts
    features = release_features([c["id"] for c in inp.info.classes], inp.info.image_ext, inp.extra_meta)
    card_yaml: dict[str, Any] = {
        "pretty_name": f"imagenet-plus: synthetic {config.get('classes', 'image classes')} ({model})",
        "license": lic,
        "task_categories": ["image-classification"],
        "size_categories": [size_category(sum(counts.values()))],
        "tags": ["synthetic", "imagenet", "webdataset", "diffusion"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": s, "path": f"{RELEASE_DATA_DIR}/{s}-*.tar"} for s in counts]}],
        "dataset_info": dataset_info_yaml(features, counts, inp.split_bytes),
    }
    if lic_name:
        card_yaml["license_name"] = lic_name
        card_yaml["license_link"] = lic_link
    return card_yaml


def _class_rows(inp: CardInputs) -> list[dict[str, Any]]:
    pass_rate = inp.selection.pass_rate if inp.selection else {}
    return [{"label": c["label"], "id": c["id"], "name": c["name"],
             "train": inp.per_class.get("train", Counter())[c["id"]],
             "validation": inp.per_class.get("validation", Counter())[c["id"]],
             "pass_rate": _fmt(pass_rate.get(c["id"]), 3)} for c in inp.info.classes]


def _selection_context(inp: CardInputs, released: int) -> dict[str, Any]:
    sel = inp.selection
    scored = (sel.num_scored if sel else 0) or 0
    passed = sel.num_passed if sel else 0
    listed = ", ".join(inp.small[:MAX_LISTED_CLASSES])
    if len(inp.small) > MAX_LISTED_CLASSES:
        listed += f" and {len(inp.small) - MAX_LISTED_CLASSES} more"
    return {
        "thresholds": ", ".join(f"`{k}: {v}`" for k, v in non_default_thresholds(sel.thresholds if sel else None)),
        "quota": sel.per_class_quota if sel else None,
        "num_kept": sel.num_kept if sel else released,
        "num_scored": scored,
        "overall_pass_rate": f"{passed / scored:.1%}" if scored else "n/a",
        "dropped_classes": (sel.dropped_classes if sel else None) or [],
        "flagged_classes": (sel.flagged_classes if sel else None) or [],
        "short_classes": ", ".join(f"{k} ({v} missing)" for k, v in ((sel.short if sel else None) or {}).items()),
        "train_only_classes": listed if inp.small_policy == "train" else "",
        "small_dropped_classes": listed if inp.small_policy == "drop" else "",
        "num_small_classes": len(inp.small),
    }


def _nsfw_filter_text(inp: CardInputs, models: dict[str, Any]) -> str:
    """One sentence for the card: which NSFW checks ran and whether select dropped what they flagged."""
    detector = models.get("nsfw_detector")
    th = (inp.selection.thresholds if inp.selection else None) or {}
    checks = ["the generator's safety checker, where the model has one"]
    if detector and detector != "none":
        checks.append(f"the independent detector `{detector}` run by `imagenet-plus score`")
    else:
        checks.append("no independent detector (`score --nsfw-model none`, or scored before it existed)")
    how = " and ".join(checks)
    if not th.get("drop_nsfw", True):
        return f"NSFW checks: {how}; flagged images were NOT dropped (`drop-nsfw: false`)."
    limit = th.get("nsfw_score_max", 0.5)
    return f"NSFW checks: {how}; images flagged by either (detector P(nsfw) > {limit}) were dropped."


def _diagnosis_context(diagnosis: DiagnosisSummary | None) -> dict[str, Any] | None:
    """The card's diagnosis section from ``RUN/diagnosis.json`` (None when the run was not diagnosed).

    Lists the classes per verdict and the flagged classes worst first (as many as ``diagnose`` listed), with
    the prompt strategies a ``generate --top-up --remedy`` would use.
    """
    if diagnosis is None:
        return None
    counts = diagnosis.verdict_counts
    rows = [{"class_id": r.class_id, "name": r.name, "verdict": r.verdict, "flags": r.flags, "remedy": r.remedy}
            for r in diagnosis.flagged_classes]
    return {
        "verdict_table": [(k, int(v)) for k, v in counts.items()],
        "num_flagged": sum(v for k, v in counts.items() if k != VERDICT_OK),
        "num_ok": counts.get(VERDICT_OK, 0),
        "flagged": rows,
        "reference": diagnosis.reference,
        "note": diagnosis.note,
    }


#: What binds a release made from ImageNet's own images (the terms every ImageNet download is granted under).
IMAGENET_TERMS = ("ImageNet's images are licensed for non-commercial research and educational use only (ImageNet's "
                  "terms of access, https://image-net.org/download.php): so is this dataset.")
#: What the card says of real images whose licence imagenet-plus cannot know.
OTHER_REAL_TERMS = "Check the licence of those images: this dataset may be shared and used only as it allows."


def _real_images_context(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card's real-images rows and section (None for a run without ``real``)."""
    if not config.get("real"):
        return None
    strength, captioned = config.get("init_strength"), "caption" in (config.get("prompt_strategy") or ())
    uses = ([f"generated from them (img2img at strength {strength})"] if strength else []) + (
        ["prompted with their captions"] if captioned else [])
    return {"folder": str(config["real"]), "init_strength": strength, "captioner": config.get("captioner"),
            "how": " and ".join(uses),  # generate refuses 'real' that neither use
            "license": IMAGENET_TERMS if config.get("classes") == "imagenet-1k" else OTHER_REAL_TERMS}


#: The card's words for the prompt strategies added with the recipes (said only when a run uses them).
STRATEGY_NOTES = {
    "context": "`context` places the class in one of Places365's 365 scenes",
    "domain": "`domain` asks for a photo, painting, sketch, cartoon, 3D render, …",
    "caption": "`caption` is the class name and the caption of the paired real image",
    "llm": "`llm` is one of the class's scene descriptions written by a language model",
}


def _strategy_notes(strategies: Sequence[str]) -> str:
    notes = [STRATEGY_NOTES[s] for s in STRATEGY_NOTES if s in strategies]
    return (" " + "; ".join(notes) + ".") if notes else ""


def _guidance_text(config: Mapping[str, Any]) -> Any:
    """The guidance row: the number, or the range each image drew its value from."""
    g = config.get("guidance")
    if isinstance(g, list) and len(g) == 2:
        levels = config.get("guidance_levels", DEFAULT_LEVELS)
        return f"drawn per image from [{g[0]}, {g[1]}] ({levels} levels; each image's value is its `json.guidance`)"
    return g


def card_text(inp: CardInputs) -> str:
    """Render the card (template variables in ``card_template.md``)."""
    config = inp.run_yaml.get("config", {})
    model = str(config.get("model", "unknown"))
    card_yaml = _card_yaml(inp)
    counts = inp.counts
    n_train_shards = len(inp.info.splits["train"].filenames) if "train" in inp.info.splits else 0
    n_val_shards = len(inp.info.splits["validation"].filenames) if "validation" in inp.info.splits else 0
    models = inp.summary.models.to_dict() if inp.summary is not None else {}
    context = {
        "card_yaml": card_yaml,
        "pretty_name": card_yaml["pretty_name"],
        "num_classes": len(inp.info.classes),
        "num_train": counts.get("train", 0),
        "num_validation": counts.get("validation", 0),
        "versions": inp.run_yaml.get("versions") or {},
        "model": model,
        "license_note": model_license(model, override=inp.license)[3],
        "scheduler": config.get("scheduler") or inp.scheduler or "model default",
        "steps": config.get("steps"),
        "guidance": _guidance_text(config),
        "resolution": config.get("resolution"),
        "prompt_strategies": ", ".join(config.get("prompt_strategy") or []) or str(config.get("prompt_strategy", "")),
        "negative_prompt": config.get("negative_prompt", ""),
        "seed": config.get("seed"),
        "class_spec": config.get("classes"),
        "config_hash": inp.run_yaml.get("config_hash"),
        "metrics": _metrics_rows(inp.summary),
        "reference": inp.summary.reference if inp.summary is not None else None,
        "scoring_models": ", ".join(f"{k}: {v}" for k, v in sorted(models.items()) if v) or "not recorded",
        "nsfw_filter": _nsfw_filter_text(inp, models),
        **_selection_context(inp, sum(counts.values())),
        "is_imagenet": config.get("classes") == "imagenet-1k",
        "classes": _class_rows(inp),
        "diagnosis": _diagnosis_context(inp.diagnosis),
        "real_images": _real_images_context(config),
        "more_strategies": _strategy_notes(config.get("prompt_strategy") or ()),
        "prompt_model": config.get("prompt_model"),
        "image_member": inp.info.image_ext,
        "train_shards": n_train_shards,
        "validation_shards": n_val_shards,
        "last_train_shard": f"{max(n_train_shards - 1, 0):05d}",
        "divisors": ", ".join(str(d) for d in range(1, n_train_shards + 1) if n_train_shards % d == 0),
        "year": datetime.now(timezone.utc).year,
    }
    return render_card(context)
