"""The dataset card of a release (``REL/README.md``): rendering from ``dataset_card/template.md`` and validation.

The card's YAML header is what the Hub (and ``datasets.load_dataset(REL)``) reads: ``configs`` maps each
split to its tar shards, and ``dataset_info.features`` declares every member of a sample (``jpg`` image,
``cls`` class label with the class ids as names, ``json`` struct, ``__key__``) so that the packaged
``webdataset`` builder gives typed columns without inference (datasets >= 4 runs no loading scripts).
The YAML is built with huggingface_hub's :class:`~huggingface_hub.DatasetCardData` and the features with
``datasets.DatasetInfo._to_yaml_dict`` (the same code that writes cards in ``push_to_hub``), so the
format is exactly what the loaders parse back; :func:`validate_card` parses it back the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError

#: The template shipped with the project (a Jinja2 markdown file; ``{{ card_data }}`` is the YAML header).
#: ``imagenet_plus/card_template.md`` links to ``dataset_card/template.md``, so wheels carry it too.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "card_template.md"

#: Model id → (card license, license name, license link). The card's license follows the generating model's.
MODEL_LICENSES: dict[str, tuple[str, str | None, str | None]] = {
    "stabilityai/sd-turbo": (
        "other", "sai-nc-community", "https://huggingface.co/stabilityai/sd-turbo/blob/main/LICENSE.md"),
    "stabilityai/sdxl-turbo": (
        "other", "sai-nc-community", "https://huggingface.co/stabilityai/sdxl-turbo/blob/main/LICENSE.md"),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("creativeml-openrail-m", None, None),
    "runwayml/stable-diffusion-v1-5": ("creativeml-openrail-m", None, None),
    "CompVis/stable-diffusion-v1-4": ("creativeml-openrail-m", None, None),
    "stabilityai/stable-diffusion-2-1": ("openrail++", None, None),
    "stabilityai/stable-diffusion-2-1-base": ("openrail++", None, None),
    "stabilityai/stable-diffusion-xl-base-1.0": ("openrail++", None, None),
    "tiny-random": ("apache-2.0", None, None),
}

#: Fields of the ``json`` member of a release sample (metadata from generate) and their datasets dtypes.
META_FIELDS: dict[str, str] = {
    "class_id": "string", "class_name": "string", "label": "int64", "prompt": "string", "negative_prompt": "string",
    "seed": "int64", "model": "string", "scheduler": "string", "steps": "int64", "guidance": "float64",
    "width": "int64", "height": "int64", "attempt": "int64", "nsfw": "bool", "strategy": "string", "index": "int64",
}
#: Scores copied from ``RUN/scores`` (+ the select composite) into ``json["scores"]``; null when not computed.
SCORE_FIELDS: dict[str, str] = {
    "clip_score": "float64", "clip_class_score": "float64", "clip_class_prob": "float64", "clip_class_rank": "int64",
    "isc_kl": "float64", "classifier_top1": "bool", "classifier_top5": "bool", "classifier_prob": "float64",
    "realism": "float64", "composite": "float64",
}
SPLITS = ("train", "validation")
REQUIRED_YAML_KEYS = ("pretty_name", "license", "task_categories", "size_categories", "configs", "dataset_info")


def model_license(model: str) -> tuple[str, str | None, str | None, str]:
    """The card license for a generating model.

    Returns:
        (license, license_name, license_link, note); unknown models give ``other`` and a note asking the
        publisher to check the model's license.
    """
    if model in MODEL_LICENSES:
        lic, name, link = MODEL_LICENSES[model]
        note = f"Images generated with `{model}`; the dataset inherits that model's license ({name or lic})."
        return lic, name, link, note
    note = (f"The license of `{model}` is not in imagenet-plus's table: the card says `other`. Check the model's "
            "license and terms of use before publishing, and edit `license` accordingly.")
    return "other", None, None, note


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "1B<n<10B"


def json_fields(extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``json`` member's struct: {field: dtype or {score: dtype}} (``scores`` nested)."""
    fields: dict[str, Any] = dict(META_FIELDS)
    fields.update(extra or {})
    fields["scores"] = dict(SCORE_FIELDS)
    return fields


def release_features(class_ids: Sequence[str], image_ext: str, extra_meta: Mapping[str, str] | None = None) -> Any:
    """The ``datasets.Features`` of a release sample as the webdataset builder yields it.

    Args:
        class_ids: class names of the ClassLabel, in label order (unique wnids / slugs).
        image_ext: the image member (``jpg``, ``png`` or ``webp``).
        extra_meta: metadata fields beyond :data:`META_FIELDS` (name → dtype).
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
