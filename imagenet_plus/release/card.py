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

#: The template shipped with the project (a Jinja2 markdown file; ``{{ card_data }}`` is the YAML header).
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
    "black-forest-labs/FLUX.1-schnell": ("apache-2.0", None, None),
    "black-forest-labs/FLUX.1-dev": (
        "other", "flux-1-dev-non-commercial-license",
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-3.5-large": (
        "other", "stabilityai-ai-community",
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-3.5-large-turbo": (
        "other", "stabilityai-ai-community",
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large-turbo/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-3.5-medium": (
        "other", "stabilityai-ai-community",
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/blob/main/LICENSE.md"),
    # the tiny test pipelines are random weights built by imagenet-plus itself
    "tiny-random": ("apache-2.0", None, None),
    "tiny-random-flux": ("apache-2.0", None, None),
    "tiny-random-sd3": ("apache-2.0", None, None),
}

REQUIRED_YAML_KEYS = ("pretty_name", "license", "task_categories", "size_categories", "configs", "dataset_info")


def model_license(model: str, override: str | None = None,
                  required: bool = False) -> tuple[str, str | None, str | None, str]:
    """The card license for a generating model: the user's ``override``, else :data:`MODEL_LICENSES`.

    Args:
        model: the model id recorded in ``run.yaml``.
        override: a license the publisher names: a Hub license id (``apache-2.0``, ``mit``…) or
            ``other:NAME:LINK`` for a custom license (LINK may hold colons). Wins over the table.
        required: raise instead of falling back to ``other`` for a model outside the table (publish
            passes ``True``: a dataset must not go out under an unknown license).

    Returns:
        (license, license_name, license_link, note); an unknown model without override gives ``other`` and a
        note asking the publisher to check the model's license (when not ``required``).

    Raises:
        UserError: ``required`` and the model's license is unknown with no override; a malformed override.
    """
    if override:
        text = override.strip()
        if text.startswith("other:"):
            parts = text.split(":", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise UserError(f"license {override!r}: write other:NAME:LINK for a custom license")
            lic, name, link = "other", parts[1], parts[2]
        elif not text or ":" in text or " " in text:
            raise UserError(f"license {override!r}: give a Hub license id (e.g. apache-2.0) or other:NAME:LINK")
        else:
            lic, name, link = text, None, None
        note = (f"Images generated with `{model}`; the publisher states the license ({name or lic}). Check that "
                "the model's terms allow it.")
        return lic, name, link, note
    if model in MODEL_LICENSES:
        lic, name, link = MODEL_LICENSES[model]
        note = f"Images generated with `{model}`; the dataset inherits that model's license ({name or lic})."
        if link:
            note += f" Terms: {link}"
        return lic, name, link, note
    if required:
        raise UserError(
            f"the license of model {model!r} is unknown to imagenet-plus: name the dataset's license "
            "(a Hub license id such as apache-2.0, or other:NAME:LINK) after checking the model's terms"
        )
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
