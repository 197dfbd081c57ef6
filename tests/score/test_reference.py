"""The real reference: image folders (per-class), WebDataset shards, statistics files, and the feature cache."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.score.reference import detect_kind, load_reference, save_reference

torch.set_num_threads(2)


class FakeInception:
    """Stands in for InceptionV3: 2048-d features from the image's channel means and size (fast)."""

    weights_id = "fake-weights"

    def __init__(self) -> None:
        self.calls = 0

    def features_full_batch(self, images):
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
    from imagenet_plus.io.tar import PartialTarWriter

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
    """Photos of any shapes are centre-cropped and resized to 299 px in float, so the network sees full batches."""
    from types import SimpleNamespace

    from imagenet_plus.score.scorers.inception import InceptionScorer

    shapes = [(20, 24), (31, 17), (40, 40), (12, 50), (299, 299)]
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    for i, (h, w) in enumerate(shapes):
        (tmp_path / "val" / "n01440764" / f"{i}.png").write_bytes(_png_shape(i, h, w))
    batches: list[tuple[tuple[int, ...], torch.dtype]] = []

    def forward_resized(x):  # the network's input, recorded; random outputs (the real network: test_scorers)
        batches.append((tuple(x.shape), x.dtype))
        return torch.randn(len(x), 2048), torch.randn(len(x), 1008)

    inception = object.__new__(InceptionScorer)  # the real resize and batching of features_full_batch, no weights
    inception.weights_id = "stub-forward"
    inception.device = torch.device("cpu")
    inception.model = SimpleNamespace(feature_extractor_internal_dtype=torch.float32)
    inception.forward_resized = forward_resized
    ref = load_reference(tmp_path / "val", inception, batch_size=2, show_progress=False)
    assert batches == [((2, 3, 299, 299), torch.float32)] * 2 + [((1, 3, 299, 299), torch.float32)]
    assert ref.features.shape == (5, 2048) and ref.describe()["protocol"] == "center-crop-299-float-v3"


def test_center_crop_is_pil_crop():
    """The crop is PIL's centred box with the same integer offsets, pixel for pixel."""
    from imagenet_plus.score.scorers.inception import center_crop

    for h, w in [(31, 17), (12, 50), (40, 40), (299, 400), (7, 8)]:
        arr = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        side = min(h, w)
        left, top = (w - side) // 2, (h - side) // 2
        expected = np.array(Image.fromarray(arr).crop((left, top, left + side, top + side)))
        got = center_crop(torch.from_numpy(arr).permute(2, 0, 1))
        assert got.dtype == torch.uint8 and got.is_contiguous()
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_cache_key_includes_the_protocol(tmp_path: Path, monkeypatch):
    """Features cached under another extraction protocol are extracted again."""
    import imagenet_plus.score.reference as reference

    ref_dir = _folder(tmp_path / "val")
    fake = FakeInception()
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    assert fake.calls == 1
    monkeypatch.setattr(reference, "PROTOCOL", "older-protocol-v1")
    load_reference(ref_dir, fake, batch_size=8, show_progress=False)
    assert fake.calls == 2


