"""A typed 🤗 datasets builder over an imagenet-plus release (a local folder or an ``hf://`` path).

The packaged ``webdataset`` builder that ``load_dataset(REL)`` / ``load_dataset("USER/NAME")`` runs names
columns after the tar members (``jpg``, ``cls``, ``json``, ``__key__``) and keeps the metadata in one
struct. This builder gives flat, typed columns instead: ``image`` (Image), ``label`` (ClassLabel named by
class id), ``key``, ``class_id``, ``class_name``, ``prompt``, ``negative_prompt``, ``seed``, ``model``,
``scheduler``, ``steps``, ``guidance``, ``width``, ``height``, ``attempt``, ``strategy`` and the scores
(``clip_score``, ``clip_class_score``, ``clip_class_prob``, ``clip_class_rank``, ``isc_kl``,
``classifier_top1``, ``classifier_top5``, ``classifier_prob``, ``realism``, ``composite``).

**Use it by importing it, never as a loading script.** datasets >= 4 no longer runs dataset scripts:
``load_dataset("imagenet_plus_builder.py")`` or a Hub repo holding a root ``.py`` raises "Dataset scripts
are no longer supported" — so this file is never uploaded with a release (``imagenet-plus publish`` refuses
a root ``.py``). Import it as a module (datasets re-imports the builder's module by name, so it must be
importable, e.g. with ``builder_script/`` on ``sys.path``) and instantiate the class directly::

    import sys
    sys.path.insert(0, "builder_script")
    from imagenet_plus_builder import ImagenetPlusBuilder

    builder = ImagenetPlusBuilder(data_dir="path/to/REL")           # or "hf://datasets/USER/NAME"
    builder.download_and_prepare()
    train = builder.as_dataset(split="train")                       # Arrow-backed, typed columns
    stream = builder.as_streaming_dataset(split="train")            # no preparation, streams the tars

Column names and dtypes come from :mod:`imagenet_plus.contract` (the sample fields and the release scores),
so imagenet-plus must be installed where the builder runs (``pip install imagenet-plus``).

Input: ``REL/_info.json`` (splits, shard files, class list) and ``REL/data/*.tar``. Output: Arrow tables in
the datasets cache (``HF_DATASETS_CACHE``, never inside the release), or a streaming dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets

from imagenet_plus.contract import (
    IMAGE_EXTENSIONS,
    INFO_NAME,
    RELEASE_SCORE_FIELDS,
    SAMPLE_FIELDS,
    SCORES_MEMBER,
    image_member,
    split_member_name,
)

#: Sample fields that are not their own column: ``label`` is the ClassLabel column, ``nsfw`` is always false in a
#: release (flagged images are regenerated or dropped) and ``index`` is part of the key.
NOT_COLUMNS = ("label", "nsfw", "index")
#: Metadata columns and their dtypes (the contract's sample fields, in order).
META_COLUMNS = {k: v for k, v in SAMPLE_FIELDS.items() if k not in NOT_COLUMNS}
#: Score columns and their dtypes (the release scores, composite last).
SCORE_COLUMNS = dict(RELEASE_SCORE_FIELDS)


@dataclass
class ImagenetPlusConfig(datasets.BuilderConfig):
    """Builder config: ``data_dir`` is the release folder or an ``hf://datasets/USER/NAME[@rev]`` path."""


class ImagenetPlusBuilder(datasets.GeneratorBasedBuilder):
    """Typed columns over an imagenet-plus release (see the module docstring)."""

    BUILDER_CONFIG_CLASS = ImagenetPlusConfig
    DEFAULT_WRITER_BATCH_SIZE = 500

    def _release_info(self) -> dict[str, Any]:
        import fsspec

        if not self.config.data_dir:
            raise ValueError("ImagenetPlusBuilder needs data_dir= (a release folder or hf://datasets/USER/NAME)")
        path = self.config.data_dir.rstrip("/") + "/" + INFO_NAME
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return json.load(f)

    def _info(self) -> datasets.DatasetInfo:
        info = self._release_info()
        names = [c["id"] for c in info["classes"]]
        columns: dict[str, Any] = {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=names),
            "key": datasets.Value("string"),
        }
        columns.update({k: datasets.Value(v) for k, v in {**META_COLUMNS, **SCORE_COLUMNS}.items()})
        return datasets.DatasetInfo(
            description="imagenet-plus: a synthetic, quality-filtered ImageNet-style dataset.",
            features=datasets.Features(columns),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        info = self._release_info()
        root = self.config.data_dir.rstrip("/")
        out = []
        for split, s in info["splits"].items():
            files = dl_manager.download([f"{root}/{f}" for f in s["filenames"]])
            out.append(datasets.SplitGenerator(
                name=split, gen_kwargs={"archives": [dl_manager.iter_archive(f) for f in files]}))
        return out

    def _generate_examples(self, archives: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for archive in archives:
            sample: dict[str, bytes] = {}
            current = None
            for name, f in archive:
                key, ext = split_member_name(name.rpartition("/")[2])
                if current is not None and key != current:
                    yield current, self._example(current, sample)
                    sample = {}
                current = key
                sample[ext] = f.read()
            if current is not None:
                yield current, self._example(current, sample)

    @staticmethod
    def _example(key: str, sample: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(sample["json"])
        scores = meta.get(SCORES_MEMBER) or {}
        image_ext = image_member(sample, IMAGE_EXTENSIONS)
        ex: dict[str, Any] = {"image": {"bytes": sample[image_ext], "path": f"{key}.{image_ext}"},
                              "label": int(sample["cls"]), "key": key}
        ex.update({k: meta.get(k) for k in META_COLUMNS})
        ex.update({k: scores.get(k) for k in SCORE_COLUMNS})
        return ex
