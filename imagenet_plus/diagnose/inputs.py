"""What the diagnosis reads: the score stage's outputs as per-class sums, and a real reference's CLIP embeddings.

Memory is bounded by the number of classes: shards are read one at a time into per-class sums (count, sum of
embeddings, sum of squared norms, confusion counts), and the pairwise figures that need single images (Vendi)
use a fixed-size sample per class (see :class:`~imagenet_plus.diagnose.evidence.ClassAccumulator`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import (
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_SCORE,
    READ_IMAGE_EXTENSIONS,
    RunPaths,
)
from imagenet_plus.contract.diagnosis import REFERENCE_CLASS_IDS, REFERENCE_CLIP
from imagenet_plus.contract.scores import ModelsRecord, ScoreSummary, unreadable_scores
from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.diagnose.evidence import ClassAccumulator, sample_priority, zero_shot_confusion
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.storage import local_copy
from imagenet_plus.pipeline.config import stable_hash
from imagenet_plus.score.scorers.clip import ClipScorer

#: Score columns averaged per class.
MEAN_COLUMNS = (COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_CLASSIFIER_TOP1, COL_CLASSIFIER_TOP5)


@dataclass(frozen=True)
class ScoreSums:
    """The synthetic side, per class, from one pass over the score shards.

    Attributes:
        acc: CLIP image embeddings: counts, sums and the fixed sample.
        means: score column (:data:`MEAN_COLUMNS`) → per-class mean over the rows where it is not null.
        counts: score column → per-class number of non-null rows.
        confused: per class, images another class's text scores at least as high as their own.
        top_other: per class, the other class that does so most often (-1: none).
        top_other_count: how many of the class's images it takes.
    """

    acc: ClassAccumulator
    means: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    confused: np.ndarray
    top_other: np.ndarray
    top_other_count: np.ndarray


def read_score_sums(paths: RunPaths, num_classes: int, text_emb: np.ndarray, sample_size: int) -> ScoreSums:
    """One pass over the score shards into per-class sums (memory bounded by the number of classes)."""
    import pyarrow.parquet as pq

    dim = text_emb.shape[1]
    acc = ClassAccumulator(num_classes, dim, sample_size)
    sums = {name: np.zeros(num_classes) for name in MEAN_COLUMNS}
    counts = {name: np.zeros(num_classes, dtype=np.int64) for name in sums}
    confused = np.zeros(num_classes, dtype=np.int64)
    confused_pairs: dict[tuple[int, int], int] = {}
    for parquet in paths.scored_parquets():
        files = paths.score_files(parquet.stem)
        if not files.clip.is_file():
            raise UserError(f"{files.clip} is missing beside {parquet}: re-run 'imagenet-plus score'")
        try:
            table = pq.read_table(local_copy(parquet), columns=["key", "label", *sums])
        except Exception as exc:  # pyarrow raises several types for a cut or overwritten file
            raise unreadable_scores(parquet, exc) from None
        try:
            emb = np.load(local_copy(files.clip), allow_pickle=False).astype(np.float32)
        except (OSError, ValueError, EOFError) as exc:
            raise unreadable_scores(files.clip, exc) from None
        if len(emb) != table.num_rows:
            raise UserError(f"{files.clip} has {len(emb)} rows but {parquet} has {table.num_rows}")
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise UserError(f"{files.clip}: embeddings of size {emb.shape[-1]} but class texts of size {dim}")
        labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise UserError(f"{parquet}: label {int(labels[bad][0])} is outside the run's {num_classes} classes")
        keys = [str(k) for k in table.column("key").to_pylist()]
        acc.add(labels, emb, sample_priority(keys))
        for name in sums:
            col = table.column(name).to_pandas()
            present = col.notna().to_numpy()
            np.add.at(sums[name], labels[present], col[present].astype(float).to_numpy())
            np.add.at(counts[name], labels[present], 1)
        is_confused, other = zero_shot_confusion(emb, labels, text_emb)
        np.add.at(confused, labels, is_confused.astype(np.int64))
        pair, n = np.unique(labels[is_confused] * num_classes + other[is_confused], return_counts=True)
        for p, k in zip(pair.tolist(), n.tolist(), strict=True):
            key = (p // num_classes, p % num_classes)
            confused_pairs[key] = confused_pairs.get(key, 0) + k
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {name: np.where(counts[name] > 0, sums[name] / np.maximum(counts[name], 1), np.nan) for name in sums}
    top_other = np.full(num_classes, -1, dtype=np.int64)
    top_other_count = np.zeros(num_classes, dtype=np.int64)
    for (c, j), k in sorted(confused_pairs.items()):
        if k > top_other_count[c]:
            top_other[c], top_other_count[c] = j, k
    return ScoreSums(acc=acc, means=means, counts=counts, confused=confused, top_other=top_other,
                     top_other_count=top_other_count)


def clip_model_of(paths: RunPaths) -> str:
    """The CLIP model the run was scored with (``models.json``, else ``summary.json``'s ``models``)."""
    if paths.models_json.is_file():
        return ModelsRecord.read(paths.models_json).clip
    if paths.summary_json.is_file():
        return ScoreSummary.read(paths.summary_json).models.clip
    raise UserError(f"{paths.models_json} does not name the run's CLIP model: re-run 'imagenet-plus score'")


# ------------------------------------------------------------------------------------------------------------
# the real reference


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower().lstrip(".") in READ_IMAGE_EXTENSIONS


def _class_folder_images(root: Path) -> list[tuple[Path, list[Path]]]:
    """Each class subfolder of a reference folder with its images (sorted)."""
    return [(sub, [f for f in sorted(sub.rglob("*")) if _is_image(f)])
            for sub in sorted(p for p in root.iterdir() if p.is_dir())]


def _reference_files(root: Path, class_index: Mapping[str, int]) -> list[tuple[Path, int]]:
    """The images of a reference folder with the label of their class subfolder (sorted)."""
    folders = _class_folder_images(root)
    if not folders:
        raise UserError(f"reference {root} has no class subfolders (expected REAL/CLASS_ID/*.jpg)")
    unknown = [sub.name for sub, _ in folders if sub.name not in class_index]
    if unknown:
        raise UserError(f"reference {root} has class folder(s) the run lacks: {', '.join(unknown[:5])}"
                        f"{' …' if len(unknown) > 5 else ''}")
    out = [(f, class_index[sub.name]) for sub, images in folders for f in images]
    if not out:
        raise UserError(f"reference {root} holds no images ({', '.join('.' + e for e in READ_IMAGE_EXTENSIONS)})")
    return out


def reference_listing(reference: str | Path | None) -> str | None:
    """The identity of a reference folder's images (names, sizes, modification times; no image is read).

    None without a reference or for a file (whose own identity is a freshness input); ``missing`` for a path
    that does not exist (the stage then fails naming it).
    """
    if reference is None or Path(reference).is_file():
        return None
    root = Path(reference)
    if not root.is_dir():
        return "missing"
    listing = []
    for _sub, images in _class_folder_images(root):
        for f in images:
            st = f.stat()
            listing.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return stable_hash(listing)


def _iter_decoded(files: list[tuple[Path, int]]) -> Iterator[tuple[Any, int, str]]:
    import torch
    from PIL import Image, UnidentifiedImageError

    for path, label in files:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"unreadable reference image {path}: {exc}") from None
        yield torch.from_numpy(arr.copy()).permute(2, 0, 1), label, str(path)


