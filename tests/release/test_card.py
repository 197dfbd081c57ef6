"""Tests for imagenet_plus.card: licenses, size buckets, the rendered card's YAML and body, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAKE_CLASSES
from release_fixtures import make_release

from imagenet_plus.errors import UserError
from imagenet_plus.release.card import model_license, size_category, validate_card


@pytest.fixture(scope="module")
def card_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    rel = make_release(tmp_path_factory.mktemp("card"), per_class=6, quota=5, val_per_class=1, shard_size=4)
    return (rel / "README.md").read_text()


def test_model_license_table() -> None:
    assert model_license("stabilityai/sd-turbo")[:2] == ("other", "sai-nc-community")
    assert model_license("stable-diffusion-v1-5/stable-diffusion-v1-5")[0] == "creativeml-openrail-m"
    assert model_license("stabilityai/stable-diffusion-xl-base-1.0")[0] == "openrail++"
    lic, name, link, note = model_license("someone/unknown-model")
    assert (lic, name, link) == ("other", None, None) and "someone/unknown-model" in note and "Check" in note


def test_size_category() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 1_281_167, 20_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1M<n<10M", "10M<n<100M"]


def test_card_yaml_declares_everything(card_text: str) -> None:
    import datasets
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    meta = validate_card(card_text, "README.md")
    assert meta["pretty_name"].startswith("imagenet-plus")
    assert meta["license"] == "other"  # the fake run's model is not in the table
    assert meta["task_categories"] == ["image-classification"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.tar"}, {"split": "validation", "path": "data/validation-*.tar"}]}]
    info = datasets.DatasetInfo._from_yaml_dict(meta["dataset_info"])
    assert list(info.features) == ["jpg", "cls", "json", "__key__"]
    assert info.features["cls"].names == [c["id"] for c in FAKE_CLASSES]
    assert set(info.features["json"]) >= {"class_id", "class_name", "prompt", "seed", "model", "steps", "guidance",
                                          "scores"}
    assert set(info.features["json"]["scores"]) >= {"clip_score", "isc_kl", "realism", "composite"}
    assert {s.name: s.num_examples for s in info.splits.values()} == {"train": 12, "validation": 3}
    card = DatasetCard(card_text)
    assert MetadataConfigs.from_dataset_card_data(card.data)["default"]["data_files"]


def test_card_body(card_text: str) -> None:
    body = card_text.split("\n---\n", 1)[1]
    for needle in ("## How it was generated", "| steps | 1 |", "| FID (Inception pool3, vs reference) | 123.4 |",
                   "| KID | 0.05 ± 0.01 |", "| Inception Score | 3.2 ± 0.1 |", "## Selection", "## Classes",
                   "| 0 | n01440764 | tench | 4 | 1 | 1 |", "English springer", "## Limitations", "Ambiguous",
                   "Prompt adherence", "Diversity", "## Citation", "@software{imagenet_plus", "split_dataset_by_node",
                   "streaming=True", "import webdataset", "timm", "no script runs"):
        assert needle in body, needle
    assert "{{" not in card_text and "{%" not in card_text


def test_known_model_license_in_yaml(tmp_path: Path) -> None:
    from imagenet_plus.release.card import render_card

    text = render_card({"card_yaml": {"pretty_name": "x", "license": "other", "license_name": "sai-nc-community",
                                      "license_link": "https://example.invalid/LICENSE.md"}},
                       template_path=_write_template(tmp_path))
    assert "license_name: sai-nc-community" in text


def _write_template(tmp_path: Path) -> Path:
    p = tmp_path / "t.md"
    p.write_text("---\n{{ card_data }}\n---\n\n# card\n")
    return p


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("# no header\n", "no YAML header"),
        ("---\npretty_name: [unclosed\n---\nbody\n", "does not load"),
        ("---\npretty_name: x\nlicense: mit\n---\nbody\n", "lacks task_categories"),
    ],
)
def test_validate_card_errors(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle) as err:
        validate_card(text, "REL/README.md")
    assert "REL/README.md" in err.value.message


def test_validate_card_bad_features(card_text: str) -> None:
    broken = card_text.replace("dtype: image", "dtype: not_a_type", 1)
    with pytest.raises(UserError, match="do not parse"):
        validate_card(broken, "README.md")


def test_missing_template(tmp_path: Path) -> None:
    from imagenet_plus.release.card import render_card

    with pytest.raises(UserError, match="template not found"):
        render_card({"card_yaml": {}}, template_path=tmp_path / "nope.md")


def test_card_lists_diagnosis_when_the_run_was_diagnosed(tmp_path: Path) -> None:
    from conftest import write_fake_run
    from release_fixtures import write_fake_scores

    from imagenet_plus.contract import DiagnosisSummary, FlaggedClass, Geometry
    from imagenet_plus.release import ReleaseConfig, run_release
    from imagenet_plus.select import SelectConfig, run_select

    run = write_fake_run(tmp_path / "run", per_class=6, shard_size=10, size=32)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=5))
    ids = [c["id"] for c in FAKE_CLASSES]
    # what diagnose writes, built through the contract's record
    DiagnosisSummary(
        thresholds={}, reference=None, note="no real reference: real-side columns are null", classes=len(ids),
        verdict_counts={"ambiguous": 1, "concept-failure": 0, "low-diversity": 1, "low-adherence": 0,
                        "ok": len(ids) - 2},
        flagged_classes=[
            FlaggedClass(class_id=ids[1], name="crane", verdict="ambiguous", flags="ambiguous,low-adherence",
                         remedy="use the gloss prompt strategy"),
            FlaggedClass(class_id=ids[0], name="tench", verdict="low-diversity", flags="low-diversity",
                         remedy="use the diverse prompt strategy"),
        ],
        strategies={ids[1]: "gloss", ids[0]: "diverse"},
        geometry=Geometry(images=18, spread=None, modality_gap=None, real_images=None, real_spread=None,
                          centroid_cosine=None, real_modality_gap=None),
    ).write(run / "diagnosis.json")
    body = (run_release(run, tmp_path / "rel", ReleaseConfig(val_per_class=1, shard_size=4)) / "README.md").read_text()
    section = body.split("## Diagnosis", 1)[1].split("\n## ", 1)[0]
    assert f"2 classes flagged,\n{len(ids) - 2} without a flag" in section
    for needle in ("| ambiguous | 1 |", "| concept-failure | 0 |", "| low-diversity | 1 |", f"| ok | {len(ids) - 2} |",
                   f"| {ids[1]} | crane | ambiguous | ambiguous,low-adherence | use the gloss prompt strategy |",
                   f"| {ids[0]} | tench | low-diversity | low-diversity | use the diverse prompt strategy |",
                   "no real reference"):
        assert needle in section, needle
    assert section.index(ids[1]) < section.index(f"| {ids[0]} |")  # worst first, as diagnose listed them
    validate_card(body, "README.md")


def test_card_has_no_diagnosis_section_without_a_diagnosis(card_text: str) -> None:
    assert "## Diagnosis" not in card_text
