"""generate with the recipe settings: per-image guidance from a range, real images (pairing, img2img, captions),
language-model descriptions, the config hash of the inputs, and bad input (one line, nothing written).

Fast tests use a fake image source; the tests marked slow run the tiny SD/FLUX/SD3 pipelines, the tiny BLIP
captioner and the tiny Qwen2 prompt model through the same loading code a user's run takes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.generate import planned_keys, run_generate
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.generate.plan import image_seed
from imagenet_plus.io.tar import iter_shard

CLASSES_CSV = "name,description\nred apple,a red fruit\ngreen pear,a green fruit\n"
#: The class ids of CLASSES_CSV (slugs of the names) and the number of real images each gets.
REAL_COUNTS = {"red-apple": 3, "green-pear": 2}


@pytest.fixture
def class_file(tmp_path: Path) -> Path:
    f = tmp_path / "classes.csv"
    f.write_text(CLASSES_CSV)
    return f


def make_real(root: Path, counts: dict[str, int] = REAL_COUNTS, shift: int = 0) -> Path:
    """An ImageNet-style folder: ``root/<class_id>/img_<i>.JPEG``, each a different flat colour (plus ``shift``)."""
    for c, (class_id, n) in enumerate(counts.items()):
        (root / class_id).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = ((60 * c + 40 * i + shift) % 256, (90 + 30 * i) % 256, (200 - 50 * c) % 256)
            Image.new("RGB", (48 + 8 * i, 40), colour).save(root / class_id / f"img_{i}.JPEG", quality=95)
    return root


class RecordingSource:
    """A fake model: an image from the seed (and from the init image, when given); records every call."""

    scheduler_name = "FakeScheduler"

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.calls: list[dict] = []

    def __call__(self, prompts, negatives, seeds, **kwargs):
        self.calls.append({"seeds": list(seeds), "prompts": list(prompts), **kwargs})
        images = []
        for i, s in enumerate(seeds):
            arr = np.random.default_rng(s).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
            if kwargs.get("init_images") is not None:
                arr = ((arr.astype(np.uint16) + np.asarray(kwargs["init_images"][i], dtype=np.uint16)) // 2)
            images.append(Image.fromarray(arr.astype(np.uint8)))
        return images, [False] * len(seeds)


def factory(source: RecordingSource):
    return lambda cfg, device: source


def make_cfg(class_file: Path, **kw) -> GenerateConfig:
    base = dict(classes=str(class_file), images_per_class=6, model="fake/model", steps=1, guidance=2.0,
                resolution=32, batch_size=3, shard_size=4, prompt_strategy=("name",))
    base.update(kw)
    return GenerateConfig(**base)


def samples(run: Path) -> dict[str, dict]:
    """Every sample's json by key, from the shards (read with the project's tar reader, checked against tarfile
    by the io tests)."""
    out = {}
    for tar in sorted((run / "generated").glob("*.tar")):
        for s in iter_shard(tar):
            out[s["__key__"]] = {**json.loads(s["json"]), "_jpg": s["jpg"]}
    return out


# --------------------------------------------------------------------------------------------------
# guidance ranges


def test_guidance_range_is_drawn_per_image_and_each_call_shares_one_value(tmp_path, class_file):
    levels = [1.0 + 0.5 * i for i in range(9)]  # 9 evenly spaced levels of [1, 5], written out by hand
    runs = {}
    for batch_size in (2, 3):
        src = RecordingSource()
        run = tmp_path / f"b{batch_size}"
        cfg = make_cfg(class_file, guidance="1:5", images_per_class=12, shard_size=8, batch_size=batch_size)
        assert run_generate(cfg, run, source_factory=factory(src)).done
        metas = samples(run)
        by_seed = {m["seed"]: m["guidance"] for m in metas.values()}
        for call in src.calls:  # one guidance per call: the value every image of the batch records
            assert {by_seed[s] for s in call["seeds"]} == {call["guidance"]}
            assert len(call["seeds"]) <= batch_size
        # at most ceil(n / b) + levels - 1 calls per shard (one partial batch per level)
        assert len(src.calls) <= sum(math.ceil(n / batch_size) + 8 for n in (8, 8, 8))
        runs[batch_size] = metas
    a, b = runs[2], runs[3]
    assert a.keys() == b.keys() and len(a) == 24
    for key in a:
        assert (a[key]["seed"], a[key]["guidance"], a[key]["prompt"]) == (b[key]["seed"], b[key]["guidance"],
                                                                          b[key]["prompt"])
        assert a[key]["guidance"] in levels
    assert len({m["guidance"] for m in a.values()}) >= 5  # 24 draws over 9 levels: many of them appear
    recorded = __import__("yaml").safe_load((tmp_path / "b2" / "run.yaml").read_text())["config"]
    assert recorded["guidance"] == [1.0, 5.0]


def test_fixed_guidance_calls_the_source_as_before(tmp_path, class_file):
    src = RecordingSource()
    run_generate(make_cfg(class_file, images_per_class=3), tmp_path / "run", source_factory=factory(src))
    assert all(set(call) == {"seeds", "prompts"} for call in src.calls)  # no guidance, no init images
    metas = samples(tmp_path / "run")
    assert {m["guidance"] for m in metas.values()} == {2.0}
    assert not any(k in m for m in metas.values() for k in ("source", "caption", "init_strength"))
    recorded = __import__("yaml").safe_load((tmp_path / "run" / "run.yaml").read_text())["config"]
    assert not {"real", "captioner", "init_strength", "guidance_levels", "real_fingerprint"} & set(recorded)


# --------------------------------------------------------------------------------------------------
# real images: pairing, img2img, the hash, missing classes


def test_img2img_pairs_image_i_with_real_image_i_mod_n(tmp_path, class_file):
    real = make_real(tmp_path / "real")
    src = RecordingSource()
    run = tmp_path / "run"
    cfg = make_cfg(class_file, real=str(real), init_strength=0.5)
    assert run_generate(cfg, run, source_factory=factory(src)).done
    metas = samples(run)
    assert sorted(metas) == sorted(planned_keys(run)) and len(metas) == 12
    for m in metas.values():
        names = sorted(os.listdir(real / m["class_id"]))  # the class's real images, listed independently
        assert m["source"] == f"{m['class_id']}/{names[m['index'] % len(names)]}"
        assert (real / m["source"]).is_file() and m["source"].split("/")[0] == m["class_id"]
        assert m["init_strength"] == 0.5 and m["caption"] is None
    # every real image is used once before any is used twice
    for class_id, n in REAL_COUNTS.items():
        sources = [metas[f"{class_id}_{i:06d}"]["source"] for i in range(6)]
        assert len(set(sources[:n])) == n and sources[n:] == (sources[:n] * 3)[: 6 - n]
    # the model got the paired image, centre-cropped and resized to the resolution, and the strength
    for call in src.calls:
        assert call["strength"] == 0.5 and [im.size for im in call["init_images"]] == [(32, 32)] * len(call["seeds"])
    first = next(c for c in src.calls if metas["red-apple_000001"]["seed"] in c["seeds"])
    given = first["init_images"][first["seeds"].index(metas["red-apple_000001"]["seed"])]
    with Image.open(real / "red-apple" / "img_1.JPEG") as im:
        expected = im.convert("RGB").getpixel((im.width // 2, im.height // 2))
    assert max(abs(a - b) for a, b in zip(given.getpixel((16, 16)), expected)) <= 3


def test_a_changed_real_folder_is_refused_and_a_moved_one_resumes(tmp_path, class_file):
    real = make_real(tmp_path / "real")
    run = tmp_path / "run"
    cfg = make_cfg(class_file, real=str(real), init_strength=0.5)
    run_generate(cfg, run, source_factory=factory(RecordingSource()))
    moved = tmp_path / "moved"
    shutil.copytree(real, moved)  # copy2: same names, sizes and modification times
    res = run_generate(make_cfg(class_file, real=str(moved), init_strength=0.5), run,
                       source_factory=factory(RecordingSource()))
    assert res.done and res.images_made == 0
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    Image.new("RGB", (20, 20), "white").save(real / "green-pear" / "img_1.JPEG")
    with pytest.raises(UserError, match=r"another config \(real_fingerprint: '[0-9a-f]+' → '[0-9a-f]+'\)"):
        run_generate(make_cfg(class_file, real=str(real), init_strength=0.5), run,
                     source_factory=factory(RecordingSource()))
    with pytest.raises(UserError, match=r"another config \(init_strength: 0.5 → 0.25\)"):
        run_generate(make_cfg(class_file, real=str(moved), init_strength=0.25), run,
                     source_factory=factory(RecordingSource()))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


def test_missing_real_classes_skip_or_text(tmp_path, class_file):
    real = make_real(tmp_path / "real", {"red-apple": 2})
    skip = tmp_path / "skip"
    assert run_generate(make_cfg(class_file, real=str(real), init_strength=0.5, real_missing="skip"), skip,
                        source_factory=factory(RecordingSource())).done
    assert sorted(samples(skip)) == sorted(planned_keys(skip)) == [f"red-apple_{i:06d}" for i in range(6)]
    # the re-run reads back a plan without the skipped class: its checks accept it, and nothing is added
    assert run_generate(make_cfg(class_file, real=str(real), init_strength=0.5, real_missing="skip"), skip,
                        source_factory=factory(RecordingSource())).done
    assert sorted(samples(skip)) == [f"red-apple_{i:06d}" for i in range(6)]
    text = tmp_path / "text"
    src = RecordingSource()
    cfg = make_cfg(class_file, real=str(real), init_strength=0.5, real_missing="text")
    assert run_generate(cfg, text, source_factory=factory(src)).done
    metas = samples(text)
    assert len(metas) == 12
    for m in metas.values():
        if m["class_id"] == "green-pear":  # no real image: text-to-image, recorded as such
            assert m["source"] is None and m["init_strength"] is None
        else:
            assert m["source"].startswith("red-apple/") and m["init_strength"] == 0.5
    class_of_seed = {m["seed"]: m["class_id"] for m in metas.values()}
    for call in src.calls:  # a batch is all img2img or all text-to-image
        expected = {"red-apple"} if "init_images" in call else {"green-pear"}
        assert {class_of_seed[s] for s in call["seeds"]} == expected


# --------------------------------------------------------------------------------------------------
# bad input: one line naming the culprit, nothing written


def _broken_real(tmp_path: Path) -> Path:
    real = make_real(tmp_path / "real")
    (real / "green-pear" / "img_0.JPEG").write_bytes(b"\xff\xd8 not a jpeg at all")
    return real


@pytest.mark.parametrize(
    "flags, culprit",
    [
        ({"guidance": "5:1"}, r"'guidance': range min must be below max, got 5.0:1.0"),
        ({"guidance": "1:2:3"}, r"'guidance' must be a number or MIN:MAX"),
        ({"init_strength": -0.5, "real": "REAL"}, r"'init-strength' must be within 0 < S < 1.*got -0.5"),
        ({"init_strength": 1.0, "real": "REAL"}, r"'init-strength' must be within 0 < S < 1.*got 1.0"),
        ({"init_strength": 0.5}, r"'init-strength' needs 'real'"),
        ({"prompt_strategy": "caption"}, r"caption needs 'real'"),
        ({"real": "REAL"}, r"'real' is set but nothing uses it"),
        ({"real": "nosuch://datasets/someone/imagenet", "init_strength": 0.5}, r"unknown URL scheme nosuch://"),
        ({"real": "REAL", "init_strength": 0.5, "classes": "THREE"}, r"for 1 of 3 classes: yellow-lemon"),
        ({"real": "BROKEN", "init_strength": 0.5}, r"unreadable image .*green-pear/img_0\.JPEG"),
        ({"real": "REAL", "prompt_strategy": "caption", "captioner": "/no/such/captioner"},
         r"cannot load captioner '/no/such/captioner': no such folder"),
        ({"real": "REAL", "prompt_strategy": "caption", "captioner": "someone/absent-captioner"},
         r"cannot load captioner 'someone/absent-captioner' \(not a local folder, and not in the Hugging Face cache"),
        ({"prompt_strategy": "llm", "prompt_model": "someone/absent-llm"}, r"cannot load prompt model 'someone/absent"),
    ],
)
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(tmp_path, class_file, flags, culprit):
    three = tmp_path / "three.csv"
    three.write_text(CLASSES_CSV + "yellow lemon,a sour fruit\n")
    swap = {"REAL": str(make_real(tmp_path / "ok")), "BROKEN": str(_broken_real(tmp_path)), "THREE": str(three)}
    flags = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in flags.items()}
    run = tmp_path / "run"
    with pytest.raises(UserError, match=culprit) as info:
        cfg = load_generate_config(None, {"classes": str(class_file), "model": "fake/model", "steps": 1,
                                          "resolution": 32, **flags})
        run_generate(cfg, run, source_factory=factory(RecordingSource()))
    assert "\n" not in info.value.message
    assert not run.exists()


# --------------------------------------------------------------------------------------------------
# captions and language-model descriptions (tiny BLIP and tiny Qwen2, loaded as a user's run loads them)


@pytest.mark.slow
def test_caption_prompts_come_from_the_cached_captions_and_resume(tmp_path, class_file):
    import pyarrow.parquet as pq

    real = make_real(tmp_path / "real")
    run = tmp_path / "run"
    src = RecordingSource()
    cfg = make_cfg(class_file, real=str(real), prompt_strategy=("caption", "name"), captioner="tiny-random",
                   images_per_class=4)
    assert run_generate(cfg, run, source_factory=factory(src)).done
    captions = {}
    for f in sorted((run / "captions").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            captions[row["key"]] = row
    metas = samples(run)
    caption_keys = {k for k, m in metas.items() if m["strategy"] == "caption"}
    assert caption_keys and caption_keys != set(metas)  # both strategies drawn
    assert set(captions) == caption_keys
    for key, m in metas.items():
        if key in caption_keys:
            row = captions[key]
            assert m["prompt"].startswith(f"{m['class_name']}, ") and m["caption"] == row["caption"]
            assert m["source"] == row["source"] and (real / m["source"]).is_file()
            assert m["caption"] in m["prompt"] or m["prompt"].startswith(f"{m['class_name']}, {m['caption'][:20]}")
        else:
            assert m["source"] is None and m["caption"] is None and m["prompt"] == f"a photo of a {m['class_name']}"
    # more images per class: the captions of finished shards are reused as they are
    before = {f.name: f.stat().st_mtime_ns for f in (run / "captions").glob("*.parquet")}
    assert run_generate(make_cfg(class_file, real=str(real), prompt_strategy=("caption", "name"),
                                 captioner="tiny-random", images_per_class=6), run,
                        source_factory=factory(RecordingSource())).done
    after = {f.name: f.stat().st_mtime_ns for f in (run / "captions").glob("*.parquet")}
    assert all(after[name] == t for name, t in before.items())
    # another captioner (the same tiny BLIP, from its folder) on this run is refused before anything changes
    from imagenet_plus.models.tiny_text import tiny_blip_dir

    other = str(tiny_blip_dir())
    with pytest.raises(UserError, match=rf"another config \(captioner: 'tiny-random' → '{other}'\)"):
        run_generate(make_cfg(class_file, real=str(real), prompt_strategy=("caption", "name"), captioner=other,
                              images_per_class=6), run, source_factory=factory(RecordingSource()))


@pytest.mark.slow
def test_llm_prompts_are_written_once_and_picked_by_seed(tmp_path, class_file):
    run = tmp_path / "run"
    cfg = make_cfg(class_file, prompt_strategy=("llm",), prompt_model="tiny-random", llm_prompts_per_class=3)
    assert run_generate(cfg, run, source_factory=factory(RecordingSource())).done
    written = json.loads((run / "llm_prompts.json").read_text())
    assert written["settings"]["model"] == "tiny-random" and written["settings"]["per_class"] == 3
    metas = samples(run)
    for m in metas.values():
        texts = written["descriptions"][m["class_id"]]
        assert len(texts) == 3
        assert any(m["prompt"] in (t, f"{m['class_name']}, {t}") for t in texts), m["prompt"]
    # a re-run with more images reads the descriptions back: same file, same prompts for the old keys
    mtime = (run / "llm_prompts.json").stat().st_mtime_ns
    bigger = make_cfg(class_file, prompt_strategy=("llm",), prompt_model="tiny-random", llm_prompts_per_class=3,
                      images_per_class=8)
    run_generate(bigger, run, source_factory=factory(RecordingSource()))
    assert (run / "llm_prompts.json").stat().st_mtime_ns == mtime
    again = samples(run)
    assert all(again[k]["prompt"] == m["prompt"] for k, m in metas.items())
    from imagenet_plus.models.tiny_text import tiny_causal_lm_dir

    other = str(tiny_causal_lm_dir())
    with pytest.raises(UserError, match=rf"another config \(prompt_model: 'tiny-random' → '{other}'\)"):
        run_generate(make_cfg(class_file, prompt_strategy=("llm",), prompt_model=other, llm_prompts_per_class=3,
                              images_per_class=8), run, source_factory=factory(RecordingSource()))


# --------------------------------------------------------------------------------------------------
# the tiny pipelines: bytes at batch sizes 2 and 3, img2img for each family


@pytest.mark.slow
def test_tiny_sd_guidance_range_gives_the_same_bytes_at_batch_sizes_2_and_3(tmp_path, class_file):
    runs = {}
    for b in (2, 3):
        run = tmp_path / f"b{b}"
        cfg = GenerateConfig(classes=str(class_file), images_per_class=5, model="tiny-random", steps=2,
                             resolution=32, guidance=[1.0, 5.0], batch_size=b, shard_size=5)
        assert run_generate(cfg, run).done
        runs[b] = samples(run)
    a, b = runs[2], runs[3]
    assert a.keys() == b.keys() and len(a) == 10
    for key in a:
        assert 1.0 <= a[key]["guidance"] <= 5.0 and a[key]["guidance"] == b[key]["guidance"]
        assert a[key]["seed"] == b[key]["seed"] == image_seed(0, a[key]["class_id"], a[key]["index"])
        assert a[key]["_jpg"] == b[key]["_jpg"], key
    assert len({m["guidance"] for m in a.values()}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-flux", "tiny-random-sd3"])
def test_img2img_of_each_family_starts_from_the_real_image(tmp_path, class_file, model):
    outputs = {}
    for name, shift in (("a", 0), ("b", 120)):
        real = make_real(tmp_path / f"real-{name}", shift=shift)  # same names, other pixels
        run = tmp_path / name
        # 4 steps at strength 0.75 start at the second one: with 2, flow-matching models (FLUX, SD3) would start
        # from sigma 1, pure noise, where the real image has no weight
        cfg = GenerateConfig(classes=str(class_file), images_per_class=2, model=model, steps=4, resolution=32,
                             batch_size=2, shard_size=4, real=str(real), init_strength=0.75)
        assert run_generate(cfg, run).done
        outputs[name] = samples(run)
    a, b = outputs["a"], outputs["b"]
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert (a[key]["prompt"], a[key]["seed"], a[key]["source"]) == (b[key]["prompt"], b[key]["seed"],
                                                                        b[key]["source"])
        assert a[key]["init_strength"] == 0.75 and a[key]["model"] == model
        with Image.open(__import__("io").BytesIO(a[key]["_jpg"])) as im:
            assert im.size == (32, 32)
        assert a[key]["_jpg"] != b[key]["_jpg"], "the real image must change the generated one"
