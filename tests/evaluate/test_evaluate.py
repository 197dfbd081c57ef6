"""Tests of imagenet_plus.evaluate: train on a synthetic release, test on real image folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagenet_plus.contract import INFO_NAME, ReleaseInfo, SplitInfo
from imagenet_plus.errors import UserError
from imagenet_plus.evaluate import EvaluateConfig, run_evaluate
from imagenet_plus.evaluate.images import AspectPreservingTransform, read_release
from imagenet_plus.evaluate.model import build_model

CLASSES = ["n01440764", "n02102040", "n03000684", "n07753592"]
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 230, 40)]


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    import torch

    torch.set_num_threads(2)


def _image(rng: np.random.Generator, colour: tuple[int, int, int], w: int, h: int) -> Image.Image:
    arr = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_release(rel: Path, per_class: int, seed: int = 0, shuffle_labels: bool = False,
                  classes: list[str] = CLASSES) -> Path:
    """A release folder as the data contract describes: REL/data/train-*.tar (+ _info.json), square images."""
    from imagenet_plus.contract import make_key
    from imagenet_plus.io.tar import PartialTarWriter

    rng = np.random.default_rng(seed)
    (rel / "data").mkdir(parents=True, exist_ok=True)
    samples = [(label, i) for label in range(len(classes)) for i in range(per_class)]
    order = rng.permutation(len(samples))
    names, lengths = [], []
    for s in range(2):
        part = [samples[j] for j in order[s::2]]
        name = f"train-{s:05d}.tar"
        with PartialTarWriter(rel / "data" / name) as w:
            for label, i in part:
                # Shuffled labels: the image colour is independent of the class it is filed under.
                colour = COLOURS[int(rng.integers(len(classes)))] if shuffle_labels else COLOURS[label]
                meta = {"class_id": classes[label], "label": label, "prompt": "x"}
                w.write({"__key__": make_key(classes[label], i), "jpg": _jpeg(_image(rng, colour, 48, 48)),
                         "cls": str(label).encode(), "json": json.dumps(meta).encode()})
        names.append(f"data/{name}")
        lengths.append(len(part))
    info = ReleaseInfo(name="fake", fingerprint="fake", created="2025-01-01T00:00:00Z", image_ext="jpg",
                       num_classes=len(classes), config_hash=None,
                       classes=[{"label": i, "id": c, "name": c} for i, c in enumerate(classes)],
                       splits={"train": SplitInfo("train", sum(lengths), names, lengths)})
    info.write(rel / INFO_NAME)
    return rel


def write_real_folder(root: Path, per_class: int, seed: int = 1, classes: list[str] = CLASSES) -> Path:
    """Real-photo-like test folder: class-id subfolders, non-square images of the class colours."""
    rng = np.random.default_rng(seed)
    for cid in classes:
        (root / cid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (64, 48) if i % 2 else (40, 56)
            _image(rng, COLOURS[CLASSES.index(cid)], w, h).save(root / cid / f"img_{i}.JPEG")
    return root


def _cfg(tmp_path: Path, rel: Path, test: Path, **kw) -> EvaluateConfig:
    base = dict(train=str(rel), test=str(test), out=str(tmp_path / "eval"), epochs=6, image_size=32,
                batch_size=16, lr=5e-3)
    base.update(kw)
    return EvaluateConfig(**base)


def test_separable_classes_reach_high_accuracy(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=24)
    test = write_real_folder(tmp_path / "real", per_class=10)
    report = run_evaluate(_cfg(tmp_path, rel, test))
    res = report["results"]["synthetic"]
    assert res["accuracy"] >= 0.9, res
    assert res["roc_auc_macro"] >= 0.95
    assert res["f1_macro"] >= 0.85
    assert "top5_accuracy" not in res  # only 4 classes
    assert set(res["per_class_accuracy"]) == set(CLASSES)
    out = tmp_path / "eval"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["results"]["synthetic"]["accuracy"] == pytest.approx(res["accuracy"])
    for name in saved["plots"]["synthetic"].values():
        assert (out / name).stat().st_size > 1000
    assert (out / "model_synthetic.pt").is_file()
    assert not list(out.glob("*.partial"))


def test_shuffled_labels_are_near_chance(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=24, shuffle_labels=True)
    test = write_real_folder(tmp_path / "real", per_class=10)
    res = run_evaluate(_cfg(tmp_path, rel, test))["results"]["synthetic"]
    assert res["chance_accuracy"] == pytest.approx(0.25)
    assert res["accuracy"] <= 0.5, res


@pytest.mark.slow
def test_finetune_phases_and_test_subset_of_train(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=12)
    test = write_real_folder(tmp_path / "real", per_class=6, classes=CLASSES[:3])
    ft = write_real_folder(tmp_path / "real_train", per_class=6, seed=3, classes=CLASSES[:3])
    report = run_evaluate(_cfg(tmp_path, rel, test, finetune=str(ft), epochs=2, finetune_epochs=2))
    assert set(report["results"]) == {"synthetic", "synthetic+real", "real"}
    assert report["classes_only_in_train"] == [CLASSES[3]]
    assert report["test_classes"] == CLASSES[:3]
    for phase in report["results"].values():
        assert set(phase["per_class_accuracy"]) == set(CLASSES[:3])
        assert 0.0 <= phase["accuracy"] <= 1.0
    assert (tmp_path / "eval" / "roc_synthetic_real.png").is_file()


def test_top5_metric_with_more_than_five_classes(tmp_path: Path) -> None:
    import torch

    from imagenet_plus.evaluate.train import classification_metrics

    ids = [f"c{i}" for i in range(7)]
    target = torch.arange(7).repeat(3)
    logits = torch.nn.functional.one_hot((target + 1) % 7, 7).float() * 5 + torch.nn.functional.one_hot(target, 7)
    m, _ = classification_metrics(logits, target, ids)
    assert m.accuracy == 0.0  # the true class always comes second
    assert m.top5_accuracy == 1.0


def test_read_release_uses_keys_for_class_ids(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=3)
    ls = read_release(rel)
    assert len(ls.sources) == 12
    assert ls.classes == sorted(CLASSES)


def test_transform_keeps_aspect_ratio() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    t = AspectPreservingTransform(32, train=False)(img)
    assert tuple(t.shape) == (3, 32, 32)
    # letterboxed: the red content is 16 rows high in the middle, margins above and below
    red = t[0] > 1.5
    rows = red.any(dim=1).nonzero().flatten()
    assert rows.min().item() == 8 and rows.max().item() == 23
    tt = AspectPreservingTransform(32, train=True)(img)
    assert tuple(tt.shape) == (3, 32, 32)


def test_timm_model_builds_without_download(tmp_path: Path) -> None:
    import timm
    import torch

    m = build_model("resnet18", 3)
    assert m.num_classes == 3
    # a local 1000-class checkpoint: backbone loaded, new 3-class head
    ref = timm.create_model("resnet18", num_classes=1000)
    ckpt = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), ckpt)
    m = build_model("resnet18", 3, str(ckpt))
    assert m.num_classes == 3 and torch.equal(m.conv1.weight, ref.conv1.weight)
    small = tmp_path / "small.pt"
    torch.save(build_model("small-cnn", 3).state_dict(), small)
    build_model("small-cnn", 3, str(small))
    with pytest.raises(UserError, match="do not fit small-cnn with 5 classes"):
        build_model("small-cnn", 5, str(small))


def test_run_directory_as_train_is_refused(fake_run: Path, tmp_path: Path) -> None:
    test = write_real_folder(tmp_path / "real", per_class=1)
    with pytest.raises(UserError, match="is a run directory: release it first"):
        run_evaluate(_cfg(tmp_path, fake_run, test))


# ------------------------------------------------------------------------------------------------
# Bad input, through the CLI


def _cli(args: list[str]):
    from imagenet_plus.cli import app

    return CliRunner().invoke(app, args)


def _check_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert "Traceback" not in result.output
    err = result.exception
    assert isinstance(err, UserError), repr(err)
    msg = err.message
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    del text


def test_mismatched_classes_are_named(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=2, classes=CLASSES[:2])
    test = write_real_folder(tmp_path / "real", per_class=1, classes=CLASSES[:3])
    r = _cli(["evaluate", "--train", str(rel), "--test", str(test), "--out", str(tmp_path / "e")])
    _check_error(r, CLASSES[2], "lacks")
    assert not (tmp_path / "e").exists()


def test_empty_test_folder(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=2)
    empty = tmp_path / "empty"
    (empty / CLASSES[0]).mkdir(parents=True)
    r = _cli(["evaluate", "--train", str(rel), "--test", str(empty), "--out", str(tmp_path / "e")])
    _check_error(r, str(empty), "no images")


def test_unknown_model(tmp_path: Path) -> None:
    r = _cli(["evaluate", "--train", str(tmp_path), "--test", str(tmp_path), "--out", str(tmp_path / "e"),
              "--model", "resnet_does_not_exist"])
    _check_error(r, "resnet_does_not_exist")


def test_missing_test_folder_and_bad_values(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=2)
    r = _cli(["evaluate", "--train", str(rel), "--test", str(tmp_path / "nope"), "--out", str(tmp_path / "e")])
    _check_error(r, "nope")
    r = _cli(["evaluate", "--train", str(rel), "--test", str(rel), "--out", str(tmp_path / "e"), "--epochs", "0"])
    _check_error(r, "epochs")
    with pytest.raises(UserError, match="'test' is required"):
        EvaluateConfig(train="x", out="y")


def test_subprocess_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    rel = write_release(tmp_path / "rel", per_class=2, classes=CLASSES[:2])
    test = write_real_folder(tmp_path / "real", per_class=1, classes=CLASSES[1:3])
    p = subprocess.run([sys.executable, "-m", "imagenet_plus", "evaluate", "--train", str(rel), "--test", str(test),
                        "--out", str(tmp_path / "e")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and CLASSES[2] in lines[0]


@pytest.mark.slow
def test_explain_writes_one_gradcam_grid_per_phase(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=12)
    test = write_real_folder(tmp_path / "real", per_class=4, classes=CLASSES[:3])
    ft = write_real_folder(tmp_path / "real_train", per_class=4, seed=3, classes=CLASSES[:3])
    report = run_evaluate(_cfg(tmp_path, rel, test, finetune=str(ft), epochs=1, finetune_epochs=1, explain=2))
    out = tmp_path / "eval"
    assert set(report["explain"]) == {"synthetic", "synthetic+real", "real"}
    for phase, files in report["explain"].items():
        grid = Image.open(out / files["grid"])
        assert grid.size[0] > 200 and grid.size[1] > 200, phase
        data = np.load(out / files["maps"])
        assert data["maps"].shape == (6, 32, 32)  # 2 images × 3 test classes, at the input size
        assert data["images"].shape == (6, 32, 32, 3)
        assert sorted(data["labels"].tolist()) == [0, 0, 1, 1, 2, 2]
        for m in data["maps"]:
            assert float(m.max() - m.min()) > 1e-3, phase  # not constant
    assert json.loads((out / "eval.json").read_text())["explain"] == report["explain"]


def test_explain_with_a_transformer_is_a_one_line_error(tmp_path: Path) -> None:
    rel = write_release(tmp_path / "rel", per_class=2)
    test = write_real_folder(tmp_path / "real", per_class=1)
    with pytest.raises(UserError, match="vit_tiny_patch16_224") as err:
        run_evaluate(_cfg(tmp_path, rel, test, model="vit_tiny_patch16_224", explain=2))
    assert "\n" not in str(err.value) and "Grad-CAM" in str(err.value)


def test_open_shards_are_bounded(tmp_path: Path) -> None:
    """Reading a release through fewer handles than it has shards gives the same bytes."""
    import os

    from imagenet_plus.evaluate.images import ImageDataset, TarMember

    rel = write_release(tmp_path / "rel", per_class=6)
    members = read_release(rel).sources
    # pretend each member is in its own shard: copies of the two tars under many names
    copies = []
    for k, m in enumerate(members):
        path = tmp_path / f"copy-{k:03d}.tar"
        os.link(m.tar, path)
        copies.append(TarMember(str(path), m.offset, m.size))
    ds = ImageDataset(copies, [0] * len(copies), lambda im: np.asarray(im).sum(), max_open=3)
    plain = ImageDataset(members, [0] * len(members), lambda im: np.asarray(im).sum())
    for i in range(len(copies)):
        assert ds[i][0] == plain[i][0]
        assert len(ds._handles) <= 3
    assert len(copies) == 24


def test_gradcam_maps_of_an_untrained_cnn(tmp_path: Path) -> None:
    """Fast check of the map shapes and grid without training (the slow test covers the phases)."""
    import torch

    from imagenet_plus.evaluate.images import ImageDataset, read_image_folder
    from imagenet_plus.evaluate.model import explain_phase

    torch.manual_seed(0)
    test = read_image_folder(write_real_folder(tmp_path / "real", per_class=3), "test")
    ds = ImageDataset(test.sources, [CLASSES.index(c) for c in test.class_ids], AspectPreservingTransform(40, False))
    files = explain_phase(build_model("small-cnn", 4), ds, CLASSES, 2, tmp_path, "synthetic", "small-cnn")
    data = np.load(tmp_path / files["maps"])
    assert data["maps"].shape == (8, 40, 40) and Image.open(tmp_path / files["grid"]).size[0] > 200
    assert any(float(m.max() - m.min()) > 1e-3 for m in data["maps"])  # untrained: some maps may be all zero


def test_cli_lists_each_evaluate_option_once() -> None:
    import re

    from imagenet_plus.pipeline.config import flag_name, settings_of

    result = _cli(["evaluate", "--help"])
    assert result.exit_code == 0, result.output
    options = re.findall(r"(?m)^\s+(--[a-z-]+)", result.output)
    assert sorted(options) == sorted({*options}), options
    assert set(options) == {"--help", *(flag_name(n) for n in settings_of(EvaluateConfig))}
    assert {"--train", "--test", "--out", "--finetune", "--finetune-epochs", "--min-crop", "--explain"} <= set(options)


def test_missing_required_option_is_one_line(tmp_path: Path) -> None:
    _check_error(_cli(["evaluate", "--test", str(tmp_path), "--out", str(tmp_path / "e")]), "'train' is required")


@pytest.mark.parametrize("ext", ["bmp", "tif", "ppm"])
def test_image_folders_accept_other_formats(tmp_path: Path, ext: str) -> None:
    """Test folders of BMP, TIFF or PPM photos are read (the contract's READ_IMAGE_EXTENSIONS)."""
    from imagenet_plus.contract import READ_IMAGE_EXTENSIONS
    from imagenet_plus.evaluate.images import read_image_folder

    assert ext in READ_IMAGE_EXTENSIONS
    for cid in CLASSES[:2]:
        (tmp_path / cid).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cid / f"a.{ext.upper()}")
    ls = read_image_folder(tmp_path, "test")
    assert ls.classes == CLASSES[:2] and len(ls.sources) == 2


def test_truncated_release_shards_are_named(tmp_path: Path) -> None:
    """A shard cut short is named, whether its headers are read (indexing) or an image is (training)."""
    from imagenet_plus.errors import CorruptShard
    from imagenet_plus.evaluate.images import ImageDataset

    rel = write_release(tmp_path / "rel", per_class=3)
    members = read_release(rel).sources
    last = max((m for m in members if m.tar.endswith("train-00001.tar")), key=lambda m: m.offset)
    shard = rel / "data/train-00001.tar"
    shard.write_bytes(shard.read_bytes()[: last.offset + 10])
    with pytest.raises(CorruptShard, match="corrupt or truncated shard .*train-00001.tar"):
        ImageDataset([last], [0], lambda im: im)[0]
    with pytest.raises(UserError, match="corrupt or truncated shard .*train-00001.tar"):
        read_release(rel)
