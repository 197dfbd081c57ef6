"""Generate config: YAML + flags, validation naming the key."""

from __future__ import annotations

import pytest

from imagenet_plus.config import GenerateConfig, load_generate_config, split_config_file
from imagenet_plus.errors import UserError


def test_file_keys_are_flags_and_flags_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("images-per-class: 4\nmodel: tiny-random\nbatch_size: 2\nprompt-strategy: [name, diverse]\n"
                 "score:\n  clip_model: tiny-random\n")
    cfg = load_generate_config(f, {"batch_size": 3, "seed": None})
    assert cfg.images_per_class == 4 and cfg.batch_size == 3 and cfg.model == "tiny-random"
    assert cfg.prompt_strategy == ("name", "diverse")
    assert split_config_file(f)[1] == {"score": {"clip_model": "tiny-random"}}


def test_resolved_fills_presets_and_hash_ignores_batch_and_count():
    cfg = GenerateConfig(model="stabilityai/sd-turbo").resolved()
    assert (cfg.steps, cfg.guidance, cfg.resolution) == (1, 0.0, 512)
    a = GenerateConfig(model="tiny-random", batch_size=2, images_per_class=3)
    b = GenerateConfig(model="tiny-random", batch_size=7, images_per_class=9)
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != GenerateConfig(model="tiny-random", seed=1).config_hash()


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        ({"images_per_class": 0}, "images-per-class"),
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch-size"),
        ({"resolution": 500}, "resolution"),
        ({"prompt_strategy": "name,fancy"}, "fancy"),
        ({"image_format": "gif"}, "image-format"),
        ({"quality": 101}, "quality"),
        ({"images_per_class": "many"}, "images_per_class"),
        ({"dtype": "float8"}, "dtype"),
    ],
)
def test_invalid_values_name_the_key(overrides, culprit):
    with pytest.raises(UserError, match=culprit):
        load_generate_config(None, overrides)


def test_unknown_key_and_malformed_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("imagez-per-class: 3\n")
    with pytest.raises(UserError, match=r"unknown key 'imagez-per-class'"):
        load_generate_config(f)
    f.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=r"malformed YAML \(line"):
        load_generate_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_generate_config(f)
    with pytest.raises(UserError, match="config file not found"):
        load_generate_config(tmp_path / "missing.yaml")
