"""The NSFW detector (scorers/nsfw.py): tiny ViT classifiers whose weights make one label win."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.score.scorers.nsfw import TINY_LABELS, NsfwScorer, tiny_nsfw_dir

torch.set_num_threads(2)


def _images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3, 1, 1), generator=g) * 255 + torch.randn((n, 3, size, size), generator=g) * 30).clamp(
        0, 255).to(torch.uint8)


def _detector(tmp: Path, winner: str, labels: dict[int, str] | None = None) -> Path:
    """The tiny random detector with its classifier head set so that label ``winner`` wins by a wide margin,
    whatever the image; saved to ``tmp`` and loaded back through from_pretrained like a Hub model."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    src = tiny_nsfw_dir()
    model = ViTForImageClassification.from_pretrained(src)
    labels = labels or dict(TINY_LABELS)
    model.config.id2label, model.config.label2id = labels, {v: k for k, v in labels.items()}
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-4.0)
        model.classifier.bias[[i for i, name in labels.items() if name == winner][0]] = 4.0
    model.save_pretrained(tmp)
    ViTImageProcessor.from_pretrained(src).save_pretrained(tmp)
    return tmp


def test_nsfw_weights_flag_the_positive_and_normal_weights_do_not(tmp_path: Path) -> None:
    images = _images(3)
    flagged = NsfwScorer(str(_detector(tmp_path / "nsfw", "nsfw"))).score(images)
    clean = NsfwScorer(str(_detector(tmp_path / "normal", "normal"))).score(images)
    expected_nsfw = np.exp(4.0) / (np.exp(4.0) + np.exp(-4.0))  # softmax of the bias alone (weights are zero)
    assert flagged.shape == (3,) and flagged.dtype == np.float64
    np.testing.assert_allclose(flagged, expected_nsfw, rtol=1e-5)
    np.testing.assert_allclose(clean, 1 - expected_nsfw, rtol=1e-4)
    assert (flagged > 0.5).all() and (clean < 0.5).all()


def test_probabilities_match_the_transformers_pipeline(tmp_path: Path) -> None:
    """P(nsfw) equals what transformers' own image-classification pipeline gives on the same (PIL) images."""
    from transformers import pipeline

    scorer = NsfwScorer("tiny-random")
    images = _images(4, seed=1)
    got = scorer.score(images)
    clf = pipeline("image-classification", model=str(tiny_nsfw_dir()), device="cpu")
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    want = [next(r["score"] for r in out if r["label"] == "nsfw") for out in clf(pil, top_k=2)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # a list of 3×H×W tensors (what the score stage decodes) gives the same as the N×3×H×W tensor
    np.testing.assert_allclose(scorer.score(list(images)), got, rtol=1e-6)
    assert scorer.score(torch.zeros((0, 3, 8, 8), dtype=torch.uint8)).shape == (0,)


def test_record_names_the_detector() -> None:
    assert NsfwScorer("tiny-random").record() == {"nsfw_detector": "tiny-random", "nsfw_labels": ["nsfw"]}


def test_several_nsfw_labels_are_summed(tmp_path: Path) -> None:
    labels = {0: "drawings", 1: "hentai", 2: "neutral", 3: "porn", 4: "sexy"}
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1, image_size=32,
                    patch_size=8, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "m")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "m")
    scorer = NsfwScorer(str(tmp_path / "m"))
    images = _images(2)
    pixels = scorer.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model.eval()(pixel_values=pixels).logits, dim=-1).numpy()
    np.testing.assert_allclose(scorer.score(images), probs[:, [1, 3, 4]].sum(axis=1), rtol=1e-5)
    assert scorer.record()["nsfw_labels"] == ["hentai", "porn", "sexy"]


def test_detector_without_an_nsfw_label_is_refused(tmp_path: Path) -> None:
    folder = _detector(tmp_path / "cats", "cat", labels={0: "cat", 1: "dog"})
    with pytest.raises(UserError, match=r"has no NSFW label among \['cat', 'dog'\]"):
        NsfwScorer(str(folder))


def test_missing_detector_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="NSFW detector 'nobody/no-such-detector' is not in the local cache") as err:
        NsfwScorer("nobody/no-such-detector")
    assert "\n" not in err.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        NsfwScorer(str(tmp_path / "empty"))


def test_positive_from_encoded_bytes(tmp_path: Path) -> None:
    """The score stage's path: encoded JPEG bytes → decode_image → score."""
    from imagenet_plus.score.scorers import decode_image

    buf = io.BytesIO()
    Image.fromarray(_images(1)[0].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
    image = decode_image(buf.getvalue(), "k")
    assert NsfwScorer(str(_detector(tmp_path / "nsfw", "nsfw"))).score([image])[0] > 0.5


@pytest.mark.parametrize("winner", ["nsfw", "normal"])
def test_score_writes_nsfw_score_and_select_drops_the_flagged(tmp_path: Path, winner: str) -> None:
    """End to end: score with a detector whose head makes ``winner`` win, then select; the generator's own
    ``nsfw`` flag is false everywhere (as for sd-turbo), so only the independent check can drop images."""
    import pandas as pd
    from conftest import write_fake_run

    from imagenet_plus.contract import COL_NSFW_SCORE, REASON_NSFW, RunPaths
    from imagenet_plus.score.stage import ScoreConfig, run_score
    from imagenet_plus.select import SelectConfig, run_select

    run = write_fake_run(tmp_path / "run", per_class=2, shard_size=4, size=40)
    detector = str(_detector(tmp_path / "detector", winner))
    run_score(run, ScoreConfig(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random",
                               nsfw_model=detector, batch_size=4))
    paths = RunPaths(run)
    scores = pd.concat([pd.read_parquet(p) for p in paths.scored_parquets()])
    assert not scores["nsfw"].any()
    expected = np.exp(4.0) / (np.exp(4.0) + np.exp(-4.0))
    np.testing.assert_allclose(scores[COL_NSFW_SCORE], expected if winner == "nsfw" else 1 - expected, rtol=1e-4)
    assert json.loads(paths.models_json.read_text())["nsfw_detector"] == detector

    th = tmp_path / "thresholds.yaml"
    th.write_text("drop-duplicates: false\n")  # tiny random CLIP embeddings may look alike; only nsfw is tested
    result = run_select(run, SelectConfig(thresholds=str(th), per_class=2))
    sel = pd.read_parquet(paths.selection_parquet)
    if winner == "nsfw":
        assert (sel["reason"] == REASON_NSFW).all() and result.num_kept == 0
    else:
        assert REASON_NSFW not in set(sel["reason"]) and result.num_kept == len(sel)
