"""Class sets: ``imagenet-1k`` (timm), ``wordnet:SYNSET`` subtrees (nltk WordNet 3.0), custom files;
prompts per class."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.classes.sets import ClassInfo, read_classes_json, resolve_classes, write_classes_json

__getattr__, __dir__ = lazy_exports(__name__, {
    "ClassInfo": "sets",
    "read_classes_json": "sets",
    "resolve_classes": "sets",
    "write_classes_json": "sets",
})
__all__ = ["ClassInfo", "read_classes_json", "resolve_classes", "write_classes_json"]
