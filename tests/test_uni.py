"""UNI: architecture, strict tensor-only loading, declared preprocessing, and the bag loop against a bare forward."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adacomed.extract.encoders import uni
from adacomed.extract.errors import WeightsError
from adacomed.extract.wsi.patch_reader import PatchReaderPool, ReadSpec
from adacomed.extract.wsi.patcher import SlidePatcher

sys.path.insert(0, str(Path(__file__).parent))
import wsi_synthetic as synthetic  # noqa: E402


class NotATensor:
    """Anything torch.load would have to unpickle."""


def test_tiny_random_is_uni_architecture_class() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = uni.build_uni_model(uni.TINY_RANDOM)
    assert isinstance(model, VisionTransformer) and model.num_classes == 0 and model.dynamic_img_size
    assert "blocks.0.ls1.gamma" in model.state_dict()  # init_values -> LayerScale, as UNI's checkpoint has
    out = model(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, uni.TINY_UNI["embed_dim"])
    again = uni.build_uni_model(uni.TINY_RANDOM)
    torch.testing.assert_close(again(torch.ones(1, 3, 224, 224)), model(torch.ones(1, 3, 224, 224)))
    assert uni.tiny_identity().startswith("tiny-random:")


def test_preprocessing_is_imagenet_not_timm_default() -> None:
    pre = uni.UniPreprocessing()
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert pre.as_dict()["resize"] == 224 and pre.as_dict()["center_crop"] == 224
    pixels = np.full((1, 224, 224, 3), 255, dtype=np.uint8)
    batch = uni.normalizer(pre, "cpu")(pixels)
    torch.testing.assert_close(batch[0, :, 0, 0], (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std))


def test_strict_tensor_only_loading(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = uni.build_uni_model(uni.TINY_RANDOM)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    loaded = uni.build_uni_model(str(tmp_path), size=uni.TINY_UNI)  # a folder holding model.safetensors
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(loaded(x), model(x))
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = uni.build_uni_model(str(tmp_path / "pytorch_model.bin"), size=uni.TINY_UNI)
    torch.testing.assert_close(loaded(x), model(x))
    torch.save({"weights": NotATensor()}, tmp_path / "pickled.bin")
    with pytest.raises(WeightsError, match="weights_only=True"):
        uni.build_uni_model(str(tmp_path / "pickled.bin"), size=uni.TINY_UNI)
    partial = dict(state)
    partial.pop("blocks.0.ls1.gamma")
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError, match="strict load"):
        uni.build_uni_model(str(tmp_path / "partial.safetensors"), size=uni.TINY_UNI)
    with pytest.raises(WeightsError, match="no such file"):
        uni.build_uni_model(str(tmp_path / "absent.bin"))


def test_bag_equals_bare_forward_over_the_same_patches(tmp_path: Path) -> None:
    path = synthetic.write_slide(synthetic.odd_size_recipe(2000, 1600), tmp_path / "s.tiff")
    patched = SlidePatcher(preset="bwh_biopsy", a_t=0).read(path)
    pre = uni.UniPreprocessing()
    spec = ReadSpec(patched.slide_options, 0, 256, 256, pre.transform)
    model = uni.build_uni_model(uni.TINY_RANDOM)
    with PatchReaderPool(0) as pool:
        bag = uni.embed_patches(model, pool, spec, patched.coords, 7, pre)
        pixels = np.concatenate([b[1] for b in pool.batches(spec, patched.coords, 1000)])
    with torch.inference_mode():
        bare = model(uni.normalizer(pre, "cpu")(pixels)).numpy()
    assert bag.features.shape == (len(patched.coords), 32) and bag.features.dtype == np.float32
    np.testing.assert_allclose(bag.features, bare, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bag.slide_vector, bare.mean(0), rtol=1e-4, atol=1e-5)
    assert not bag.replaced.any()
