"""The real reference: image folders (per-class), WebDataset shards, statistics files, and the feature cache."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.reference import detect_kind, load_reference, save_reference

torch.set_num_threads(2)


class FakeInception:
    """Stands in for InceptionV3: 2048-d features from the image's channel means and size (fast)."""

    weights_id = "fake-weights"

    def __init__(self) -> None:
        self.calls = 0

    def features(self, images):
        self.calls += 1
        rows = []
        for img in images:
            f = img.float()
            size = torch.tensor([img.shape[1], img.shape[2]]).float()
            base = torch.cat([f.mean(dim=(1, 2)), f.std(dim=(1, 2)), size])
            rows.append(base.repeat(2048 // 8 + 1)[:2048] * torch.linspace(0.5, 1.5, 2048))
        return torch.stack(rows), torch.zeros(len(images), 1008)


def _png(seed: int, size=(20, 24)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, per_class: int = 3, classes=("n01440764", "n02102040")) -> Path:
    for c, wnid in enumerate(classes):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            (root / wnid / f"img_{i}.png").write_bytes(_png(10 * c + i))
    return root


def test_folder_reference_per_class_and_cached(tmp_path: Path):
    ref_dir = _folder(tmp_path / "val")
    fake = FakeInception()
    ref = load_reference(ref_dir, fake, batch_size=4, show_progress=False)
    assert ref.kind == "folder" and ref.num_images == 6 and ref.features.shape == (6, 2048)
    assert ref.class_ids == ["n01440764"] * 3 + ["n02102040"] * 3
    assert ref.class_features("n02102040").shape == (3, 2048)
    assert ref.class_features("n99999999") is None
    assert fake.calls == 2  # batches of 4: 4 + 2
    np.testing.assert_allclose(ref.stats["mu"], ref.features.mean(0), rtol=1e-5)
    # second load: same bytes and weights → features from the cache, the network is not called
    again = load_reference(ref_dir, fake, batch_size=4, show_progress=False)
    assert fake.calls == 2
    np.testing.assert_array_equal(again.features, ref.features)
    assert again.content_hash == ref.content_hash
    # changed content → new hash → recomputed
    (ref_dir / "n01440764" / "img_0.png").write_bytes(_png(99))
    changed = load_reference(ref_dir, fake, batch_size=4, show_progress=False)
    assert changed.content_hash != ref.content_hash and fake.calls == 4
    assert ref.describe()["per_class"] is True


def test_webdataset_reference(tmp_path: Path):
    from imagenet_plus.shards import PartialTarWriter

    (tmp_path / "shards").mkdir()
    with PartialTarWriter(tmp_path / "shards" / "real-00000.tar") as w:
        for i in range(4):
            w.write({"__key__": f"s{i:03d}", "png": _png(i), "json": json.dumps({"class_id": f"c{i % 2}"}).encode()})
    fake = FakeInception()
    ref = load_reference(tmp_path / "shards", fake, batch_size=8, show_progress=False)
    assert ref.kind == "webdataset" and ref.num_images == 4 and ref.class_ids == ["c0", "c1", "c0", "c1"]
    single = load_reference(tmp_path / "shards" / "real-00000.tar", fake, batch_size=8, show_progress=False)
    np.testing.assert_array_equal(single.features, ref.features)


def test_statistics_file_roundtrip(tmp_path: Path):
    ref = load_reference(_folder(tmp_path / "val"), FakeInception(), show_progress=False)
    save_reference(ref, tmp_path / "ref.npz")
    loaded = load_reference(tmp_path / "ref.npz", None)
    assert loaded.kind == "statistics" and detect_kind(tmp_path / "ref.npz") == "statistics"
    np.testing.assert_array_equal(loaded.features, ref.features)
    np.testing.assert_allclose(loaded.stats["sigma"], ref.stats["sigma"])
    assert loaded.class_ids == ref.class_ids
    np.savez(tmp_path / "stats_only.npz", mu=ref.stats["mu"], sigma=ref.stats["sigma"])
    only = load_reference(tmp_path / "stats_only.npz", None)
    assert only.features is None and only.num_images is None and only.class_features("n01440764") is None


def test_reference_errors(tmp_path: Path):
    fake = FakeInception()
    with pytest.raises(UserError, match="reference not found: .*nowhere"):
        load_reference(tmp_path / "nowhere", fake)
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(UserError, match="reference folder .*empty holds no images"):
        load_reference(tmp_path / "empty", fake)
    bad = _folder(tmp_path / "bad")
    (bad / "n02102040" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(UserError, match="unreadable image in reference: .*broken.jpg"):
        load_reference(bad, fake, show_progress=False)
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(UserError, match="wrong.npz: mu must be \\(2048,\\)"):
        load_reference(tmp_path / "wrong.npz", None)
    np.savez(tmp_path / "nomu.npz", sigma=np.eye(2048))
    with pytest.raises(UserError, match="nomu.npz has no 'mu' array"):
        load_reference(tmp_path / "nomu.npz", None)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="expected an image folder, a .tar shard or a .npz"):
        load_reference(tmp_path / "notes.txt", None)
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "x.tar").write_bytes(b"\0" * 100 + b"garbage")
    with pytest.raises(UserError, match="x.tar"):
        load_reference(tmp_path / "trunc", fake, show_progress=False)


def test_cached_reference_is_not_read_again(tmp_path: Path, monkeypatch):
    """The cache key comes from names, sizes and times: a cached folder's images are not opened again."""
    ref_dir = _folder(tmp_path / "val")
    first = load_reference(ref_dir, FakeInception(), show_progress=False)
    opened: list[Path] = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(ref_dir)):
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self) or b"")
    again = load_reference(ref_dir, FakeInception(), show_progress=False)
    assert opened == [] and again.content_hash == first.content_hash
    np.testing.assert_array_equal(again.features, first.features)
    monkeypatch.undo()
    import os

    os.utime(ref_dir / "n01440764" / "img_1.png", ns=(1, 1))  # touched: a new key, recomputed
    assert load_reference(ref_dir, FakeInception(), show_progress=False).content_hash != first.content_hash


