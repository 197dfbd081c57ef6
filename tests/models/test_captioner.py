"""Captioner: a tiny random BLIP saved and loaded back through from_pretrained; captions cached per shard,
resumable, a changed captioner refused, an absent model a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenet_plus.contract.names import CAPTION_COLUMNS
from imagenet_plus.errors import ConfigError, ModelUnavailable, UserError
from imagenet_plus.generate.real import load_real_image, open_real
from imagenet_plus.models.captioner import (
    EMPTY_CAPTION,
    CaptionCache,
    Captioner,
    CaptionSettings,
    caption_shards,
    clean_caption,
    strip_prompt,
)
from imagenet_plus.models.tiny_text import tiny_blip_dir

TINY = CaptionSettings(model="tiny-random", max_new_tokens=8, batch_size=2)


def make_real(root: Path) -> Path:
    """Two classes of three images each: different colours and stripes, so captions can differ."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("n01", "n02")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, size=(24, 40, 3), dtype=np.uint8)
            arr[:, : 10 * (i + 1)] = (200 * c, 90 * i, 255 - 80 * i)
            Image.fromarray(arr).save(root / cls / f"img{i}.png")
    return root


@pytest.fixture()
def real(tmp_path: Path):
    return open_real(make_real(tmp_path / "real"), ["n01", "n02"])


@pytest.fixture(scope="module")
def loaded() -> Captioner:
    """The tiny captioner loaded once for the module (the first test loads it through caption_shards itself)."""
    return Captioner(TINY)


def plan(real) -> dict[int, list]:
    """Shard 0: 4 images of n01 (the 4th reuses real image 0), shard 1: 3 images of n02."""
    return {0: [(f"n01_{i:06d}", real.pair("n01", i)) for i in range(4)],
            1: [(f"n02_{i:06d}", real.pair("n02", i)) for i in range(3)]}


