"""Real images per class: ImageNet-style folders and WebDataset/release tars, pairing, missing classes,
fingerprint, image loading."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.generate.real import (
    FOLDER,
    WEBDATASET,
    RealRef,
    fingerprint,
    load_real_image,
    open_real,
)

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128)}


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path) -> Path:
    """``a``: 3 images (+ files that are no images); ``b``: 2 images; ``empty``: none; no ``c`` folder."""
    (root / "a").mkdir(parents=True)
    (root / "a" / "b_second.JPEG").write_bytes(image_bytes(COLORS["green"], "JPEG"))
    (root / "a" / "a_first.jpg").write_bytes(image_bytes(COLORS["red"], "JPEG"))
    (root / "a" / "c_third.Png").write_bytes(image_bytes(COLORS["blue"]))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "anim.gif").write_bytes(b"GIF89a")
    (root / "a" / "README").write_text("x")
    (root / "a" / "sub.jpg").mkdir()  # a folder with an image-like name is not an image
    (root / "b").mkdir()
    (root / "b" / "x.webp").write_bytes(image_bytes(COLORS["gray"], "WEBP", (5, 5)))
    (root / "b" / "y.jpeg").write_bytes(image_bytes(COLORS["red"], "JPEG"))
    (root / "empty").mkdir()
    (root / "unrelated").mkdir()
    return root


def expected_listing(folder: Path) -> list[str]:
    """The class's images computed independently: sorted by name, image extensions in any case."""
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def test_folder_layout_pairs_image_i_with_real_image_i_mod_n(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "real")
    index = open_real(root, ["a", "b"])
    assert index.layout == FOLDER and index.missing_classes == ()
    assert index.count("a") == 3 and index.count("b") == 2
    names = expected_listing(root / "a")
    assert names == ["a_first.jpg", "b_second.JPEG", "c_third.Png"]
    for i in range(8):
        ref = index.pair("a", i)
        assert ref == RealRef("a", f"a/{names[i % 3]}", root / "a" / names[i % 3])
    assert [r.source for r in index.refs("b")] == ["b/x.webp", "b/y.jpeg"]
    # one numpy array of encoded names per class, no Python object per image
    arr = index.names("a")
    assert isinstance(arr, np.ndarray) and arr.dtype.kind == "S" and arr.tolist() == [n.encode() for n in names]


def test_load_real_image_decodes_rgb(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "real")
    index = open_real(root, ["a", "b"])
    png = load_real_image(index.pair("a", 2))
    assert png.mode == "RGB" and png.size == (8, 6) and png.getpixel((3, 3)) == COLORS["blue"]
    webp = load_real_image(index.pair("b", 0))
    assert webp.mode == "RGB" and webp.size == (5, 5)
    jpeg = load_real_image(index.pair("a", 0))
    assert max(abs(c - e) for c, e in zip(jpeg.getpixel((4, 3)), COLORS["red"])) < 8
    # a grayscale or palette image comes back as RGB too
    Image.new("L", (4, 4), 77).save(root / "b" / "z_gray.png")
    gray = load_real_image(RealRef("b", "b/z_gray.png", root / "b" / "z_gray.png"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)


def test_unreadable_image_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "real")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    index = open_real(root, ["a", "b"])
    ref = index.pair("b", 0)
    assert ref.source == "b/broken.jpg"
    with pytest.raises(UserError, match=r"unreadable image .*broken\.jpg") as info:
        load_real_image(ref)
    assert "\n" not in str(info.value)
    (root / "b" / "broken.jpg").unlink()
    with pytest.raises(UserError, match=r"unreadable image .*broken\.jpg"):
        load_real_image(ref)


def test_missing_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "real")
    with pytest.raises(UserError, match=r"no real images in .* for 1 of 3 classes: c \(") as info:
        open_real(root, ["a", "b", "c"])
    assert "\n" not in str(info.value)
    many = ["a"] + [f"gone{i}" for i in range(7)]
    with pytest.raises(UserError, match=r"for 7 of 8 classes: gone0, gone1, gone2, gone3, gone4, …") as info:
        open_real(root, many)
    assert "gone5" not in str(info.value)
    for policy in ("skip", "text"):
        index = open_real(root, ["a", "b", "c", "empty"], missing=policy)
        assert index.missing == policy and index.missing_classes == ("c",)
        assert index.pair("c", 0) is None and index.count("c") == 0
        assert index.pair("empty", 3) is None  # a class folder without images: found when listed
        assert index.pair("a", 4).source == "a/b_second.JPEG"
    strict = open_real(root, ["a", "empty"])
    with pytest.raises(UserError, match=r"no real image of class 'empty' in .*empty"):
        strict.pair("empty", 0)
    with pytest.raises(UserError, match="missing classes must be one of error, skip, text"):
        open_real(root, ["a"], missing="ignore")
    with pytest.raises(UserError, match="'zzz' is not in the class set"):
        strict.pair("zzz", 0)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="real images folder not found"):
        open_real(tmp_path / "nowhere", ["a"])
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "other").mkdir()
    with pytest.raises(UserError, match=r"no folder named after a class id .*and no \.tar shards"):
        open_real(tmp_path / "plain", ["a"])


def test_folder_fingerprint_follows_names_sizes_and_mtimes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "real")
    first = fingerprint(open_real(root, ["a", "b"]))
    assert first == fingerprint(open_real(root, ["a", "b"])) and len(first) == 64
    (root / "a" / "notes.txt").write_text("edited: not an image, not in the fingerprint")
    assert fingerprint(open_real(root, ["a", "b"])) == first
    target = root / "b" / "x.webp"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = fingerprint(open_real(root, ["a", "b"]))
    assert touched != first
    (root / "b" / "y2.jpg").write_bytes(image_bytes(COLORS["red"], "JPEG"))
    added = fingerprint(open_real(root, ["a", "b"]))
    assert added not in (first, touched)
    (root / "b" / "y2.jpg").rename(root / "b" / "y3.jpg")
    assert fingerprint(open_real(root, ["a", "b"])) not in (first, touched, added)
    assert fingerprint(open_real(root, ["a"])) != fingerprint(open_real(root, ["a", "b"]))


