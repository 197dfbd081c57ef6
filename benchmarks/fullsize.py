"""Full-size throughput without the weights: ``generate`` and ``score`` vs bare model calls, real architectures.

The published configs (``benchmarks/architectures/*.json``, built by ``benchmarks/architectures.py``) with random
weights run exactly as fast as the real models, so the project's own overhead (prompts, per-image generators,
black check, JPEG encoding, tar writing, decoding, preprocessing, parquet writes) is measured here at its real
share of the time, not at the share it has next to a tiny model. In one run:

1. the pipeline (``--model``: SD-turbo, SDXL, FLUX.1-schnell or SD 3.5 Medium) is built with random weights in
   ``--dtype`` and saved with ``save_pretrained`` (in a child process, so its memory is not counted below),
   then loaded back by the project's loader (``imagenet_plus.models.load_pipeline``: the folder a user's run
   takes, ``--compile`` applying the project's recipe);
2. generate: ``run_generate`` end to end on that pipeline (injected, as ``benchmarks/generate_overhead.py``
   does, so loading is timed once, apart) vs a bare loop calling the pipeline on the same batches (prompts,
   one CPU generator per image, same arguments) and nothing else;
3. score: ``run_score`` end to end on the images just generated, with the score stage's default networks at
   full size (CLIP ViT-L/14, torch-fidelity's InceptionV3, ConvNeXt-B; random weights, saved and loaded back
   through the scorers' own loaders) vs their bare forwards on pre-decoded, pre-processed batches
   (``benchmarks/score_throughput.py``'s ``bare_seconds``).

Each comparison is timed ``--repeats`` times after a warm-up, alternating which side goes first, and the best
of each side is kept. Peak host RSS (sampled) and peak GPU memory are printed for each side. A model whose
weights do not fit the host memory (``--host-memory-gib``, default: what is available now) or the GPU is
skipped with a message (last line ``fullsize_skipped=1``). The last lines are ``fullsize_generate_ratio``,
``fullsize_score_ratio`` (each: bare seconds / stage seconds, wall clock, best of the repeats) and
``fullsize_ratio`` (the lower of the two; goals ≥ 0.90 for generate and ≥ 0.85 for score). On the CPU the same
ratios of process CPU seconds (all threads: the writer and decoding threads count) are printed before them
(``fullsize_*_cpu_ratio``): on a machine shared with other work, their load moves wall time by tens of percent
between two runs of the same code, CPU time by a few.

Usage: ``python benchmarks/fullsize.py [--model sd-turbo] [--resolution 256] [--images 8] [--device cpu|cuda]
[--dtype auto|float32|float16|bfloat16] [--compile] [--steps N] [--batch-size 4] [--repeats 2] [--models-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from architectures import PIPELINES, load_spec, pipeline_parameter_counts  # noqa: E402

from imagenet_plus.errors import UserError  # noqa: E402

CLASSES = "id,name\nn01443537,goldfish\nn02123045,tabby cat\nn02676566,acoustic guitar\nn07920052,espresso\n"
#: Host memory (GiB) kept free beside the weights: activations, the score networks, the libraries.
HOST_MARGIN_GIB = 3.0
#: GPU memory (GiB) kept free beside the weights for activations.
GPU_MARGIN_GIB = 4.0
GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line.

    Raises:
        UserError: an unknown model, device or dtype, or a non-positive count (one line naming it).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd-turbo", help=f"one of {', '.join(PIPELINES)}")
    ap.add_argument("--resolution", type=int, default=256, help="image side in pixels")
    ap.add_argument("--images", type=int, default=8, help="images per timed run (a multiple of 4: 4 classes)")
    ap.add_argument("--batch-size", type=int, default=4, help="generate batch size")
    ap.add_argument("--score-batch-size", type=int, default=8, help="score batch size")
    ap.add_argument("--steps", type=int, default=None, help="inference steps (default: the model card's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the pipeline (the project's recipe)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed repeats; the best of each side is kept")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="keep the saved random-weight models here and reuse them (default: a temp folder)")
    ap.add_argument("--host-memory-gib", type=float, default=None,
                    help="host memory the run may use (default: available memory now)")
    ap.add_argument("--skip-score", action="store_true", help="measure generate only")
    args = ap.parse_args(argv)
    if args.model not in PIPELINES:
        raise UserError(f"unknown model {args.model!r} (choose from {', '.join(PIPELINES)})")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise UserError(f"--dtype must be auto, float32, float16 or bfloat16, got {args.dtype!r}")
    for name in ("resolution", "images", "batch_size", "score_batch_size", "repeats", "threads"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.images % 4:
        raise UserError(f"--images must be a multiple of 4 (4 classes), got {args.images}")
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    return args


class PeakRSS:
    """Peak resident memory (MiB) of this process while the ``with`` block runs, sampled every 20 ms.

    ``ru_maxrss`` only ever grows over the whole process, so it cannot tell one phase's peak from another's.
    """

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return self.peak / 2**20


class Phase:
    """Times a block, with its peak host RSS and (on CUDA) peak GPU memory."""

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __enter__(self) -> Phase:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._rss = PeakRSS().__enter__()
        self.start = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self._cpu
        self._rss.__exit__()
        self.rss_mib = self._rss.mib
        self.gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None


def _memory_line(label: str, phases: list[Phase]) -> str:
    rss = max(p.rss_mib for p in phases)
    gpu = [p.gpu_mib for p in phases if p.gpu_mib is not None]
    return f"{label} peak host RSS {rss:,.0f} MiB" + (f", peak GPU memory {max(gpu):,.0f} MiB" if gpu else "")


def build_once(folder: Path, command: list[str]) -> tuple[float, float]:
    """Run ``command`` (which writes ``folder``) in a child process unless ``folder`` is complete already.

    Returns:
        (seconds, peak RSS of that child in MiB, from ``os.wait4``); (0, 0) when the folder was reused.
    """
    if (folder / ".complete").exists():
        return 0.0, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command + [str(tmp)], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            tail = (err.read().strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"building {folder.name} failed: {tail}")
    (tmp / ".complete").write_text("ok\n")
    tmp.rename(folder)
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def fits(model: str, dtype: Any, device: Any, host_gib: float | None) -> tuple[bool, str, dict[str, int]]:
    """Whether the weights of ``model`` in ``dtype`` fit the host (and GPU) memory; a line saying so."""
    import psutil
    import torch

    counts = pipeline_parameter_counts(model)
    weights_gib = sum(counts.values()) * torch.empty((), dtype=dtype).element_size() / GIB
    budget = host_gib if host_gib is not None else psutil.virtual_memory().available / GIB
    if weights_gib + HOST_MARGIN_GIB > budget:
        name = str(dtype).removeprefix("torch.")
        return False, (f"skipped: {model} needs {weights_gib:.1f} GiB for its {name} weights + "
                       f"{HOST_MARGIN_GIB:.0f} GiB, this host has {budget:.1f} GiB (--host-memory-gib)"), counts
    if getattr(device, "type", str(device)) == "cuda":
        gpu_gib = torch.cuda.get_device_properties(device).total_memory / GIB
        if weights_gib + GPU_MARGIN_GIB > gpu_gib:
            return False, (f"skipped: {model} needs {weights_gib:.1f} GiB of GPU memory for its weights "
                           f"+ {GPU_MARGIN_GIB:.0f} GiB, the GPU has {gpu_gib:.1f} GiB"), counts
    return True, "", counts


def bare_generate(pipe: Any, batches: list[tuple[list[str], list[int]]], kwargs: dict[str, Any]) -> None:
    """The pipeline on each batch with one CPU generator per image, and nothing else."""
    import torch

    for prompts, seeds in batches:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.inference_mode():
            pipe(prompt=prompts, generator=gens, **kwargs)


def measure_generate(args: argparse.Namespace, pipe: Any, folder: Path, work: Path, device: Any,
                     dtype_name: str) -> tuple[list[Phase], list[Phase], Path]:
    """Warm up, then alternate ``run_generate`` and the bare loop ``args.repeats`` times."""
    from imagenet_plus.generate.config import GenerateConfig
    from imagenet_plus.generate.stage import run_generate
    from imagenet_plus.models.diffusion import DiffusersSource, pipeline_kwargs
    from imagenet_plus.models.registry import MODEL_PRESETS

    preset = MODEL_PRESETS[load_spec(args.model)["hub_id"]]
    class_file = work / "classes.csv"
    class_file.write_text(CLASSES)

    def config(images_per_class: int) -> GenerateConfig:
        return GenerateConfig(
            classes=str(class_file), images_per_class=images_per_class, model=str(folder),
            steps=args.steps or preset.steps, guidance=preset.guidance, resolution=args.resolution,
            batch_size=args.batch_size, shard_size=max(args.images, 1), dtype=dtype_name, compile=args.compile,
            max_sequence_length=preset.max_sequence_length,
        ).resolved()

    cfg = config(args.images // 4)
    batches: list[tuple[list[str], list[int]]] = []

    class Recording(DiffusersSource):
        def __call__(self, prompts, negatives, seeds):  # type: ignore[no-untyped-def]
            batches.append((list(prompts), list(seeds)))
            return super().__call__(prompts, negatives, seeds)

    def factory(c: GenerateConfig, _device: Any) -> DiffusersSource:
        # what imagenet_plus.generate.make_source does after loading, on the pipeline loaded once
        source = Recording(pipe, steps=c.steps, guidance=c.guidance, width=c.resolution, height=c.resolution,
                           family=c.family, max_sequence_length=c.max_sequence_length)
        source.check_arguments(c.model, c.negative_prompt)
        return source

    kwargs = pipeline_kwargs(cfg.family, cfg.steps, cfg.guidance, cfg.resolution, cfg.resolution,
                             cfg.max_sequence_length, [])
    # warm-up: first calls allocate and pick kernels; with --compile, every batch shape must compile first
    warm = cfg if args.compile else config(-(-args.batch_size // 4))  # one batch
    run_generate(warm, work / "warmup", source_factory=factory)
    gen, bare = [], []
    run_dir = work / "run"
    for rep in range(args.repeats):
        order = ("generate", "bare") if rep % 2 == 0 else ("bare", "generate")
        for side in order:
            if side == "generate":
                shutil.rmtree(run_dir, ignore_errors=True)
                batches.clear()
                with Phase(device) as phase:
                    run_generate(cfg, run_dir, source_factory=factory)
                gen.append(phase)
            else:
                recorded = list(batches)  # the first repeat runs generate first, so this is never empty
                with Phase(device) as phase:
                    bare_generate(pipe, recorded, kwargs)
                bare.append(phase)
    return gen, bare, run_dir


def measure_score(args: argparse.Namespace, run_dir: Path, models: dict[str, str],
                  device: Any) -> tuple[list[Phase], list[Phase], float]:
    """Warm up, then alternate ``run_score`` and the networks' bare forwards ``args.repeats`` times."""
    import torch
    from score_throughput import bare_seconds

    from imagenet_plus.classes.sets import ClassInfo
    from imagenet_plus.contract import read_class_records, run_paths
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.scorers import decode_image
    from imagenet_plus.score.stage import ScoreConfig, Scorers, run_score

    cfg = ScoreConfig(clip_model=models["clip"], inception_weights=models["inception"],
                      classifier=models["classifier"], nsfw_model="none", batch_size=args.score_batch_size)
    classes = [ClassInfo.from_dict(c) for c in read_class_records(run_paths(run_dir))]
    start = time.perf_counter()
    scorers = Scorers(cfg, device, classes)
    scorers.load_all()
    _ = scorers.class_embeddings
    load_seconds = time.perf_counter() - start

    samples = [s for t in sorted((run_dir / "generated").glob("*.tar")) for s in iter_shard(t)]
    image_key = next(k for k in ("jpg", "png", "webp") if k in samples[0])
    batches = []
    for i in range(0, len(samples), args.score_batch_size):
        chunk = samples[i : i + args.score_batch_size]
        images = [decode_image(s[image_key], s["__key__"]) for s in chunk]
        prompts = [json.loads(s["json"])["prompt"] for s in chunk]
        batches.append((torch.stack(images), scorers.clip.preprocess(images), scorers.classifier.preprocess(images),
                        prompts))
    bare_seconds(scorers, batches[:1])  # warm-up
    shutil.rmtree(run_dir / "scores", ignore_errors=True)
    scorers.clip._text_cache.clear()
    run_score(run_dir, cfg, scorers=scorers)  # warm-up of the stage's own path
    stage, bare = [], []
    for rep in range(args.repeats):
        order = ("score", "bare") if rep % 2 == 0 else ("bare", "score")
        for side in order:
            if side == "score":
                shutil.rmtree(run_dir / "scores", ignore_errors=True)
                scorers.clip._text_cache.clear()
                with Phase(device) as phase:
                    run_score(run_dir, cfg, scorers=scorers)
                stage.append(phase)
            else:
                with Phase(device) as phase:
                    forwards = bare_seconds(scorers, batches)
                phase.seconds = forwards  # the forwards only (the loop's own bookkeeping excluded)
                bare.append(phase)
    return stage, bare, load_seconds


