"""Pipeline loading: tiny-random round trip through from_pretrained, clear errors for absent models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagenet_plus.errors import UserError
from imagenet_plus.models import DiffusersSource, load_pipeline, model_location


def test_tiny_random_is_saved_once_and_loaded_back(tmp_path):
    pipe = load_pipeline("tiny-random", torch.device("cpu"), "float32")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert model_location("tiny-random") == model_location("tiny-random")
    src = DiffusersSource(pipe, steps=2, guidance=2.0, width=32, height=32)
    imgs, nsfw = src(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert [im.size for im in imgs] == [(32, 32)] * 2 and nsfw == [False, False]
    # an image depends on its own seed and prompt, not on the batch it is in
    alone, _ = src(["a photo of a dog"], [""], [2])
    np.testing.assert_allclose(np.asarray(alone[0], np.float32), np.asarray(imgs[1], np.float32), atol=2)
    # save_pretrained → from_pretrained reproduces images exactly
    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusersSource(load_pipeline(str(tmp_path / "copy"), torch.device("cpu"), "float32"), 2, 2.0, 32, 32)
    imgs2, _ = again(["a photo of a cat", "a photo of a dog"], ["", ""], [1, 2])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, imgs2))


def test_absent_models_are_errors_not_fallbacks(tmp_path):
    with pytest.raises(UserError, match="model path not found: ./missing/model"):
        load_pipeline("./missing/model", torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"), torch.device("cpu"))
    # a Hub id while offline (the tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(UserError, match="cannot load model 'nobody/no-such-model'"):
        load_pipeline("nobody/no-such-model", torch.device("cpu"))