def reference_captions(images: list[Image.Image], max_new_tokens: int, prompt: str = "") -> list[str]:
    """Greedy captions computed with transformers directly (BLIP classes, one image at a time)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(tiny_blip_dir())
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip_dir()).eval()
    out = []
    for img in images:
        inputs = processor(images=img, text=prompt or None, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        text = " ".join(processor.decode(ids[0], skip_special_tokens=True).split()).strip(" ,")
        out.append(text[len(prompt):].strip(" ,") if prompt else text)
    return out


def test_caption_a_tiny_folder(tmp_path: Path, real) -> None:
    shards = plan(real)
    cache = caption_shards(tmp_path / "run", shards, TINY, load_real_image, show_progress=False)
    import pyarrow.parquet as pq

    t0 = pq.read_table(cache.path(0))
    assert t0.column_names == list(CAPTION_COLUMNS)
    assert t0.column("key").to_pylist() == [f"n01_{i:06d}" for i in range(4)]
    assert t0.column("source").to_pylist() == ["n01/img0.png", "n01/img1.png", "n01/img2.png", "n01/img0.png"]
    captions = t0.column("caption").to_pylist()
    assert captions[3] == captions[0] and all(c and "\n" not in c for c in captions)
    # the captions are the model's own greedy captions, computed independently
    images = [load_real_image(real.pair(c, i)) for c in ("n01", "n02") for i in range(3)]
    expected = reference_captions(images, TINY.max_new_tokens)
    got = [cache.captions(0)[f"n01_{i:06d}"] for i in range(3)] + [cache.captions(1)[f"n02_{i:06d}"] for i in range(3)]
    assert got == [e or EMPTY_CAPTION for e in expected]
    assert len(set(got)) >= 2  # the image matters
    assert sorted(p.name for p in cache.folder.iterdir()) == ["00000.parquet", "00001.parquet", "captioner.json"]


@pytest.mark.slow
def test_deterministic_and_independent_of_batch_size(tmp_path: Path, real, loaded) -> None:
    a = caption_shards(tmp_path / "a", plan(real), TINY, load_real_image, show_progress=False, captioner=loaded)
    one = CaptionSettings(model="tiny-random", max_new_tokens=8, batch_size=1)
    b = caption_shards(tmp_path / "b", plan(real), one, load_real_image, show_progress=False, captioner=Captioner(one))
    for shard in (0, 1):
        assert a.read(shard) == b.read(shard)


def test_resume_after_deleting_one_cache_file(tmp_path: Path, real, loaded, monkeypatch) -> None:
    run = tmp_path / "run"
    first = caption_shards(run, plan(real), TINY, load_real_image, show_progress=False, captioner=loaded)
    rows = {s: first.read(s) for s in (0, 1)}
    first.path(1).unlink()
    loaded_sources: list[str] = []

    def counting_load(ref):
        loaded_sources.append(ref.source)
        return load_real_image(ref)

    again = caption_shards(run, plan(real), TINY, counting_load, show_progress=False, captioner=loaded)
    assert sorted(loaded_sources) == ["n02/img0.png", "n02/img1.png", "n02/img2.png"]  # shard 0 was reused
    assert {s: again.read(s) for s in (0, 1)} == rows
    loaded_sources.clear()
    import imagenet_plus.models.captioner as captioner_module

    def no_model(*args, **kwargs):
        raise AssertionError("nothing to caption: the model must not be loaded")

    with monkeypatch.context() as m:
        m.setattr(captioner_module, "Captioner", no_model)
        caption_shards(run, plan(real), TINY, counting_load, show_progress=False)
    assert loaded_sources == []
    # a shard whose pairs changed (other real images) is captioned again
    changed = plan(real)
    changed[0] = changed[0][:2]
    caption_shards(run, changed, TINY, counting_load, show_progress=False, captioner=loaded)
    assert sorted(loaded_sources) == ["n01/img0.png", "n01/img1.png"]
    assert [k for k, _, _ in again.read(0)] == ["n01_000000", "n01_000001"]
    assert not list(again.folder.glob("*.partial"))


def test_a_changed_captioner_is_refused(tmp_path: Path, real, loaded) -> None:
    run = tmp_path / "run"
    caption_shards(run, plan(real), TINY, load_real_image, show_progress=False, captioner=loaded)
    CaptionCache(run, CaptionSettings(model="tiny-random", max_new_tokens=8, batch_size=7))  # batch size: same captions
    for other, needle in [(CaptionSettings(model="tiny-random", max_new_tokens=9), "max_new_tokens 8 → 9"),
                          (CaptionSettings(model="Salesforce/blip-image-captioning-base", max_new_tokens=8),
                           "model 'tiny-random' → 'Salesforce/blip-image-captioning-base'"),
                          (CaptionSettings(model="tiny-random", max_new_tokens=8, prompt="a photography of"),
                           "prompt '' → 'a photography of'")]:
        with pytest.raises(ConfigError, match="holds captions made with another captioner") as info:
            caption_shards(run, plan(real), other, load_real_image, show_progress=False)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_conditional_prompt_is_cut_from_the_caption(tmp_path: Path, real) -> None:
    settings = CaptionSettings(model="tiny-random", max_new_tokens=6, prompt="a photography of")
    cache = caption_shards(tmp_path / "run", {0: plan(real)[0][:2]}, settings, load_real_image, show_progress=False)
    images = [load_real_image(real.pair("n01", i)) for i in range(2)]
    expected = reference_captions(images, 6, "a photography of")
    got = [c for _, _, c in cache.read(0)]
    assert got == [e or EMPTY_CAPTION for e in expected]
    assert all(c and not c.lower().startswith("a photography of") for c in got)
    assert strip_prompt("A photography of a dog, running", "a photography of") == "a dog, running"
    assert strip_prompt("a dog", "a photography of") == "a dog"
    assert clean_caption("  a   dog \n on grass , ") == "a dog on grass"


def test_absent_model_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load captioner 'nobody/no-such-captioner'") as info:
        Captioner(CaptionSettings(model="nobody/no-such-captioner"))
    assert "\n" not in str(info.value)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="cannot load captioner"):
        Captioner(CaptionSettings(model=str(empty)))


def test_unreadable_real_image_names_it(tmp_path: Path, real, loaded) -> None:
    (real.root / "n01" / "img1.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=r"unreadable image .*n01/img1\.png"):
        caption_shards(tmp_path / "run", plan(real), TINY, load_real_image, show_progress=False, captioner=loaded)
    assert not (tmp_path / "run" / "captions" / "00000.parquet").exists()


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_new_tokens=0), "'caption-max-tokens' must be positive"),
    (dict(batch_size=0), "'caption-batch-size' must be positive"),
    (dict(dtype="int8"), "'caption-dtype' must be one of"),
    (dict(model=" "), "'captioner' must name a model"),
])
def test_bad_settings(kwargs, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        CaptionSettings(**kwargs)
