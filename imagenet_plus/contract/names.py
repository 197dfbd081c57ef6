"""Names of the contract: files and folders, keys, shard and member names, the sample's json fields.

Every file name a stage writes or reads is spelled here once; ``imagenet_plus.contract.paths`` builds
paths from these names, ``imagenet_plus.contract.records`` reads and writes their contents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import PARTIAL_MARKER, PARTIAL_SUFFIX  # noqa: F401 (names of the contract, owned by IO)
from imagenet_plus.io.lock import LOCK_NAME  # noqa: F401 (idem)
from imagenet_plus.io.tar import TAR_MTIME  # noqa: F401 (idem)

# ------------------------------------------------------------------------------------------------------------
# file names

RUN_YAML = "run.yaml"
CLASSES_JSON = "classes.json"
GENERATED_DIR = "generated"
SCORES_DIR = "scores"
SUMMARY_JSON = "summary.json"
MODELS_JSON = "models.json"
CLASS_TEXT_EMBEDDINGS = "class_text_embeddings.npy"
SELECTION_PARQUET = "selection.parquet"
#: ``diagnose``: one row per class (verdict and evidence) and the run-level summary beside it.
DIAGNOSIS_PARQUET = "diagnosis.parquet"
DIAGNOSIS_JSON = "diagnosis.json"
#: ``diagnose``: per-class CLIP image centroids (``synthetic``, ``real`` with a reference, ``class_ids``).
DIAGNOSIS_CENTROIDS = "diagnosis_centroids.npz"
#: ``diagnose``: cached CLIP image embeddings of a real reference (per-class sums and samples).
DIAGNOSIS_CACHE_DIR = "diagnosis-cache"
SELECTION_JSON = "selection.json"
THRESHOLDS_YAML = "thresholds.yaml"
PIPELINE_JSON = "pipeline.json"
#: Written by ``run``'s main process when a stage fails under a multi-process launch (the others stop waiting).
PIPELINE_FAILED = "pipeline.failed"
#: ``evaluate``'s result file inside its output folder.
EVAL_JSON = "eval.json"
#: Folder of the stages' records (``state/{stage}.json``): what each finished stage was made from.
STATE_DIR = "state"
#: Captions of real images (``captions/NNNNN.parquet`` per generated shard, ``captions/captioner.json``).
CAPTIONS_DIR = "captions"
CAPTIONER_JSON = "captioner.json"
#: Columns of a captions parquet: the generated sample's key, its real image's source, the caption.
CAPTION_COLUMNS = ("key", "source", "caption")
#: Scene descriptions per class written by a local language model (the ``llm`` prompt strategy).
LLM_PROMPTS_JSON = "llm_prompts.json"
#: Folder of the rank markers multi-process stages rendezvous through (``markers/{stage}/{job}/rank-NNNNN.*``).
MARKERS_DIR = "markers"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
#: The report's record: headline numbers and the fingerprint of its inputs (``run`` skips an up-to-date report).
REPORT_JSON = "report.json"
#: Release: timm's split description and the card.
INFO_NAME = "_info.json"
CARD_NAME = "README.md"
RELEASE_DATA_DIR = "data"

#: The report's plots (``RUN/report/{name}.png``) and contact-sheet folder (``RUN/report/sheets/{class_id}.jpg``).
REPORT_PLOTS = ("scores", "per_class", "groups", "class_map", "diagnosis_map")
REPORT_SHEETS_DIR = "sheets"

# ------------------------------------------------------------------------------------------------------------
# the project's own names: what cleanup may delete and a report swap may replace (nothing else, ever)

#: Leftovers of a killed shard writer in ``RUN/generated/``: ``00007.tar.partial``, ``00007.json.partial``.
GENERATED_PARTIAL_PATTERN = re.compile(r"^\d{5,}\.(?:tar|json)\.partial$")
#: A generated shard's tar (``00007.tar``); one without its stats JSON is a leftover of a kill.
GENERATED_TAR_PATTERN = re.compile(r"^\d{5,}\.tar$")
#: Leftovers of a killed score writer in ``RUN/scores/``: ``00007.parquet.partial``, ``00007.clip.npy.partial``…
SCORE_PARTIAL_PATTERN = re.compile(r"^\d{5,}\.[a-z.]+\.partial$")
#: Every file a report folder holds (relative to ``RUN/report/``): the only files a new report may replace.
REPORT_FILE_PATTERN = re.compile(
    rf"^(?:index\.html|report\.json|per_class\.csv|(?:{'|'.join(REPORT_PLOTS)})\.png"
    rf"|{REPORT_SHEETS_DIR}|{REPORT_SHEETS_DIR}/(?:diagnosis-)?[A-Za-z0-9_\-]+\.jpg)$"
)

#: Image members a sample may carry (the first present is the image); chosen by ``generate``'s image_format.
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
#: Image members and file extensions accepted when reading (a real reference, a test set, a release's tars):
#: JPEG files are often named ``.jpeg``; image folders of real photos may hold BMP, PPM or TIFF files.
READ_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
#: Keys are ``{class_id}_{index:06d}``; no dots (datasets/webdataset split keys at the first dot).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
#: The longest file name most file systems take (Linux ``NAME_MAX``: ext4, XFS, btrfs, overlayfs, NFS, tmpfs).
NAME_MAX = 255
#: The longest class id. A class id names files and folders, so it must leave room for the longest name built from
#: it: a diagnosis contact sheet of the report while it is written, ``report/sheets/diagnosis-{id}.jpg.partial``,
#: is 10 + id + 4 + 8 characters, and 255 - 22 = 233. Every other name is shorter: a report sheet
#: ``{id}.jpg.partial`` (id + 12), a sample key ``{id}_{index:06d}`` (id + 7) as an image-folder file
#: ``{key}.JPEG`` (id + 12; an index of up to 16 digits still fits), the image-folder class folder ``{id}``.
#: Tar member names (``{key}.json``) have no such limit (a name over 100 bytes gets a pax record).
CLASS_ID_MAX = NAME_MAX - len("diagnosis-") - len(".jpg") - len(PARTIAL_SUFFIX)
#: Release splits, in order.
SPLITS = ("train", "validation")

#: Libraries whose versions are recorded in run.yaml and the dataset card.
RECORDED_LIBRARIES = (
    "imagenet-plus", "torch", "diffusers", "transformers", "accelerate", "webdataset", "datasets", "huggingface-hub",
    "timm", "torch-fidelity", "torchmetrics", "nltk",
)


# ------------------------------------------------------------------------------------------------------------
# keys and shard names


def shard_name(index: int) -> str:
    """``7`` → ``00007`` (the stem of a generated shard's files)."""
    return f"{index:05d}"


def make_key(class_id: str, index: int) -> str:
    """The sample key ``{class_id}_{index:06d}``."""
    key = f"{class_id}_{index:06d}"
    if not KEY_PATTERN.match(key):
        raise UserError(f"class id {class_id!r} gives an invalid sample key {key!r} (letters, digits, _ and - only)")
    return key


def class_id_of_key(key: str) -> str | None:
    """``n01440764_000042`` → ``n01440764``: the class id of a key ``{class_id}_{index}`` (None if not one)."""
    head, sep, tail = key.rpartition("_")
    return head if sep and head and tail.isdigit() else None


#: How webdataset splits a member name into sample key and extension (``webdataset.tariterators.base_plus_ext``:
#: the key is everything before the first dot of the base name). Repeated here, not imported, because importing
#: webdataset imports torch (~8 s and ~700 MiB), which release and select otherwise never need; a test
#: checks the two agree.
MEMBER_NAME_PATTERN = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_member_name(name: str) -> tuple[str, str]:
    """A tar member name → (sample key, member extension), as webdataset groups them."""
    match = MEMBER_NAME_PATTERN.match(name)
    if match is None:
        raise UserError(f"tar member {name!r} has no extension: not a webdataset sample member")
    return match.group(1), match.group(2)


def image_member(sample: Mapping[str, Any], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> str | None:
    """The image member of a sample (the first of ``extensions`` present), or ``None``."""
    return next((e for e in extensions if e in sample), None)


def release_shard_name(split: str, index: int) -> str:
    """``('train', 3)`` → ``data/train-00003.tar`` (relative to the release folder)."""
    return f"{RELEASE_DATA_DIR}/{split}-{index:05d}.tar"


# ------------------------------------------------------------------------------------------------------------
# the sample's json member

