"""How close does the score stage come to the bare speed of its three networks?

In one run, on the same images (a fake run of JPEGs written to the shard schema, 256 px by default),
with real architectures and random weights — a ViT-B/32-sized CLIP (transformers' ``CLIPConfig()``
defaults), torch-fidelity's InceptionV3 (the tiny-random weights file: same architecture, same cost)
and timm's ResNet-50 (1000 classes) as the classifier (ConvNeXt-B, the default, costs 4× more on CPU):

- bare: for each batch, the networks' forwards only — InceptionV3 on the ``uint8`` batch, CLIP's image
  tower on preprocessed pixels, CLIP's text tower on the batch's prompts, the classifier on preprocessed
  pixels. Decoding and preprocessing are done beforehand and not timed;
- stage: ``run_score`` end to end (shard reading, decoding, preprocessing, the same forwards, the
  per-image scores, parquet/npy writing, the dataset pass, summary.json), with the same loaded networks
  injected so that loading is counted on neither side.

Each is timed ``--repeats`` times, alternating which goes first, and the best of each is kept (on a shared
machine the load of other processes moves single timings by up to 2×; the best of several is the stable
figure). The last line is
``score_throughput_ratio=<stage img/s / bare img/s>`` (goal ≥ 0.85).

Usage: ``python benchmarks/score_throughput.py [--images 32] [--batch-size 16] [--resolution 256] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

CLASSES = [("n01443537", "goldfish"), ("n02123045", "tabby cat"), ("n02676566", "acoustic guitar"),
           ("n07920052", "espresso")]


def write_run(root: Path, images: int, resolution: int, shard_size: int) -> Path:
    """A run folder written straight to the shard schema: smooth random images, encoded as JPEG."""
    import numpy as np
    import yaml
    from PIL import Image

    from imagenet_plus.contract import make_key, shard_name
    from imagenet_plus.io.atomic import write_json_atomic
    from imagenet_plus.io.tar import PartialTarWriter

    (root / "generated").mkdir(parents=True)
    classes = [{"label": i, "id": wnid, "name": name, "lemmas": [name], "definition": "", "hypernym": "",
                "group": "noun.artifact"} for i, (wnid, name) in enumerate(CLASSES)]
    (root / "classes.json").write_text(json.dumps(classes))
    (root / "run.yaml").write_text(yaml.safe_dump({"config": {"model": "bench"}, "config_hash": "bench"}))
    rng = np.random.default_rng(0)
    for s in range(0, images, shard_size):
        name = shard_name(s // shard_size)
        with PartialTarWriter(root / "generated" / f"{name}.tar") as w:
            for i in range(s, min(images, s + shard_size)):
                c = classes[i % len(classes)]
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((resolution, resolution), Image.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                meta = {"class_id": c["id"], "class_name": c["name"], "label": c["label"],
                        "prompt": f"a photo of a {c['name']}, variant {i}", "negative_prompt": "", "seed": i,
                        "model": "bench", "scheduler": "none", "steps": 1, "guidance": 0.0, "width": resolution,
                        "height": resolution, "attempt": 0, "nsfw": False, "strategy": "name", "index": i}
                w.write({"__key__": make_key(c["id"], i), "jpg": buf.getvalue(), "cls": str(c["label"]).encode(),
                         "json": json.dumps(meta).encode()})
        write_json_atomic(root / "generated" / f"{name}.json", {"shard": name, "count": min(shard_size, images - s)})
    return root


def build_models(folder: Path) -> tuple[str, str]:
    """Save a ViT-B/32-sized CLIP and a ResNet-50 with random weights; return their folders."""
    import timm
    import torch
    from timm.models import save_for_hf
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from imagenet_plus.models.tiny import tiny_clip_tokenizer

    torch.manual_seed(0)
    clip_dir, cls_dir = folder / "clip-b32", folder / "resnet50"
    config = CLIPConfig(text_config={"vocab_size": 515, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1})
    CLIPModel(config).save_pretrained(clip_dir)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tiny_clip_tokenizer()).save_pretrained(clip_dir)
    save_for_hf(timm.create_model("resnet50", pretrained=False, num_classes=1000), str(cls_dir),
                safe_serialization=True)
    return str(clip_dir), str(cls_dir)


def bare_seconds(scorers, batches) -> float:
    """Sum of the networks' forwards on pre-decoded, pre-processed batches."""
    total = 0.0
    for uint8_batch, clip_pixels, cls_pixels, prompts in batches:
        scorers.clip._text_cache.clear()
        start = time.perf_counter()
        scorers.inception.forward(uint8_batch)
        scorers.clip.image_forward(clip_pixels)
        scorers.clip.embed_texts(prompts)
        scorers.classifier.forward(cls_pixels)
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import os

    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    os.environ.setdefault("IMAGENET_PLUS_CACHE", str(work / "cache"))
    import torch

    from imagenet_plus.classes.sets import ClassInfo
    from imagenet_plus.contract import read_class_records, run_paths
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.pipeline.ranks import init_dist
    from imagenet_plus.score.scorers import decode_image
    from imagenet_plus.score.stage import ScoreConfig, Scorers, run_score

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    try:
        run = write_run(work / "run", args.images, args.resolution, shard_size=args.batch_size * 2)
        clip_dir, cls_dir = build_models(work)
        cfg = ScoreConfig(clip_model=clip_dir, inception_weights="tiny-random", classifier=cls_dir,
                          nsfw_model="none", batch_size=args.batch_size)
        classes = read_class_records(run_paths(run))
        device = init_dist().device
        scorers = Scorers(cfg, device, [ClassInfo.from_dict(c) for c in classes])
        scorers.load_all()
        _ = scorers.class_embeddings

        samples = [s for t in sorted((run / "generated").glob("*.tar")) for s in iter_shard(t)]
        batches = []
        for i in range(0, len(samples), args.batch_size):
            chunk = samples[i : i + args.batch_size]
            images = [decode_image(s["jpg"], s["__key__"]) for s in chunk]
            prompts = [json.loads(s["json"])["prompt"] for s in chunk]
            batches.append((torch.stack(images), scorers.clip.preprocess(images),
                            scorers.classifier.preprocess(images), prompts))
        bare_seconds(scorers, batches[:1])  # warm-up

        bare, stage = [], []

        def time_stage() -> None:
            shutil.rmtree(run / "scores", ignore_errors=True)
            scorers.clip._text_cache.clear()
            start = time.perf_counter()
            run_score(run, cfg, scorers=scorers)
            stage.append(time.perf_counter() - start)

        for r in range(args.repeats):  # alternate the order so that drifting machine load hits both sides
            if r % 2:
                time_stage()
                bare.append(bare_seconds(scorers, batches))
            else:
                bare.append(bare_seconds(scorers, batches))
                time_stage()
        n = len(samples)
        bare_rate, stage_rate = n / min(bare), n / min(stage)
        print(f"device={device} images={n} batch_size={args.batch_size} resolution={args.resolution}")
        print(f"bare forwards: {min(bare):.2f} s ({bare_rate:.2f} img/s); runs: {[round(b, 2) for b in bare]}")
        print(f"score stage:   {min(stage):.2f} s ({stage_rate:.2f} img/s); runs: {[round(s, 2) for s in stage]}")
        print(f"score_throughput_ratio={stage_rate / bare_rate:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
