"""Release: the kept images of a run as an ImageNet-style WebDataset release. Reads ``RUN``, writes ``REL``.

Input: ``RUN/selection.parquet`` (from ``select``), ``RUN/generated/*.tar``, ``RUN/scores/*.parquet`` and
``summary.json``, ``RUN/classes.json``, ``RUN/run.yaml``. Output (design.md §4)::

    REL/README.md                 dataset card (YAML configs + dataset_info.features) — see card.py
    REL/_info.json                per split: name, num_samples, filenames, shard_lengths (timm's format),
                                  plus the class list, the image member and the release fingerprint
    REL/data/train-00000.tar      training shards, samples shuffled across classes with a fixed seed
    REL/data/validation-00000.tar validation shards (``val_per_class`` images of every class)

and with ``--imagefolder DIR`` also ``DIR/train/{wnid}/{key}.JPEG`` and ``DIR/val/{wnid}/{key}.JPEG``
(torchvision's ``ImageFolder`` layout; ``.png``/``.webp`` when the run wrote those formats).

Image bytes are copied from the generated shards, never re-encoded. Each sample's ``json`` holds the
generation metadata and, under ``scores``, its scores and the select composite.

Safety: the release is built in ``REL.partial`` (each shard through :class:`~imagenet_plus.shards.PartialTarWriter`)
and renamed to ``REL`` only when complete, so a failure never leaves half a release under the final name.
``_info.json`` records a fingerprint of the inputs (selection, generated shards, scores, class set, run
config hash and the release settings). Releasing again into the same folder with the same fingerprint is a
no-op; a folder holding anything else (another release, other files) is refused. The image folder works the
same way (``DIR.partial``, fingerprint in ``DIR/.imagenet-plus-release.json``).

Shard counts: ``shard_size`` is an upper bound; the number of shards is rounded up to 1, 2, 4, 8 or a
multiple of 8 (many divisors, so ``split_dataset_by_node`` gives every rank whole shards), and samples are
spread evenly over the shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagenet_plus.card import (
    META_FIELDS,
    SCORE_FIELDS,
    dataset_info_yaml,
    model_license,
    release_features,
    render_card,
    size_category,
    validate_card,
)
from imagenet_plus.configio import stable_hash
from imagenet_plus.contract import IMAGE_EXTENSIONS, RunPaths, read_class_records, read_run_yaml, run_paths
from imagenet_plus.errors import UserError
from imagenet_plus.progress import progress_bar
from imagenet_plus.shards import PartialTarWriter, write_json_atomic

INFO_NAME = "_info.json"
IMAGEFOLDER_MARKER = ".imagenet-plus-release.json"
#: File extension of the image-folder export for each image member (ImageNet uses ``.JPEG``).
IMAGEFOLDER_EXT = {"jpg": ".JPEG", "png": ".png", "webp": ".webp"}
#: Split name in the shards/_info.json → folder name in the image-folder export (ImageNet's names).
IMAGEFOLDER_SPLITS = {"train": "train", "validation": "val"}


@dataclass(frozen=True)
class ReleaseConfig:
    """Settings of ``imagenet-plus release`` (fields are its flags).

    Attributes:
        val_per_class: validation images per class (taken from the kept ones; 0 for no validation split).
        shard_size: largest number of samples per tar shard.
        imagefolder: also export ``train/{wnid}/*.JPEG`` and ``val/{wnid}/*.JPEG`` into this folder.
        seed: seed of the train/validation split and of the shuffle across classes.
    """

    val_per_class: int = 50
    shard_size: int = 1000
    imagefolder: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.val_per_class < 0:
            raise UserError(f"release config: 'val-per-class' must be >= 0, got {self.val_per_class}")
        if self.shard_size <= 0:
            raise UserError(f"release config: 'shard-size' must be positive, got {self.shard_size}")
        if self.seed < 0:
            raise UserError(f"release config: 'seed' must be >= 0, got {self.seed}")


def num_shards_for(n: int, shard_size: int) -> int:
    """Shards for ``n`` samples of at most ``shard_size`` each, rounded up to 1, 2, 4, 8 or a multiple of 8."""
    if n <= 0:
        return 0
    need = math.ceil(n / shard_size)
    for candidate in (1, 2, 4, 8):
        if need <= candidate:
            count = candidate
            break
    else:
        count = math.ceil(need / 8) * 8
    return min(count, n)


def split_evenly(items: list[Any], parts: int) -> list[list[Any]]:
    """Cut ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def split_train_validation(kept: dict[str, list[str]], val_per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """Per class, ``val_per_class`` random kept keys go to validation, the rest to train; both shuffled.

    Args:
        kept: {class_id: kept keys}.
        val_per_class: validation images per class.
        seed: the seed (each class draws from its own ``random.Random(f"{seed}/{class_id}")``).

    Returns:
        (train keys, validation keys), each shuffled across classes.

    Raises:
        UserError: a class has kept images but not more than ``val_per_class``.
    """
    train, val = [], []
    for cid in sorted(kept):
        keys = sorted(kept[cid])
        if not keys:
            continue
        if val_per_class and len(keys) <= val_per_class:
            raise UserError(
                f"class {cid} has only {len(keys)} kept image(s), not more than --val-per-class {val_per_class}: "
                "lower --val-per-class or top the class up ('imagenet-plus generate --top-up')"
            )
        random.Random(f"{seed}/{cid}").shuffle(keys)
        val.extend(keys[:val_per_class])
        train.extend(keys[val_per_class:])
    random.Random(f"{seed}/train").shuffle(train)
    random.Random(f"{seed}/validation").shuffle(val)
    return train, val


@dataclass(frozen=True)
class _Member:
    tar: Path
    offset: int
    size: int


@dataclass
class _Index:
    """Where the kept samples' members are, their raw json, and what the metadata holds overall."""

    members: dict[str, dict[str, _Member]]
    raw_json: dict[str, bytes]  # kept as bytes (parsed when written): ~3x less memory at ImageNet scale
    extra_meta: dict[str, str]  # metadata fields beyond META_FIELDS → dtype
    schedulers: set[str]


def _index_generated(paths: RunPaths, wanted: set[str]) -> _Index:
    """Byte offsets of every member of the wanted keys in ``RUN/generated/*.tar`` (tar headers only)."""
    idx = _Index({}, {}, {}, set())
    tars = sorted(paths.generated.glob("*.tar"))
    if not tars:
        raise UserError(f"no shards in {paths.generated}: nothing to release")
    for tar in tars:
        try:
            with tarfile.open(tar, "r:") as tf:
                for info in tf:
                    if not info.isfile():
                        continue
                    key, _, ext = info.name.partition(".")
                    if key not in wanted:
                        continue
                    idx.members.setdefault(key, {})[ext] = _Member(tar, info.offset_data, info.size)
                    if ext == "json":
                        raw = tf.extractfile(info).read()  # type: ignore[union-attr]
                        meta = json.loads(raw)
                        idx.raw_json[key] = raw
                        if meta.get("scheduler"):
                            idx.schedulers.add(str(meta["scheduler"]))
                        for k, v in meta.items():
                            if k not in META_FIELDS and k != "scores" and (dtype := _infer_dtype(v)):
                                idx.extra_meta.setdefault(k, dtype)
        except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
            raise UserError(f"corrupt or truncated shard {tar}: {exc}") from None
    missing = sorted(wanted - set(idx.members))
    if missing:
        raise UserError(f"key {missing[0]} is in {paths.selection_parquet} but in no shard of {paths.generated}")
    return idx


def _read_member(m: _Member, handles: dict[Path, Any]) -> bytes:
    f = handles.get(m.tar)
    if f is None:
        f = handles[m.tar] = open(m.tar, "rb")
    f.seek(m.offset)
    data = f.read(m.size)
    if len(data) != m.size:
        raise UserError(f"corrupt or truncated shard {m.tar}")
    return data


def _plain(value: Any) -> Any:
    """numpy/pandas scalars → JSON values; NaN/NA → None."""
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return value


def _infer_dtype(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def release_fingerprint(paths: RunPaths, cfg: ReleaseConfig) -> str:
    """A hash of everything a release is built from (selection, shards, scores, classes, settings)."""
    listing = {
        "selection": _file_digest(paths.selection_parquet),
        "classes": _file_digest(paths.classes_json),
        "generated": [(p.name, p.stat().st_size) for p in sorted(paths.generated.glob("*.tar"))],
        "scores": [(p.name, _file_digest(p)) for p in sorted(paths.scores.glob("*.parquet"))],
        "settings": {"val_per_class": cfg.val_per_class, "shard_size": cfg.shard_size, "seed": cfg.seed},
        "config_hash": read_run_yaml(paths).get("config_hash"),
    }
    return stable_hash(listing)


def _existing_fingerprint(folder: Path, marker: str) -> str | None:
    try:
        return json.loads((folder / marker).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _check_target(folder: Path, marker: str, fingerprint: str, what: str) -> bool:
    """True when ``folder`` already holds this build; False when it is absent or empty; else UserError."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder: choose another {what} folder")
    if not any(folder.iterdir()):
        return False
    found = _existing_fingerprint(folder, marker)
    if found == fingerprint:
        return True
    if found is None:
        raise UserError(f"{folder} is not empty and holds no imagenet-plus release: choose another {what} folder")
    raise UserError(
        f"{folder} holds a different release (fingerprint {found}, this one {fingerprint}): "
        f"choose another {what} folder or delete it"
    )


def _promote(tmp: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # only ever an empty folder here (checked by _check_target)
    os.replace(tmp, final)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _metrics_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def pm(mean: Any, std: Any) -> str:
        return "not computed" if mean is None else f"{_fmt(mean)} ± {_fmt(std)}"

    return [
        ("FID (Inception pool3, vs reference)", _fmt(summary.get("fid"))),
        ("KID", pm(summary.get("kid_mean"), summary.get("kid_std"))),
        ("Inception Score", pm(summary.get("inception_score_mean"), summary.get("inception_score_std"))),
        ("CLIP score (mean, 100·cos)", _fmt(summary.get("clip_score_mean"))),
        ("precision (Kynkäänniemi et al.)", _fmt(summary.get("precision"))),
        ("recall (Kynkäänniemi et al.)", _fmt(summary.get("recall"))),
        ("images scored", _fmt(summary.get("num_images"))),
    ]


def _read_json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {path}: {exc}") from None


def run_release(run: str | Path, out: str | Path, cfg: ReleaseConfig) -> Path:
    """Build the release folder ``out`` from the kept images of ``run`` (see the module docstring).

    Args:
        run: the run directory (``select`` done).
        out: the release folder to create.
        cfg: the release settings.

    Returns:
        The release folder.

    Raises:
        UserError: ``select`` not run, a class too small for the validation split, corrupt inputs, or
            ``out`` (or the image folder) holding something else.
    """
    import pandas as pd

    paths = run_paths(run)
    out = Path(out)
    if not paths.selection_parquet.is_file():
        raise UserError(f"{paths.selection_parquet} not found: run 'imagenet-plus select {paths.root}' before release")
    fingerprint = release_fingerprint(paths, cfg)
    rel_done = _check_target(out, INFO_NAME, fingerprint, "--out")
    folder = Path(cfg.imagefolder) if cfg.imagefolder else None
    folder_done = _check_target(folder, IMAGEFOLDER_MARKER, fingerprint, "--imagefolder") if folder else True
    if rel_done and folder_done:
        return out

    try:
        sel = pd.read_parquet(paths.selection_parquet)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"unreadable {paths.selection_parquet}: {exc}") from None
    classes = read_class_records(paths)
    class_ids = [c["id"] for c in classes]
    kept_rows = sel[sel["kept"].astype(bool)]
    if kept_rows.empty:
        raise UserError(f"{paths.selection_parquet} keeps no image: loosen the thresholds and run select again")
    kept: dict[str, list[str]] = {cid: [] for cid in class_ids}
    for key, cid in zip(kept_rows["key"], kept_rows["class_id"], strict=True):
        if cid not in kept:
            raise UserError(f"{paths.selection_parquet}: class id {cid!r} is not in {paths.classes_json}")
        kept[cid].append(str(key))
    train, val = split_train_validation(kept, cfg.val_per_class, cfg.seed)
    composite = dict(zip(sel["key"], sel["composite"], strict=True))
    idx = _index_generated(paths, set(train) | set(val))
    index, extra_meta = idx.members, idx.extra_meta
    scores = _read_scores(paths, set(train) | set(val))

    image_exts = {ext for members in index.values() for ext in members if ext in IMAGE_EXTENSIONS}
    if len(image_exts) != 1:
        raise UserError(f"the kept samples in {paths.generated} mix image members {sorted(image_exts)}")
    image_ext = image_exts.pop()

    def sample_of(key: str, handles: dict[Path, Any]) -> dict[str, Any]:
        members = index[key]
        for ext in (image_ext, "cls", "json"):
            if ext not in members:
                raise UserError(f"sample {key} in {members[next(iter(members))].tar} has no '{ext}' member")
        meta = json.loads(idx.raw_json[key])
        doc = {k: _plain(meta.get(k)) for k in (*META_FIELDS, *extra_meta)}
        row = scores.get(key, {})
        doc["scores"] = {k: _plain(row.get(k)) for k in SCORE_FIELDS if k != "composite"}
        doc["scores"]["composite"] = _plain(composite.get(key))
        return {"__key__": key, image_ext: _read_member(members[image_ext], handles),
                "cls": str(int(meta["label"])).encode(), "json": json.dumps(doc, sort_keys=True).encode()}

    splits = {"train": train, "validation": val}
    schedulers = sorted(idx.schedulers)
    if not rel_done:
        _write_release(paths, out, cfg, fingerprint, splits, sample_of, classes, kept, image_ext, extra_meta,
                       ", ".join(schedulers))
    if folder is not None and not folder_done:
        class_of = dict(zip(kept_rows["key"].astype(str), kept_rows["class_id"].astype(str), strict=True))
        _write_imagefolder(folder, fingerprint, splits, index, class_of, image_ext)
    return out


def _read_scores(paths: RunPaths, wanted: set[str]) -> dict[str, dict[str, Any]]:
    import pandas as pd

    out: dict[str, dict[str, Any]] = {}
    for f in sorted(paths.scores.glob("*.parquet")):
        try:
            df = pd.read_parquet(f)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise UserError(f"unreadable scores file {f}: {exc}") from None
        cols = [c for c in SCORE_FIELDS if c in df.columns]
        df = df[df["key"].isin(wanted)]
        for rec in df[["key", *cols]].to_dict("records"):
            out[rec.pop("key")] = rec
    return out


def _write_release(paths: RunPaths, out: Path, cfg: ReleaseConfig, fingerprint: str, splits: dict[str, list[str]],
                   sample_of: Any, classes: list[dict], kept: dict[str, list[str]], image_ext: str,
                   extra_meta: dict[str, str], scheduler: str) -> None:
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    info_splits: dict[str, Any] = {}
    split_bytes: dict[str, int] = {}
    handles: dict[Path, Any] = {}
    total = sum(len(v) for v in splits.values())
    bar = progress_bar(total, "release")
    try:
        for split, keys in splits.items():
            if not keys:
                continue
            names, lengths, nbytes = [], [], 0
            for s, chunk in enumerate(split_evenly(keys, num_shards_for(len(keys), cfg.shard_size))):
                name = f"data/{split}-{s:05d}.tar"
                with PartialTarWriter(tmp / name) as w:
                    for key in chunk:
                        w.write(sample_of(key, handles))
                        bar.update(1)
                names.append(name)
                lengths.append(len(chunk))
                nbytes += (tmp / name).stat().st_size
            info_splits[split] = {"name": split, "num_samples": len(keys), "filenames": names,
                                  "shard_lengths": lengths}
            split_bytes[split] = nbytes
    finally:
        bar.close()
        for f in handles.values():
            f.close()
    run_yaml = read_run_yaml(paths)
    info = {
        "name": out.name,
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "image_ext": image_ext,
        "num_classes": len(classes),
        "classes": [{"label": c["label"], "id": c["id"], "name": c["name"]} for c in classes],
        "config_hash": run_yaml.get("config_hash"),
        "splits": info_splits,
    }
    write_json_atomic(tmp / INFO_NAME, info)
    card = _card_text(paths, run_yaml, info, classes, kept, splits, split_bytes, image_ext, extra_meta, scheduler)
    validate_card(card, str(out / "README.md"))
    (tmp / "README.md").write_text(card, encoding="utf-8")
    _promote(tmp, out)


def _card_text(paths: RunPaths, run_yaml: dict[str, Any], info: dict[str, Any], classes: list[dict],
               kept: dict[str, list[str]], splits: dict[str, list[str]], split_bytes: dict[str, int], image_ext: str,
               extra_meta: dict[str, str], scheduler: str) -> str:
    config = run_yaml.get("config", {})
    summary = _read_json_file(paths.summary_json)
    selection = _read_json_file(paths.selection_json)
    model = str(config.get("model", "unknown"))
    lic, lic_name, lic_link, lic_note = model_license(model)
    counts = {s: len(k) for s, k in splits.items() if k}
    features = release_features([c["id"] for c in classes], image_ext, extra_meta)
    card_yaml: dict[str, Any] = {
        "pretty_name": f"imagenet-plus: synthetic {config.get('classes', 'image classes')} ({model})",
        "license": lic,
        "task_categories": ["image-classification"],
        "size_categories": [size_category(sum(counts.values()))],
        "tags": ["synthetic", "imagenet", "webdataset", "diffusion"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": s, "path": f"data/{s}-*.tar"} for s in counts]}],
        "dataset_info": dataset_info_yaml(features, counts, split_bytes),
    }
    if lic_name:
        card_yaml["license_name"] = lic_name
        card_yaml["license_link"] = lic_link
    split_of = {k: s for s, keys in splits.items() for k in keys}
    pass_rate = selection.get("pass_rate", {})
    rows = []
    for c in classes:
        ks = kept.get(c["id"], [])
        rows.append({"label": c["label"], "id": c["id"], "name": c["name"],
                     "train": sum(split_of.get(k) == "train" for k in ks),
                     "validation": sum(split_of.get(k) == "validation" for k in ks),
                     "pass_rate": _fmt(pass_rate.get(c["id"]), 3)})
    n_train = counts.get("train", 0)
    n_train_shards = len(info["splits"].get("train", {}).get("filenames", []))
    th = {k: v for k, v in (selection.get("thresholds") or {}).items() if v not in (None, False)}
    scored = selection.get("num_scored") or 0
    passed = sum(selection.get("reasons", {}).get(r, 0) for r in ("kept", "over_quota"))
    models = summary.get("models") or {}
    context = {
        "card_yaml": card_yaml,
        "pretty_name": card_yaml["pretty_name"],
        "num_classes": len(classes),
        "num_train": n_train,
        "num_validation": counts.get("validation", 0),
        "versions": run_yaml.get("versions") or {},
        "model": model,
        "license_note": lic_note,
        "scheduler": config.get("scheduler") or scheduler or "model default",
        "steps": config.get("steps"),
        "guidance": config.get("guidance"),
        "resolution": config.get("resolution"),
        "prompt_strategies": ", ".join(config.get("prompt_strategy") or []) or str(config.get("prompt_strategy", "")),
        "negative_prompt": config.get("negative_prompt", ""),
        "seed": config.get("seed"),
        "class_spec": config.get("classes"),
        "config_hash": run_yaml.get("config_hash"),
        "metrics": _metrics_rows(summary),
        "reference": summary.get("reference"),
        "scoring_models": ", ".join(f"{k}: {v}" for k, v in models.items() if v) or "not recorded",
        "thresholds": ", ".join(f"`{k}: {v}`" for k, v in th.items()) or "defaults",
        "quota": selection.get("per_class_quota"),
        "num_kept": selection.get("num_kept", sum(counts.values())),
        "num_scored": scored,
        "overall_pass_rate": f"{passed / scored:.1%}" if scored else "n/a",
        "dropped_classes": selection.get("dropped_classes") or [],
        "flagged_classes": selection.get("flagged_classes") or [],
        "short_classes": ", ".join(f"{k} ({v} missing)" for k, v in (selection.get("short") or {}).items()),
        "is_imagenet": config.get("classes") == "imagenet-1k",
        "classes": rows,
        "image_ext": image_ext,
        "train_shards": n_train_shards,
        "validation_shards": len(info["splits"].get("validation", {}).get("filenames", [])),
        "last_train_shard": f"{max(n_train_shards - 1, 0):05d}",
        "divisors": ", ".join(str(d) for d in range(1, n_train_shards + 1) if n_train_shards % d == 0),
        "year": datetime.now(timezone.utc).year,
    }
    return render_card(context)


def _write_imagefolder(folder: Path, fingerprint: str, splits: dict[str, list[str]],
                       index: dict[str, dict[str, _Member]], class_of: dict[str, str], image_ext: str) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    handles: dict[Path, Any] = {}
    bar = progress_bar(sum(len(v) for v in splits.values()), "imagefolder")
    try:
        for split, keys in splits.items():
            for key in keys:
                cid = class_of[key]
                d = tmp / IMAGEFOLDER_SPLITS[split] / cid
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{key}{IMAGEFOLDER_EXT[image_ext]}").write_bytes(_read_member(index[key][image_ext], handles))
                bar.update(1)
    finally:
        bar.close()
        for f in handles.values():
            f.close()
    write_json_atomic(tmp / IMAGEFOLDER_MARKER, {"fingerprint": fingerprint})
    _promote(tmp, folder)
