"""open_clip image towers: the real local-directory loading path gives the same embeddings as the built model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adacomed.extract.encoders import create_encoder
from adacomed.extract.encoders.openclip import TINY_CLIP_CONFIG
from adacomed.extract.errors import ExtractError, WeightsError


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((90, 70)) * 255).astype(np.uint8), mode="L").save(path)
    return path


def test_local_dir_loads_the_saved_tower_and_its_preprocessing(tmp_path, image):
    from safetensors.torch import save_file

    tiny = create_encoder("biomedclip", "tiny-random")
    folder = tmp_path / "clip"
    folder.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess})
    )
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, folder / "open_clip_model.safetensors")

    loaded = create_encoder("open-clip", f"local-dir:{folder}")
    assert loaded._model is None and loaded.embed_dim == TINY_CLIP_CONFIG["embed_dim"]
    fp = loaded.fingerprint("xray", "h").to_dict()
    assert fp["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and fp["preprocessing"]["interpolation"] == "bilinear"
    assert fp["weights"].startswith("sha256:")

    batch = loaded.collate([loaded.load_input(image)])
    assert not torch.allclose(batch, tiny.collate([tiny.load_input(image)]))  # its own declared normalisation
    same_input = tiny.encode(batch)
    np.testing.assert_allclose(loaded.encode(batch).numpy(), same_input.numpy(), atol=1e-6)
    with torch.inference_mode():  # and both are open_clip's own forward, not two equal wrong outputs
        library = tiny.model.encode_image(batch, normalize=False)
    assert library.abs().max() > 1e-3
    np.testing.assert_allclose(same_input.numpy(), library.numpy(), atol=1e-6)


def test_checkpoint_file_needs_an_architecture(tmp_path):
    with pytest.raises(ExtractError, match="architecture"):
        create_encoder("open-clip", str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="no weights"):
        create_encoder("open-clip")