# ------------------------------------------------------------------------------------------------------------
# WebDataset / release layout


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A WebDataset shard written with the standard library's ``tarfile`` (members of a sample consecutive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path) -> dict[str, bytes]:
    """Two shards of classes ``n01`` and ``sea_otter`` (plus a validation-style key that names no class)."""
    images = {
        "n01_0003": image_bytes(COLORS["red"]),
        "n01_0001": image_bytes(COLORS["green"], "JPEG"),
        "sea_otter_0002": image_bytes(COLORS["blue"]),
        "n01_0002": image_bytes(COLORS["gray"]),
        "sea_otter_0001": image_bytes(COLORS["red"], "JPEG"),
        "ILSVRC2012_val_00000001": image_bytes(COLORS["green"]),
    }
    ext = {k: "jpg" if v[:2] == b"\xff\xd8" else "png" for k, v in images.items()}
    keys = list(images)
    write_tar(root / "train-00000.tar", [(k, {"cls": b"0", ext[k]: images[k], "json": b"{}"}) for k in keys[:3]])
    write_tar(root / "train-00001.tar", [(k, {ext[k]: images[k], "cls": b"1"}) for k in keys[3:]])
    return images


def tar_listing(root: Path, class_id: str) -> list[str]:
    """The class's keys read back independently with ``tarfile``, sorted."""
    keys = set()
    for shard in sorted(root.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if ext in ("jpg", "png") and key.rsplit("_", 1)[0] == class_id:
                    keys.add(key)
    return sorted(keys)


def test_webdataset_layout(tmp_path: Path) -> None:
    root = tmp_path / "wds"
    images = make_shards(root)
    index = open_real(root, ["n01", "sea_otter"], show_progress=False)
    assert index.layout == WEBDATASET and index.shards == ("train-00000.tar", "train-00001.tar")
    assert [os.fsdecode(k) for k in index.names("n01").tolist()] == tar_listing(root, "n01")
    assert tar_listing(root, "n01") == ["n01_0001", "n01_0002", "n01_0003"]
    assert [r.source for r in index.refs("sea_otter")] == ["sea_otter_0001", "sea_otter_0002"]
    for i in range(7):
        ref = index.pair("n01", i)
        key = ["n01_0001", "n01_0002", "n01_0003"][i % 3]
        assert ref.source == key and ref.class_id == "n01"
        with Image.open(io.BytesIO(images[key])) as expected:
            assert np.array_equal(np.asarray(load_real_image(ref)), np.asarray(expected.convert("RGB")))
    assert index.pair("sea_otter", 0).describe().endswith("train-00001.tar:sea_otter_0001")
    with pytest.raises(UserError, match=r"no real images in .* for 1 of 3 classes: n02"):
        open_real(root, ["n01", "n02", "sea_otter"], show_progress=False)
    assert open_real(root, ["n01", "n02"], missing="text", show_progress=False).pair("n02", 5) is None
    with pytest.raises(UserError, match=r"no sample key in the tar shards .* starts with a class id"):
        open_real(root, ["n99"], show_progress=False)


def test_release_layout_reads_the_train_split_of_info_json(tmp_path: Path) -> None:
    root = tmp_path / "release"
    make_shards(root / "data")
    write_tar(root / "data" / "validation-00000.tar", [("n01_0009", {"png": image_bytes(COLORS["blue"])})])
    splits = {
        "train": {"name": "train", "num_samples": 6, "filenames": ["data/train-00000.tar", "data/train-00001.tar"],
                  "shard_lengths": [3, 3]},
        "validation": {"name": "validation", "num_samples": 1, "filenames": ["data/validation-00000.tar"],
                       "shard_lengths": [1]},
    }
    (root / "_info.json").write_text(json.dumps({"name": "x", "splits": splits}))
    train = open_real(root, ["n01", "sea_otter"], show_progress=False)
    assert train.shards == ("data/train-00000.tar", "data/train-00001.tar") and train.count("n01") == 3
    val = open_real(root, ["n01"], missing="skip", split="validation", show_progress=False)
    assert [r.source for r in val.refs("n01")] == ["n01_0009"]
    with pytest.raises(UserError, match="has no split 'test' .*train, validation"):
        open_real(root, ["n01"], split="test", show_progress=False)
    splits["train"]["filenames"].append("../outside.tar")
    (root / "_info.json").write_text(json.dumps({"splits": splits}))
    with pytest.raises(UserError, match="not a plain relative path"):
        open_real(root, ["n01"], show_progress=False)


def test_webdataset_fingerprint_follows_the_shards(tmp_path: Path) -> None:
    root = tmp_path / "wds"
    make_shards(root)
    first = fingerprint(open_real(root, ["n01", "sea_otter"], show_progress=False))
    assert first == fingerprint(open_real(root, ["n01", "sea_otter"], show_progress=False))
    write_tar(root / "train-00001.tar", [("n01_0007", {"png": image_bytes(COLORS["red"])})])
    assert fingerprint(open_real(root, ["n01"], show_progress=False)) != first


def test_truncated_shard_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "wds"
    make_shards(root)
    data = (root / "train-00001.tar").read_bytes()
    (root / "train-00001.tar").write_bytes(data[:700])
    with pytest.raises(UserError, match=r"train-00001\.tar") as info:
        open_real(root, ["n01", "sea_otter"], show_progress=False)
    assert "\n" not in str(info.value)