def _npz_embeddings(root: Path, index: Mapping[str, int], sample_per_class: int) -> ClassAccumulator:
    """Per-class sums and samples of an ``.npz`` of CLIP embeddings (``clip``, ``class_ids``)."""
    try:
        with np.load(local_copy(root), allow_pickle=False) as data:
            clip = np.asarray(data[REFERENCE_CLIP], np.float32)
            ids = [str(x) for x in data[REFERENCE_CLASS_IDS]]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"reference {root} must be an .npz with arrays '{REFERENCE_CLIP}' (N×D) and "
                        f"'{REFERENCE_CLASS_IDS}' (N): {exc}") from None
    unknown = sorted(set(ids) - set(index))
    if unknown:
        raise UserError(f"reference {root} has class(es) the run lacks: {', '.join(unknown[:5])}"
                        f"{' …' if len(unknown) > 5 else ''}")
    if clip.ndim != 2 or len(clip) != len(ids):
        raise UserError(f"reference {root}: '{REFERENCE_CLIP}' has shape {clip.shape} but '{REFERENCE_CLASS_IDS}' "
                        f"has {len(ids)} rows")
    acc = ClassAccumulator(len(index), clip.shape[1], sample_per_class)
    acc.add(np.array([index[c] for c in ids], dtype=np.int64), clip,
            sample_priority(f"{c}/{i}" for i, c in enumerate(ids)))
    return acc


def load_reference_embeddings(reference: str | Path, paths: RunPaths, class_ids: Sequence[str], clip_model: str,
                              cfg: DiagnoseConfig) -> ClassAccumulator:
    """Per-class sums and samples of the real reference's CLIP image embeddings (cached under the run).

    The cache file's name hashes the model, the sample size and the folder's file list with sizes and
    modification times (``RUN/diagnosis-cache/reference-HASH.npz``).

    Raises:
        UserError: the reference is missing, has classes the run lacks, or an ``.npz`` lacks its arrays.
    """
    root = Path(reference)
    index = {cid: i for i, cid in enumerate(class_ids)}
    if root.is_file() and root.suffix == ".npz":
        return _npz_embeddings(root, index, cfg.sample_per_class)
    if not root.is_dir():
        raise UserError(f"reference not found: {root} (a folder of class subfolders, or an .npz of CLIP embeddings)")
    files = _reference_files(root, index)
    h = hashlib.sha256(f"{clip_model}\n{cfg.sample_per_class}\n".encode())
    for f, _ in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    cache = paths.diagnosis_cache / f"reference-{h.hexdigest()[:24]}.npz"
    if cache.is_file():
        with np.load(local_copy(cache), allow_pickle=False) as data:
            return ClassAccumulator.from_arrays({k: data[k] for k in data.files}, cfg.sample_per_class)
    scorer = ClipScorer(clip_model, _device(cfg.device))
    acc = ClassAccumulator(len(class_ids), scorer.dim, cfg.sample_per_class)
    batch: list[tuple[Any, int, str]] = []
    for item in _iter_decoded(files):
        batch.append(item)
        if len(batch) == cfg.batch_size:
            _embed_batch(scorer, batch, acc, root)
            batch = []
    if batch:
        _embed_batch(scorer, batch, acc, root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as f:
        np.savez(f, **acc.to_arrays())
    return acc


def _embed_batch(scorer: Any, batch: list[tuple[Any, int, str]], acc: ClassAccumulator, root: Path) -> None:
    emb = scorer.embed_images([b[0] for b in batch]).cpu().numpy()
    acc.add(np.array([b[1] for b in batch]), emb, sample_priority(str(Path(b[2]).relative_to(root)) for b in batch))
