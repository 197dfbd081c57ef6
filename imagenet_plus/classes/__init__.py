"""Class sets: ``imagenet-1k`` (timm), ``wordnet:SYNSET`` subtrees (nltk WordNet 3.0), custom files;
prompts per class."""

from imagenet_plus.classes.sets import ClassInfo, read_classes_json, resolve_classes, write_classes_json

__all__ = ["ClassInfo", "read_classes_json", "resolve_classes", "write_classes_json"]
