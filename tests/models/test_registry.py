"""The model registry: one table keyed by model id (family, preset, licence, GPU memory, tiny builder)."""

from __future__ import annotations

from imagenet_plus.models.registry import FAMILIES, MODELS, tiny_builder


def test_one_table_per_model_id():
    """Each known model id keys one entry: its family and settings, licence, GPU memory, and (tiny ids) builder."""
    for name, known in MODELS.items():
        tiny = name.startswith("tiny-random")
        assert known.family in FAMILIES and known.license, name
        assert (known.gpu_memory_gb is None) == tiny == (tiny_builder(name) is not None), name
        assert (known.license_name is None) == (known.license_link is None) == (known.license != "other"), name
    assert tiny_builder("someone/model") is None
