"""Training-loader throughput: ``imagenet_plus.data.make_loader`` vs a raw webdataset decode loop.

Builds a release in a temp folder (fake run → fake scores → the real select and release stages), then
times, in the same process and on the same files (page cache warm):

- raw: ``wds.WebDataset(urls).to_tuple("jpg", "cls")`` + PIL decode → uint8 tensor (the leanest loop:
  ``.decode("pil")`` would be slower, it decodes every member);
- loader: ``make_loader(REL, batch_size=64, num_workers=0, shuffle_buffer=1000)`` (shuffle + batches);
- at the training size (``--train-size``, default half the stored size): raw + a PIL resize to that size vs
  ``make_loader(..., image_size=…)`` (JPEG draft-mode decode);
- datasets streaming: ``load_dataset(REL, split="train", streaming=True)`` iterated with the same decode,
  and ``make_loader(..., backend="datasets")``.

raw and loader run 5 times interleaved (medians reported; the ratio is the median of the per-round
ratios, since the machine may be shared), the datasets ones twice. Prints img/s of each and, on the last
line, ``load_throughput_ratio=X`` (loader img/s / raw img/s at the stored size, same output tensors;
goal >= 1.0), after ``load_throughput_ratio_train_size=X`` (the same at the training size).
Usage: ``python benchmarks/load_throughput.py [--images N] [--size PX] [--train-size PX]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_fake_run  # noqa: E402  (sets offline env vars and temp caches first)
from release_fixtures import write_fake_scores  # noqa: E402

from imagenet_plus.contract import INFO_NAME  # noqa: E402


def build_release(tmp: Path, images: int, size: int) -> Path:
    from imagenet_plus.release.stage import ReleaseConfig, run_release
    from imagenet_plus.select import SelectConfig, run_select

    classes = [{"label": i, "id": f"n{i:08d}", "name": f"class {i}", "lemmas": [f"class {i}"], "definition": "",
                "hypernym": "", "group": ""} for i in range(10)]
    per_class = images // len(classes)
    run = write_fake_run(tmp / "run", per_class=per_class, shard_size=256, size=size, classes=classes)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=per_class))
    return run_release(run, tmp / "rel", ReleaseConfig(val_per_class=1, shard_size=max(1, per_class * 10 // 8)))


def timed(fn) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=None, help="training size (default: half of --size)")
    args = parser.parse_args()
    train_size = args.train_size or max(1, args.size // 2)

    import io
    import json

    import torch
    import webdataset as wds
    from PIL import Image

    from imagenet_plus.data import make_loader, pil_to_uint8_tensor

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        rel = build_release(Path(d), args.images, args.size)
        info = json.loads((rel / INFO_NAME).read_text())
        urls = [str(rel / f) for f in info["splits"]["train"]["filenames"]]
        n_train = info["splits"]["train"]["num_samples"]

        def raw() -> int:
            # the leanest loop: no shuffle, no batching, only the image member decoded (as the loader does)
            n = 0
            for jpg, cls in wds.WebDataset(urls, shardshuffle=False).to_tuple("jpg", "cls"):
                pil_to_uint8_tensor(Image.open(io.BytesIO(jpg)))
                int(cls)
                n += 1
            return n

        loader = make_loader(rel, split="train", batch_size=64, num_workers=0, shuffle_buffer=1000)

        def raw_resized() -> int:
            n = 0
            for jpg, cls in wds.WebDataset(urls, shardshuffle=False).to_tuple("jpg", "cls"):
                image = Image.open(io.BytesIO(jpg)).convert("RGB").resize((train_size, train_size), Image.BILINEAR)
                pil_to_uint8_tensor(image)
                int(cls)
                n += 1
            return n

        small = make_loader(rel, split="train", batch_size=64, num_workers=0, shuffle_buffer=1000,
                            image_size=train_size)

        def ours_small() -> int:
            return sum(len(y) for _x, y in small)

        def ours() -> int:
            return sum(len(y) for _x, y in loader)

        def ds_stream() -> int:
            import datasets

            n = 0
            for ex in datasets.load_dataset(str(rel), split="train", streaming=True):
                pil_to_uint8_tensor(ex["jpg"])
                n += 1
            return n

        ds_loader = make_loader(rel, split="train", batch_size=64, shuffle_buffer=1000, backend="datasets")

        def ours_ds() -> int:
            return sum(len(y) for _x, y in ds_loader)

        raw()  # warm the page cache and imports
        rates: dict[str, list[float]] = {}
        order = [("raw", raw), ("loader", ours), ("raw_resized", raw_resized), ("loader_image_size", ours_small)] * 5
        order += [("datasets_streaming", ds_stream), ("loader_datasets", ours_ds)] * 2
        for name, fn in order:
            seconds, n = timed(fn)
            assert n == n_train, (name, n, n_train)
            rates.setdefault(name, []).append(n / seconds)
        # the machine is shared: rounds are interleaved and the median of the per-round ratios is reported
        ratio = statistics.median(lo / r for lo, r in zip(rates["loader"], rates["raw"], strict=True))
        ratio_small = statistics.median(lo / r for lo, r in zip(rates["loader_image_size"], rates["raw_resized"],
                                                                 strict=True))
        results = {k: statistics.median(v) for k, v in rates.items()}
        print(f"release: {n_train} train images of {args.size}x{args.size} px in {len(urls)} shards (1 process)")
        print(f"raw webdataset decode loop: {results['raw']:.0f} img/s")
        print(f"imagenet_plus.data.make_loader (webdataset, shuffle 1000, batch 64): {results['loader']:.0f} img/s")
        print(f"datasets streaming (load_dataset(REL, streaming=True)): {results['datasets_streaming']:.0f} img/s")
        print(f"imagenet_plus.data.make_loader (backend=datasets): {results['loader_datasets']:.0f} img/s")
        print(f"raw loop + PIL resize to {train_size} px: {results['raw_resized']:.0f} img/s")
        print(f"make_loader(image_size={train_size}) (JPEG draft decode): {results['loader_image_size']:.0f} img/s")
        print(f"load_throughput_ratio_train_size={ratio_small:.3f}")
        print(f"load_throughput_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