def _times(phases: list[Phase]) -> str:
    """Wall seconds of each run, and the process's CPU seconds (all threads), which other load on a shared
    machine moves less than wall time."""
    return f"{[round(p.seconds, 2) for p in phases]} (process CPU s {[round(p.cpu_seconds, 1) for p in phases]})"


def quiet_tokenizer_warnings() -> None:
    """The character-level tokenizers cut prompts at 77 characters where real BPE would not (77 tokens): keep
    diffusers' and transformers' per-batch truncation warnings, which the real models would not print, quiet."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for name in ("stable_diffusion.pipeline_stable_diffusion", "stable_diffusion_xl.pipeline_stable_diffusion_xl",
                 "flux.pipeline_flux", "stable_diffusion_3.pipeline_stable_diffusion_3"):
        diffusers_logging.get_logger(f"diffusers.pipelines.{name}").setLevel(40)
    transformers_logging.get_logger("transformers.tokenization_utils_base").setLevel(40)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from imagenet_plus.models.diffusion import load_pipeline, resolve_dtype

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    quiet_tokenizer_warnings()
    dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(dtype).removeprefix("torch.")
    spec = load_spec(args.model)
    ok, message, counts = fits(args.model, dtype, device, args.host_memory_gib)
    print(f"model={args.model} ({spec['hub_id']} architecture, random weights) device={device} dtype={dtype_name} "
          f"compile={args.compile} resolution={args.resolution} images={args.images} batch_size={args.batch_size}")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in counts.items())
          + f"; total {sum(counts.values()) / 1e9:.3f} B")
    if not ok:
        print(message)
        print("fullsize_skipped=1")
        return

    temp = Path(tempfile.mkdtemp(prefix="bench-fullsize-"))
    models_dir = args.models_dir or temp / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("IMAGENET_PLUS_CACHE", str(temp / "cache"))
    builder = [sys.executable, str(Path(__file__).resolve().parent / "architectures.py")]
    wall = time.perf_counter()
    try:
        folder = models_dir / f"{args.model}-{dtype_name}"
        seconds, rss = build_once(folder, builder + ["save", args.model, "--dtype", dtype_name])
        print(f"build + save_pretrained: {seconds:.1f} s (child process, peak RSS {rss:,.0f} MiB)" if seconds
              else f"build: reused {folder}")
        with Phase(device) as load:
            pipe = load_pipeline(str(folder), device, dtype_name, compile=args.compile)
        print(f"load_pipeline: {load.seconds:.1f} s, peak host RSS {load.rss_mib:,.0f} MiB")

        gen, bare, run_dir = measure_generate(args, pipe, folder, temp, device, dtype_name)
        g, b = min(p.seconds for p in gen), min(p.seconds for p in bare)
        print(f"generate, bare pipeline loop: {b:.2f} s ({args.images / b:.3f} img/s); runs {_times(bare)}")
        print(f"generate, run_generate end to end: {g:.2f} s ({args.images / g:.3f} img/s); runs {_times(gen)}")
        print(_memory_line("generate, bare:", bare) + "; " + _memory_line("run_generate:", gen))
        ratios = {"fullsize_generate_ratio": b / g}
        cpu_ratios = {"fullsize_generate_cpu_ratio": min(p.cpu_seconds for p in bare) / min(p.cpu_seconds for p in gen)}

        if not args.skip_score:
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
            scorer_dir = models_dir / "scorers"
            seconds, rss = build_once(scorer_dir, builder + ["save-scorers"])
            if seconds:
                print(f"scorers build + save: {seconds:.1f} s (child process, peak RSS {rss:,.0f} MiB)")
            models = {"clip": str(scorer_dir / "clip-vit-l-14"), "classifier": str(scorer_dir / "convnext-base"),
                      "inception": str(scorer_dir / "inception-v3.pth")}
            stage, sbare, load_s = measure_score(args, run_dir, models, device)
            s, sb = min(p.seconds for p in stage), min(p.seconds for p in sbare)
            print(f"score networks loaded in {load_s:.1f} s (CLIP ViT-L/14, InceptionV3, ConvNeXt-B)")
            print(f"score, bare forwards: {sb:.2f} s ({args.images / sb:.3f} img/s); runs {_times(sbare)}")
            print(f"score, run_score end to end: {s:.2f} s ({args.images / s:.3f} img/s); runs {_times(stage)}")
            print(_memory_line("score, bare:", sbare) + "; " + _memory_line("run_score:", stage))
            ratios["fullsize_score_ratio"] = sb / s
            cpu_ratios["fullsize_score_cpu_ratio"] = (min(p.cpu_seconds for p in sbare)
                                                      / min(p.cpu_seconds for p in stage))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak host RSS of this process: {peak:,.0f} MiB; wall time {time.perf_counter() - wall:.0f} s")
        if device.type == "cpu":  # on a shared CPU, other processes move wall time far more than CPU time
            for name, value in cpu_ratios.items():
                print(f"{name}={value:.3f}")
        for name, value in ratios.items():
            print(f"{name}={value:.3f}")
        print(f"fullsize_ratio={min(ratios.values()):.3f}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    try:
        run(parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
