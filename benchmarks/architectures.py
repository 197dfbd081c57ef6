"""Full-size models of the published architectures, with random weights: compute cost without the weights.

The configs live in ``benchmarks/architectures/*.json``, copied from the published ``config.json`` files (each
component names the Hub repo and file it comes from). This module builds from them:

- a diffusers pipeline per generator (:data:`PIPELINES`: SD-turbo, SDXL, FLUX.1-schnell, SD 3.5 Medium), with
  its scheduler from the published scheduler config and tokenizers built locally as the project's tiny
  pipelines build theirs (:func:`imagenet_plus.tiny.tiny_clip_tokenizer`, :func:`imagenet_plus.tiny.tiny_t5_tokenizer`);
- the score stage's three networks (:data:`SCORERS`): CLIP ViT-L/14 (``CLIPModel`` + ``CLIPProcessor``),
  ConvNeXt-B (timm, saved with ``save_for_hf``) and torch-fidelity's InceptionV3.

Weights are random: every module is created on the meta device (``accelerate.init_empty_weights``: no memory,
no initialisation, buffers real) and its parameters are then filled by :func:`materialize` with one cheap draw
each, because the libraries' own initialisation of an 11.9 B-parameter transformer takes minutes on a CPU.
Compute cost does not depend on the weights' values, so a pipeline built here runs as fast as the real one.
The draw keeps activations finite through every depth (normal, std 1/sqrt(fan-in); biases 0; norm scales 1),
so no denormal or overflow slows the kernels.

Tokenizers are character-level (no vocabulary file can be downloaded here) over the real vocabulary sizes of the
embeddings. The diffusion pipelines pad every prompt to the tokenizer's maximum length (77 CLIP tokens, T5's
``max_sequence_length``), so their cost does not depend on the tokenizer; CLIP scoring pads to the longest
prompt of a batch, which is longer in characters than in BPE tokens (the text tower then costs a little more).

Usage: ``python benchmarks/architectures.py`` prints every architecture's parameter counts (meta device, no
memory); ``python benchmarks/architectures.py save sd-turbo OUT [--dtype float32]`` saves a pipeline folder that
``imagenet-plus generate --model OUT`` loads; ``save-scorers OUT`` saves the CLIP and ConvNeXt folders.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError

#: Folder of the JSON configs.
ARCH_DIR = Path(__file__).resolve().parent / "architectures"
#: Generator pipelines (``--model`` words of ``benchmarks/fullsize.py``), each ``ARCH_DIR/<name>.json``.
PIPELINES = ("sd-turbo", "sdxl", "flux-schnell", "sd35-medium")
#: The score stage's networks, each ``ARCH_DIR/<name>.json``.
SCORERS = ("clip-vit-l-14", "inception-v3", "convnext-base")
#: Parameter names (last part) of 0-d parameters and the value they get (CLIP's temperature: ln(1/0.07)).
SCALAR_VALUES = {"logit_scale": 2.6592}


def load_spec(name: str) -> dict[str, Any]:
    """The JSON spec ``ARCH_DIR/<name>.json``.

    Raises:
        UserError: no such architecture (the message lists the known ones).
    """
    path = ARCH_DIR / f"{name}.json"
    if name not in PIPELINES + SCORERS or not path.is_file():
        raise UserError(f"unknown architecture {name!r} (choose from {', '.join(PIPELINES + SCORERS)})")
    return json.loads(path.read_text(encoding="utf-8"))


def torch_dtype(name: str) -> Any:
    """``float32``/``float16``/``bfloat16`` → the torch dtype."""
    import torch

    if name not in ("float32", "float16", "bfloat16"):
        raise UserError(f"dtype must be float32, float16 or bfloat16, got {name!r}")
    return getattr(torch, name)


def _fill(tensor: Any, name: str, generator: Any) -> None:
    """One cheap random draw that keeps activations finite (see the module docstring)."""
    leaf = name.rsplit(".", 1)[-1]
    if tensor.ndim >= 2:
        fan_in = tensor[0].numel()
        tensor.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
    elif tensor.ndim == 0:
        tensor.fill_(SCALAR_VALUES.get(leaf, 0.0))
    elif leaf.endswith("bias"):
        tensor.zero_()
    else:  # norm scales, embeddings of one vector
        tensor.fill_(1.0)


def materialize(module: Any, dtype: Any, seed: int = 0) -> Any:
    """Give every meta-device parameter of ``module`` real memory in ``dtype`` and a random value (in place).

    Shared parameters (T5's tied input embeddings) stay shared; buffers (created for real under
    ``init_empty_weights``) are cast to ``dtype`` when floating point.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    made: dict[int, Any] = {}
    for mod_name, mod in module.named_modules():
        for pname, param in list(mod._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                if param.device.type == "meta":
                    data = torch.empty(param.shape, dtype=dtype)
                    _fill(data, f"{mod_name}.{pname}", generator)
                else:
                    data = param.data.to(dtype)
                made[id(param)] = torch.nn.Parameter(data, requires_grad=False)
            mod._parameters[pname] = made[id(param)]
        for bname, buf in list(mod._buffers.items()):
            if buf is not None and buf.is_floating_point():
                mod._buffers[bname] = buf.to(dtype)
    return module.eval()


def _empty(meta: bool) -> Any:
    """Where a module is created: entirely on the meta device (``meta``: buffers too, so SD 3.5's 226 M-number
    positional table is not computed), or with parameters on meta and real buffers (to be materialised)."""
    import torch
    from accelerate import init_empty_weights

    return torch.device("meta") if meta else init_empty_weights()


def build_module(entry: Mapping[str, Any], dtype_name: str = "float32", meta: bool = False) -> Any:
    """One diffusers or transformers model from a spec entry (``library``, ``class``, ``config``).

    Args:
        entry: a component of a spec (``components.unet``) or a scorer's ``model``.
        dtype_name: parameter dtype after :func:`materialize`.
        meta: leave the parameters on the meta device (no memory; for parameter counts).
    """
    library, cls_name, config = entry["library"], entry["class"], dict(entry["config"])
    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, cls_name)
        with _empty(meta):
            model = cls.from_config(config)
    elif library == "transformers":
        import transformers

        cls = getattr(transformers, cls_name)
        with _empty(meta):
            model = cls(cls.config_class(**config))
        # accelerate's meta context re-creates a parameter on every assignment, which unties tied weights (T5's
        # input embeddings): tie them again outside it.
        model.tie_weights()
    else:
        raise UserError(f"build_module: library {library!r} is built by its own function")
    return model if meta else materialize(model, torch_dtype(dtype_name))