def _cache_arrays(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for f in sorted((cache / "reference").glob("*.npz")):
        with np.load(f) as data:
            out[f.name] = (data["features"], data["class_ids"])
    return out


def _two_ranks(spec: Path, parts: Path, fake, batch_size: int, check=None):
    """Rank 1 then rank 0 of a simulated 2-process launch (rank 0 would be the one that merges)."""
    from imagenet_plus.score.reference import load_reference_part

    parts.mkdir(exist_ok=True)
    other = load_reference_part(spec, fake, parts, rank=1, world_size=2, batch_size=batch_size, show_progress=False,
                                check=check)
    main = load_reference_part(spec, fake, parts, rank=0, world_size=2, batch_size=batch_size, show_progress=False,
                               check=check)
    return main, other


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_ranks_extract_their_blocks_and_the_merge_equals_one_process(tmp_path: Path, monkeypatch, kind):
    """Two simulated ranks extract one block each; the merged features, class ids and cache entry are those of
    a single-process load_reference (in its own cache folder), in order."""
    from imagenet_plus.io.tar import PartialTarWriter
    from imagenet_plus.score.reference import ReferenceParts, part_block

    if kind == "folder":  # 7 images in batches of 2: 4 batches, rank 0 gets images 0-3, rank 1 images 4-6
        spec = _folder(tmp_path / "val", per_class=3)
        (spec / "n03000684").mkdir()
        (spec / "n03000684" / "odd.png").write_bytes(_png(77, size=(31, 17)))
        expected_blocks = [(0, 4), (4, 7)]
    else:  # 3 tars of 3 samples: rank 0 gets tar 0, rank 1 tars 1-2
        spec = tmp_path / "shards"
        spec.mkdir()
        for t in range(3):
            with PartialTarWriter(spec / f"real-{t:05d}.tar") as w:
                for i in range(3):
                    w.write({"__key__": f"s{t}{i}", "png": _png(10 * t + i),
                             "json": json.dumps({"class_id": f"c{(t + i) % 2}"}).encode()})
        expected_blocks = [(0, 1), (1, 3)]
    single_cache, multi_cache = tmp_path / "cache-single", tmp_path / "cache-multi"
    monkeypatch.setenv("IMAGENET_PLUS_CACHE", str(single_cache))
    single = load_reference(spec, FakeInception(), batch_size=2, show_progress=False)
    monkeypatch.setenv("IMAGENET_PLUS_CACHE", str(multi_cache))
    fake = FakeInception()
    main, other = _two_ranks(spec, tmp_path / "parts", fake, batch_size=2)
    assert other is None and isinstance(main, ReferenceParts)
    num_items = len(list(spec.rglob("*.png"))) if kind == "folder" else 3
    assert [part_block(kind, num_items, r, 2, 2) for r in range(2)] == expected_blocks
    parts = sorted((tmp_path / "parts").glob("*.npz"))
    assert [p.name.rsplit("-part-", 1)[1] for p in parts] == ["00000-of-00002.npz", "00001-of-00002.npz"]
    rows = []
    for p in parts:
        with np.load(p) as data:
            rows.append(len(data["features"]))
    assert rows == ([4, 3] if kind == "folder" else [3, 6])
    assert not list((multi_cache / "reference").glob("*.npz"))  # the main rank writes the cache once merged
    merged = main.merge(show_progress=False)
    np.testing.assert_array_equal(merged.features, single.features)
    assert merged.class_ids == single.class_ids and merged.content_hash == single.content_hash
    np.testing.assert_allclose(merged.stats["sigma"], single.stats["sigma"], rtol=1e-6, atol=1e-9)
    assert merged.describe() == single.describe()
    one, two = _cache_arrays(single_cache), _cache_arrays(multi_cache)
    assert list(one) == list(two) and len(one) == 1
    for name in one:
        np.testing.assert_array_equal(one[name][0], two[name][0])
        np.testing.assert_array_equal(one[name][1], two[name][1])
    # a second launch finds the cache: rank 0 returns the reference, rank 1 does nothing, no network call
    calls = fake.calls
    main, other = _two_ranks(spec, tmp_path / "parts2", fake, batch_size=2)
    assert other is None and fake.calls == calls and not list((tmp_path / "parts2").iterdir())
    np.testing.assert_array_equal(main.features, single.features)


def test_a_missing_part_is_extracted_by_the_main_rank(tmp_path: Path, capsys):
    """A rank that wrote no part (its node's cache had the features) leaves its block to the main rank."""
    from imagenet_plus.score.reference import load_reference_part

    spec = _folder(tmp_path / "val")
    single = load_reference(spec, FakeInception(), batch_size=2, show_progress=False)
    for f in (Path(os.environ["IMAGENET_PLUS_CACHE"]) / "reference").glob(f"{single.content_hash}-*"):
        f.unlink()
    main = load_reference_part(spec, FakeInception(), tmp_path, rank=0, world_size=2, batch_size=2,
                               show_progress=False)
    merged = main.merge(show_progress=False)
    assert "no reference part from rank 1: extracting its items [2, 6)" in capsys.readouterr().err
    np.testing.assert_array_equal(merged.features, single.features)
    assert merged.class_ids == single.class_ids


def test_a_bad_image_in_one_block_fails_that_rank_and_check_stops_the_other(tmp_path: Path):
    from imagenet_plus.score.reference import load_reference_part

    spec = _folder(tmp_path / "val", per_class=4)
    (spec / "n02102040" / "img_3.png").write_bytes(b"\x89PNG broken")  # the last image: rank 1's block
    fake = FakeInception()
    with pytest.raises(UserError, match="unreadable image in reference: .*img_3.png"):
        load_reference_part(spec, fake, tmp_path, rank=1, world_size=2, batch_size=2, show_progress=False)
    assert not list(tmp_path.glob("*.npz")) and fake.calls == 1  # its first batch was good
    fake.calls = 0

    def another_rank_failed():
        raise UserError("rank 1 failed, stopping: unreadable image")

    with pytest.raises(UserError, match="rank 1 failed"):
        load_reference_part(spec, fake, tmp_path, rank=0, world_size=2, batch_size=2, show_progress=False,
                            check=another_rank_failed)
    assert fake.calls == 0 and not list(tmp_path.glob("*.npz"))
    spec = _folder(tmp_path / "one" / "val", per_class=1, classes=("n01440764",))
    with pytest.raises(UserError, match="val holds 1 image; FID needs at least 2"):  # before any extraction
        load_reference_part(spec, fake, tmp_path, rank=1, world_size=2, batch_size=2, show_progress=False)
    assert fake.calls == 0
    with pytest.raises(UserError, match="val holds 1 image; FID needs at least 2"):
        load_reference(spec, fake, show_progress=False)


def test_statistics_file_is_read_by_the_main_rank_only(tmp_path: Path):
    from imagenet_plus.score.reference import load_reference_part

    ref = load_reference(_folder(tmp_path / "val"), FakeInception(), show_progress=False)
    save_reference(ref, tmp_path / "ref.npz")
    assert load_reference_part(tmp_path / "ref.npz", None, tmp_path, rank=1, world_size=2) is None
    main = load_reference_part(tmp_path / "ref.npz", None, tmp_path, rank=0, world_size=2)
    assert main.kind == "statistics"
    np.testing.assert_array_equal(main.features, ref.features)


# ---------------------------------------------------------------------------------------------
# The metrics against torch-fidelity's calculate_metrics on the same crops, with the same weights file.

#: Reference image shapes (height, width): varied squares (the crop is the identity), and varied non-square
#: photos (a crop on either axis, odd and even margins); each set has one image larger than 299 px.
REFERENCE_SHAPES = {
    "square": [(23, 23), (40, 40), (57, 57), (320, 320), (17, 17), (35, 35)],
    "non-square": [(40, 56), (31, 17), (12, 50), (330, 310), (33, 80), (70, 29)],
}


def _photo_folder(root: Path, shapes: list[tuple[int, int]]) -> Path:
    """Three wnid folders of two PNGs each: a class colour plus noise, in the given shapes."""
    from conftest import FAKE_CLASSES

    rng = np.random.default_rng(3)
    for c in FAKE_CLASSES:
        (root / c["id"]).mkdir(parents=True)
        for i in range(2):
            h, w = shapes[2 * c["label"] + i]
            colour = np.array([(c["label"] * 97 + 30) % 256, (c["label"] * 57 + 60) % 256, (c["label"] * 31) % 256])
            img = np.clip(colour + rng.normal(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c["id"] / f"{i}.png")
    return root


def _pil_center_crops(src: Path, dst: Path) -> Path:
    """Each image's largest centred square, cut by PIL and saved as PNG (lossless) under the same name."""
    for path in sorted(src.rglob("*.png")):
        with Image.open(path) as img:
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            img.crop((left, top, left + side, top + side)).save(out)
    return dst


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """12 generated 48 px JPEGs (3 classes) scored without a reference, and the same images as files."""
    from conftest import write_fake_run

    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.stage import ScoreConfig, run_score

    base = tmp_path_factory.mktemp("vs-torch-fidelity")
    run = write_fake_run(base / "run", per_class=4, shard_size=5, size=48)
    tiny = dict(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random",
                nsfw_model="none")
    run_score(run, ScoreConfig(batch_size=5, **tiny))
    files = base / "generated-files"
    files.mkdir()
    for tar in sorted((run / "generated").glob("*.tar")):
        for sample in iter_shard(tar):
            (files / f"{sample['__key__']}.jpg").write_bytes(sample["jpg"])
    return run, files, tiny, base


@pytest.mark.slow
@pytest.mark.parametrize("shapes", ["square", "non-square"])
def test_fid_kid_is_equal_torch_fidelity_on_the_centre_crops(generated_run, tmp_path: Path, shapes: str):
    """``score --reference`` on photos of varied sizes gives torch-fidelity's FID, KID and IS within 1e-3.

    torch-fidelity reads the generated JPEGs and the reference's centre crops (cut by PIL, saved as PNG; for
    squares, the reference files themselves) as files, and resizes each to 299 px in float inside its own
    extractor, with the same InceptionV3 weights file. Each set includes an image larger than 299 px.
    """
    import torch_fidelity

    from imagenet_plus.score.scorers.inception import tiny_inception_weights
    from imagenet_plus.score.stage import ScoreConfig, run_score

    run, generated_files, tiny, base = generated_run
    reference = _photo_folder(tmp_path / "val", REFERENCE_SHAPES[shapes])
    crops = reference if shapes == "square" else _pil_center_crops(reference, tmp_path / "crops")
    assert sorted(Image.open(p).size[0] for p in crops.rglob("*.png")) == sorted(
        min(h, w) for h, w in REFERENCE_SHAPES[shapes])
    summary = run_score(run, ScoreConfig(reference=str(reference), batch_size=5, **tiny))  # the dataset pass only
    assert summary.num_images == 12 and summary.reference["num_images"] == 6
    expected = torch_fidelity.calculate_metrics(
        input1=str(generated_files), input2=str(crops), fid=True, kid=True, kid_subset_size=6, isc=True,
        isc_splits=10, samples_find_deep=True, feature_extractor_weights_path=str(tiny_inception_weights()),
        cuda=False, verbose=False, batch_size=1, save_cpu_ram=True,  # batch 1: the crops have different sizes
        cache=True, cache_root=str(base / "torch-fidelity-cache"), input1_cache_name="generated")
    pairs = {"fid": "frechet_inception_distance", "kid_mean": "kernel_inception_distance_mean",
             "inception_score_mean": "inception_score_mean"}
    relative = {ours: abs(getattr(summary, ours) - expected[theirs]) / abs(expected[theirs])
                for ours, theirs in pairs.items()}
    assert all(err <= 1e-3 for err in relative.values()), relative
    assert expected["kernel_inception_distance_mean"] > 10 * expected["kernel_inception_distance_std"]
    assert expected["inception_score_mean"] > 1.01  # the tiny network's p(y|x) differs between images
