"""The dataset card of a release (``REL/README.md``): rendering from ``card_template.md`` and validation.

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

from imagenet_plus.contract import RELEASE_SCORE_FIELDS, SAMPLE_FIELDS, SCORES_MEMBER
from imagenet_plus.errors import UserError
from imagenet_plus.models.registry import model_license  # noqa: F401 (the card's licence follows the model's)

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
    """The ``json`` member's struct: {field: dtype or {score: dtype}} (``scores`` nested)."""
    fields: dict[str, Any] = dict(SAMPLE_FIELDS)
    fields.update(extra or {})
    fields[SCORES_MEMBER] = dict(RELEASE_SCORE_FIELDS)
    return fields


def release_features(class_ids: Sequence[str], image_ext: str, extra_meta: Mapping[str, str] | None = None) -> Any:
    """The ``datasets.Features`` of a release sample as the webdataset builder yields it.

    Args:
        class_ids: class names of the ClassLabel, in label order (unique wnids / slugs).
        image_ext: the image member (``jpg``, ``png`` or ``webp``).
        extra_meta: metadata fields beyond :data:`~imagenet_plus.contract.SAMPLE_FIELDS` (name → dtype).
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