def _tokenizer(entry: Mapping[str, Any]) -> Any:
    from imagenet_plus.models.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    return tiny_clip_tokenizer() if entry["kind"] == "clip" else tiny_t5_tokenizer(model_max_length=512)


def build_pipeline(name: str, dtype_name: str = "float32", meta: bool = False) -> Any:
    """The diffusers pipeline of ``name`` (one of :data:`PIPELINES`) with random weights.

    Args:
        name: ``sd-turbo``, ``sdxl``, ``flux-schnell`` or ``sd35-medium``.
        dtype_name: weights dtype.
        meta: keep the models on the meta device (for parameter counts; the pipeline cannot run).
    """
    import diffusers

    spec = load_spec(name)
    if name not in PIPELINES:
        raise UserError(f"{name!r} is not a generator pipeline (choose from {', '.join(PIPELINES)})")
    parts: dict[str, Any] = dict(spec.get("pipeline_kwargs", {}))
    for part, entry in spec["components"].items():
        if part.startswith("tokenizer"):
            parts[part] = _tokenizer(entry)
        elif part == "scheduler":
            parts[part] = getattr(diffusers, entry["class"]).from_config(entry["config"])
        else:
            parts[part] = build_module(entry, dtype_name, meta=meta)
    return getattr(diffusers, spec["pipeline"])(**parts)


def count_parameters(module: Any) -> int:
    """Number of distinct parameters (shared ones once)."""
    return sum(p.numel() for p in module.parameters())


def checkpoint_numel(module: Any) -> int:
    """Numbers a checkpoint of ``module`` holds: distinct parameters plus persistent buffers.

    Differs from :func:`count_parameters` where a model keeps a large table as a buffer (SD 3.5's 384×384
    positional embedding: 226 M numbers, part of the published "2.5 B parameters" of SD 3.5 Medium).
    """
    total = count_parameters(module)
    for mod in module.modules():
        total += sum(b.numel() for name, b in mod._buffers.items()
                     if b is not None and name not in mod._non_persistent_buffers_set)
    return total


def pipeline_parameter_counts(name: str) -> dict[str, int]:
    """Checkpoint size (:func:`checkpoint_numel`) of each model of pipeline ``name``, built on the meta device."""
    spec = load_spec(name)
    return {part: checkpoint_numel(build_module(entry, meta=True))
            for part, entry in spec["components"].items() if "library" in entry and part != "scheduler"}


