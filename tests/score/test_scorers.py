"""The three scorers: tiny-random models of the real architectures, loaded through the real loaders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.errors import UserError

torch.set_num_threads(2)


def _images(n: int, size: int = 40, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        base = torch.rand((3, 1, 1), generator=g) * 255
        noise = torch.randn((3, size, size), generator=g) * (10 + 20 * i)
        out.append((base + noise).clamp(0, 255).to(torch.uint8))
    return out


def test_decode_image_matches_torch_fidelity_reader():
    from torchvision.transforms.functional import pil_to_tensor

    from imagenet_plus.score.scorers import decode_image

    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    got = decode_image(buf.getvalue(), "x")
    assert got.dtype == torch.uint8 and got.shape == (3, 20, 30)
    assert torch.equal(got, pil_to_tensor(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    with pytest.raises(UserError, match="unreadable image shard.tar:key"):
        decode_image(b"not an image", "shard.tar:key")


def test_tiny_clip_roundtrip_and_batch_invariance():
    from transformers import CLIPModel

    from imagenet_plus.score.scorers.clip import ClipScorer, tiny_clip_dir

    folder = tiny_clip_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert isinstance(CLIPModel.from_pretrained(folder), CLIPModel)
    scorer = ClipScorer("tiny-random")
    imgs = _images(6)
    full = scorer.embed_images(imgs)
    parts = torch.cat([scorer.embed_images(imgs[i : i + 2]) for i in range(0, 6, 2)])
    assert full.shape == (6, scorer.dim)
    torch.testing.assert_close(full.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(full, parts, atol=1e-5, rtol=1e-4)
    texts = scorer.embed_texts(["a photo of a tench", "a photo of a chain saw", "a photo of a tench"])
    torch.testing.assert_close(texts[0], texts[2])
    assert not torch.allclose(texts[0], texts[1])


def test_clip_missing_model_is_a_user_error(tmp_path: Path):
    from imagenet_plus.score.scorers.clip import ClipScorer

    with pytest.raises(UserError, match="CLIP model 'nobody/no-such-clip' is not in the local cache"):
        ClipScorer("nobody/no-such-clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        ClipScorer(str(tmp_path / "empty"))


@pytest.mark.slow
def test_tiny_inception_is_torch_fidelity_architecture_with_varied_features():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from imagenet_plus.score.scorers.inception import InceptionScorer, tiny_inception_weights

    path = tiny_inception_weights()
    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    scorer = InceptionScorer("tiny-random")
    imgs = _images(3) + _images(1, size=24, seed=5)  # two sizes: grouped, each resized to 299 by the extractor
    pool, logits = scorer.features(imgs)
    assert pool.shape == (4, 2048) and logits.shape == (4, 1008)
    with torch.inference_mode():
        (expected,) = direct(torch.stack(imgs[:3]))
    torch.testing.assert_close(pool[:3], expected, atol=1e-4, rtol=1e-4)
    one_by_one = torch.cat([scorer.features([im])[0] for im in imgs[:2]])
    torch.testing.assert_close(pool[:2], one_by_one, atol=1e-4, rtol=1e-4)
    assert pool.std(dim=0).mean() > 1e-3  # calibrated batch norm: features differ between images
    assert logits.softmax(1).max(1).values.max() > 2 / 1008  # p(y|x) is not uniform


@pytest.mark.slow
def test_full_batch_features_equal_torch_fidelity_extractor_image_by_image():
    """features_full_batch (each image resized to 299 px in float, then one batch) gives the features of
    torch-fidelity's own extractor fed each uint8 image alone; on a 299 px uint8 batch, forward_resized is its
    forward bit for bit."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from imagenet_plus.score.scorers.inception import FEATURES, InceptionScorer, tiny_inception_weights

    direct = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                         feature_extractor_weights_path=str(tiny_inception_weights()))
    scorer = InceptionScorer("tiny-random")
    g = torch.Generator().manual_seed(7)
    imgs = _images(1, size=40) + [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
                                  for h, w in [(31, 17), (299, 299), (330, 310)]]
    pool, logits = scorer.features_full_batch(imgs)
    assert pool.shape == (4, 2048) and logits.shape == (4, 1008) and pool.dtype == logits.dtype == torch.float32
    for i, img in enumerate(imgs):
        with torch.inference_mode():
            expected_pool, expected_logits = direct(img[None])
        torch.testing.assert_close(pool[i], expected_pool[0], rtol=1e-5, atol=1e-5 * float(expected_pool.abs().max()))
        torch.testing.assert_close(logits[i], expected_logits[0], rtol=1e-5,
                                   atol=1e-5 * float(expected_logits.abs().max()))
    batch = torch.stack(_images(2, size=299, seed=3))
    with torch.inference_mode():
        expected_pool, expected_logits = direct(batch)
    got_pool, got_logits = scorer.forward_resized(batch.float())
    assert torch.equal(got_pool, expected_pool) and torch.equal(got_logits, expected_logits)
    assert torch.equal(scorer.resize_to_input(batch[0]), batch[:1].float())  # the resize of 299 px is the identity