def _png_shape(seed: int, height: int, width: int) -> bytes:
    return _png(seed, size=(height, width))


def test_images_of_different_shapes_run_in_full_batches(tmp_path: Path):
    """Photos of any shapes are centre-cropped and resized to 299 px, so the network sees full batches."""
    from imagenet_plus.scorers.inception import InceptionScorer

    shapes = [(20, 24), (31, 17), (40, 40), (12, 50), (299, 299)]
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    for i, (h, w) in enumerate(shapes):
        (tmp_path / "val" / "n01440764" / f"{i}.png").write_bytes(_png_shape(i, h, w))
    batches: list[tuple[int, ...]] = []

    def forward(x):  # the network's input, recorded; random outputs (the real network is tested in test_score)
        batches.append(tuple(x.shape))
        return torch.randn(len(x), 2048), torch.randn(len(x), 1008)

    inception = object.__new__(InceptionScorer)  # the real batching of InceptionScorer.features, no weights
    inception.weights_id = "stub-forward"
    inception.forward = forward
    ref = load_reference(tmp_path / "val", inception, batch_size=2, show_progress=False)
    assert batches == [(2, 3, 299, 299), (2, 3, 299, 299), (1, 3, 299, 299)]
    assert ref.features.shape == (5, 2048) and ref.describe()["protocol"] == "center-crop-299-v2"


def test_center_crop_resize_is_pil_crop_then_torch_fidelity_resize():
    """The crop equals PIL's centred box; the resize is the extractor's own, rounded to uint8."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from imagenet_plus.scorers.inception import center_crop_resize

    for h, w in [(31, 17), (12, 50), (40, 40), (299, 400)]:
        arr = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        side = min(h, w)
        left, top = (w - side) // 2, (h - side) // 2
        crop = np.array(Image.fromarray(arr).crop((left, top, left + side, top + side)))
        expected = interpolate_bilinear_2d_like_tensorflow1x(
            torch.from_numpy(crop).permute(2, 0, 1)[None].float(), size=(299, 299), align_corners=False)[0]
        got = center_crop_resize(torch.from_numpy(arr).permute(2, 0, 1))
        assert got.dtype == torch.uint8 and got.shape == (3, 299, 299)
        assert float((got.float() - expected).abs().max()) <= 0.5 + 1e-4


def test_cache_key_includes_the_protocol(tmp_path: Path, monkeypatch):
    """Features cached under another extraction protocol are extracted again."""
    import imagenet_plus.reference as reference

    ref_dir = _folder(tmp_path / "val")
    fake = FakeInception()
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    assert fake.calls == 1
    monkeypatch.setattr(reference, "PROTOCOL", "older-protocol-v1")
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    assert fake.calls == 2