def build_clip(meta: bool = False, dtype_name: str = "float32") -> tuple[Any, Any]:
    """CLIP ViT-L/14 (``CLIPModel``, random weights) and its ``CLIPProcessor`` (published preprocessing)."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    spec = load_spec("clip-vit-l-14")
    model = build_module(spec["model"], dtype_name, meta=meta)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(**spec["image_processor"]["config"]),
                              tokenizer=_tokenizer(spec["tokenizer"]))
    return model, processor


def build_convnext(meta: bool = False) -> Any:
    """ConvNeXt-B from timm's registered architecture and the spec's model arguments, random weights."""
    import timm
    import torch

    cfg = load_spec("convnext-base")["model"]["config"]
    kwargs = {k: tuple(v) for k, v in cfg["model_args"].items()}
    if meta:
        with torch.device("meta"):
            return timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **kwargs)
    torch.manual_seed(0)
    return timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **kwargs).eval()


def build_inception(meta: bool = False) -> Any:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (the spec's features), left at random initialisation.

    torch-fidelity always loads a weights file in its constructor; an empty state dict is skipped here, the
    way :func:`imagenet_plus.scorers.inception.tiny_inception_weights` builds its (full-size) random weights.
    """
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    cfg = load_spec("inception-v3")["model"]["config"]

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[no-untyped-def]
            if not state_dict:
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        with torch.device("meta" if meta else "cpu"):
            return _Unloaded(cfg["name"], list(cfg["features"]), feature_extractor_weights_path=str(empty))


def scorer_parameter_counts() -> dict[str, int]:
    """Checkpoint size (:func:`checkpoint_numel`) of the three scorer networks, built on the meta device."""
    clip, _ = build_clip(meta=True)
    return {"clip-vit-l-14": checkpoint_numel(clip), "inception-v3": checkpoint_numel(build_inception(meta=True)),
            "convnext-base": checkpoint_numel(build_convnext(meta=True))}


def save_pipeline(name: str, folder: Path, dtype_name: str = "float32") -> Path:
    """Build pipeline ``name`` with random weights and ``save_pretrained`` it (safetensors) into ``folder``."""
    pipe = build_pipeline(name, dtype_name)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_scorers(folder: Path) -> dict[str, str]:
    """Save CLIP ViT-L/14 (transformers folder), ConvNeXt-B (timm ``save_for_hf`` folder) and InceptionV3 (a
    torch-fidelity state dict ``.pth``) with random weights.

    Returns:
        ``{"clip": folder, "classifier": folder, "inception": file}``, loadable by the score stage's
        ``--clip-model``, ``--classifier`` and ``--inception-weights``.
    """
    import torch
    from timm.models import save_for_hf

    folder = Path(folder)
    clip_dir, cls_dir, inception = folder / "clip-vit-l-14", folder / "convnext-base", folder / "inception-v3.pth"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_inception().state_dict(), inception)
    model, processor = build_clip()
    model.save_pretrained(clip_dir, safe_serialization=True)
    processor.save_pretrained(clip_dir)
    pre = load_spec("convnext-base")["model"]["config"]["pretrained_cfg"]
    data_config = {k: pre[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    save_for_hf(build_convnext(), str(cls_dir), safe_serialization=True, data_config=data_config)
    return {"clip": str(clip_dir), "classifier": str(cls_dir), "inception": str(inception)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    save = sub.add_parser("save", help="save a pipeline folder with random weights")
    save.add_argument("model", choices=PIPELINES)
    save.add_argument("out", type=Path)
    save.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    scorers = sub.add_parser("save-scorers", help="save the CLIP and ConvNeXt folders with random weights")
    scorers.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.command == "save":
        print(save_pipeline(args.model, args.out, args.dtype))
        return
    if args.command == "save-scorers":
        print(json.dumps(save_scorers(args.out)))
        return
    total = 0
    for name in PIPELINES:
        counts = pipeline_parameter_counts(name)
        total += sum(counts.values())
        print(f"{name}: " + ", ".join(f"{part} {n / 1e6:,.1f} M" for part, n in counts.items())
              + f"; total {sum(counts.values()) / 1e9:.3f} B")
    counts = scorer_parameter_counts()
    total += sum(counts.values())
    print("scorers: " + ", ".join(f"{part} {n / 1e6:,.1f} M" for part, n in counts.items()))
    print(f"architectures_parameters_b={total / 1e9:.3f}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