def test_inception_weight_errors(tmp_path: Path):
    from imagenet_plus.score.scorers.inception import InceptionScorer

    with pytest.raises(UserError, match="inception weights file not found: .*missing.pth"):
        InceptionScorer(str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, wrong)
    with pytest.raises(UserError, match="wrong.pth does not fit torch-fidelity's InceptionV3"):
        InceptionScorer(str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello, not torch")
    with pytest.raises(UserError, match="garbage.pth is not a PyTorch state dict"):
        InceptionScorer(str(garbage))


def test_inception_default_weights_offline_is_a_user_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from imagenet_plus.score.scorers.inception import InceptionScorer

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="InceptionV3 weights file is not in the local cache.*--inception-weights"):
        InceptionScorer(None)


def test_tiny_classifier_and_errors(tmp_path: Path):
    import timm
    from timm.models import save_for_hf

    from imagenet_plus.score.scorers.classifier import ClassifierScorer, imagenet_targets, tiny_classifier_dir

    assert (tiny_classifier_dir() / "config.json").is_file()
    scorer = ClassifierScorer("tiny-random")
    probs = scorer.probabilities(_images(3) + _images(1, size=24))
    assert probs.shape == (4, 1000)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    again = ClassifierScorer(str(tiny_classifier_dir()))  # the same folder given as a path
    torch.testing.assert_close(again.probabilities(_images(3)), probs[:3])
    assert imagenet_targets(["n01440764", "n15075141", "my_custom_class"]) == [0, 999, None]

    with pytest.raises(UserError, match="unknown classifier 'no_such_net_v9'"):
        ClassifierScorer("no_such_net_v9")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(UserError, match="noconfig has no config.json"):
        ClassifierScorer(str(tmp_path / "noconfig"))
    ten = timm.create_model("test_convnext", pretrained=False, num_classes=10)
    save_for_hf(ten, str(tmp_path / "ten"), safe_serialization=True)
    with pytest.raises(UserError, match="predicts 10 classes"):
        ClassifierScorer(str(tmp_path / "ten"))
    with pytest.raises(UserError, match="classifier 'resnet18.a1_in1k' is not in the local cache.*hf download timm/"):
        ClassifierScorer("resnet18.a1_in1k")  # a real name whose weights are not cached (offline)


class _NotWeights:
    """A picklable object that is not a state dict (a pickle may run code when loaded without weights_only)."""

    def __init__(self) -> None:
        self.payload = "anything"


def test_inception_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path: Path, monkeypatch, capsys):
    import sys

    from conftest import write_fake_run

    from imagenet_plus.cli import main
    from imagenet_plus.score.scorers.inception import check_state_dict

    pickled = tmp_path / "model.pth"
    torch.save({"model": _NotWeights()}, pickled)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(UserError, match="model.pth is not a PyTorch state dict .*weights_only=True"):
        check_state_dict(pickled)
    with pytest.raises(UserError, match="list.pth is not a PyTorch state dict of tensors .*list"):
        check_state_dict(listed)
    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=5, size=32)
    monkeypatch.setattr(sys, "argv", ["imagenet-plus", "score", str(run), "--inception-weights", str(pickled),
                                      "--clip-model", "tiny-random", "--classifier", "tiny-random",
                                      "--nsfw-model", "none"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "model.pth is not a PyTorch state dict" in err and "Traceback" not in err
    assert not (run / "scores").exists()
