"""What keys a cache: the weights' bytes (local folders and files, hub snapshots) and the input files (CLI).

A cache key that misses a change silently mixes embeddings of two models or two inputs; each test here changes one
thing and checks that the key, and so the cache folder, changes with it (and that it does not change without).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adacomed.extract.encoders import create_encoder
from adacomed.extract.encoders.base import weights_identity
from adacomed.extract.encoders.text import tiny_tokenizer
from adacomed.extract.errors import WeightsError
from adacomed.extract.runner import ExtractConfig, plan_job

sys.path.insert(0, str(Path(__file__).parent))
from extract_helpers import cli_extract, image_cohort  # noqa: E402

HUB_ID = "adacomed-test/tiny-bert"
NOTES = ["Left renal mass, clear cell carcinoma.", "Chest pain, no fever."]


@pytest.fixture(autouse=True)
def _own_file_hash_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weight-file hashes are remembered under ADACOMED_HOME: each test starts with an empty memo of its own."""
    monkeypatch.setenv("ADACOMED_HOME", str(tmp_path / "adacomed-home"))


def _save_tiny_dinov2(folder: Path, seed: int) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    from adacomed.extract.encoders.dinov2 import TINY_DINOV2_CONFIG

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**TINY_DINOV2_CONFIG)).save_pretrained(folder)
    return folder


def _save_tiny_bert(folder: Path, seed: int) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _plan_key(manifest: Path, cache: Path, encoder: str, weights: str) -> tuple[str, Path]:
    job = plan_job(ExtractConfig(manifest=manifest, modality="xray", cache=cache, encoder=encoder, weights=weights))
    return job.fingerprint.key, job.cache.path


# ------------------------------------------------------------------------------------------------ weights
def test_weight_bytes_decide_the_identity_and_the_cache(tmp_path: Path) -> None:
    first = _save_tiny_dinov2(tmp_path / "first", seed=0)
    same_bytes = Path(shutil.copytree(first, tmp_path / "same-bytes"))
    retrained = _save_tiny_dinov2(tmp_path / "retrained", seed=1)  # same config, other weight values

    identity = weights_identity(str(first))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", identity)
    assert weights_identity(str(same_bytes)) == identity  # the bytes count, not the folder's name
    assert weights_identity(str(retrained)) != identity

    manifest = image_cohort(tmp_path / "cohort", n=2)
    key, path = _plan_key(manifest, tmp_path / "cache", "dinov2-large", str(first))
    assert _plan_key(manifest, tmp_path / "cache", "dinov2-large", str(same_bytes)) == (key, path)
    other_key, other_path = _plan_key(manifest, tmp_path / "cache", "dinov2-large", str(retrained))
    assert other_key != key and other_path != path

    # A changed config alone is other weights too; a file rewritten in place is re-hashed, not remembered.
    config = same_bytes / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "layer_norm_eps": 1e-5}))
    assert weights_identity(str(same_bytes)) not in (identity, weights_identity(str(retrained)))
    shutil.copy(retrained / "model.safetensors", first / "model.safetensors")
    assert weights_identity(str(first)) == weights_identity(str(retrained))


def test_a_single_weights_file_is_hashed_by_its_bytes(tmp_path: Path) -> None:
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    one.write_bytes(b"\x00" * 64)
    two.write_bytes(b"\x00" * 63 + b"\x01")
    assert weights_identity(str(one)).startswith("sha256:")
    assert weights_identity(str(one)) != weights_identity(str(two))
    with pytest.raises(WeightsError, match="does not exist"):
        weights_identity(str(tmp_path / "gone" / "model.safetensors"))


def _hub_snapshot(hub: Path, repo_id: str, revision: str, seed: int) -> None:
    """The layout ``huggingface-cli download`` leaves: snapshots/<revision>/ and refs/main naming it."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    _save_tiny_bert(repo / "snapshots" / revision, seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture()
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty local Hugging Face cache under a temporary HF_HOME (what the library reads offline)."""
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def test_hub_id_identity_is_the_snapshot_that_loads(hf_home: Path) -> None:
    first, second = "1" * 40, "2" * 40
    _hub_snapshot(hf_home, HUB_ID, first, seed=0)
    assert weights_identity(HUB_ID) == f"hf:{HUB_ID}@{first}"

    encoder = create_encoder("hf-text", weights=HUB_ID)
    fingerprint = encoder.fingerprint("notes", "h")
    assert fingerprint.weights == f"hf:{HUB_ID}@{first}" and encoder.embed_dim == 32
    before = encoder.encode(encoder.collate(NOTES))
    local = create_encoder("hf-text", weights=str(hf_home / f"models--{HUB_ID.replace('/', '--')}/snapshots/{first}"))
    torch.testing.assert_close(before, local.encode(local.collate(NOTES)))  # the hub id loaded that snapshot

    _hub_snapshot(hf_home, HUB_ID, second, seed=1)  # a new revision downloaded: refs/main moves
    updated = create_encoder("hf-text", weights=HUB_ID)
    assert updated.weights_identity() == f"hf:{HUB_ID}@{second}"
    assert updated.fingerprint("notes", "h").key != fingerprint.key
    assert not torch.allclose(updated.encode(updated.collate(NOTES)), before)

    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        weights_identity("adacomed-test/absent")


# ------------------------------------------------------------------------------------------------- inputs
def _extract_key(manifest: Path, cache: Path, *extra: str) -> str:
    result = cli_extract(manifest, cache, "--encoder", "dinov2-base", "--num-workers", "0", *extra)
    assert result.exit_code == 0, result.output
    key = re.search(r"cache key\W+([0-9a-f]{16})", result.stderr).group(1)
    assert (cache / "xray" / "dinov2-base" / key / "index.json").exists()
    return key


def _rewrite(path: Path, seed: int, size: tuple[int, int], keep_mtime_ns: int) -> None:
    pixels = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path, compress_level=0)
    os.utime(path, ns=(keep_mtime_ns, keep_mtime_ns))


def test_changed_input_files_are_a_new_cache_through_the_cli(tmp_path: Path) -> None:
    manifest = image_cohort(tmp_path / "cohort", n=4, compress_level=0)  # stored pixels: size depends on shape only
    cache = tmp_path / "cache"
    image = tmp_path / "cohort" / "img" / "0001.png"
    before = image.stat()
    stat_key = _extract_key(manifest, cache)
    content_key = _extract_key(manifest, cache, "--input-hash", "content")
    assert content_key != stat_key
    assert _extract_key(manifest, cache) == stat_key  # nothing changed: the same cache, found again

    # Other bytes, same size and mtime: only --input-hash content can see it, and it does.
    _rewrite(image, seed=1, size=(64, 72), keep_mtime_ns=before.st_mtime_ns)
    after = image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    new_content_key = _extract_key(manifest, cache, "--input-hash", "content")
    assert new_content_key != content_key
    xray = cache / "xray" / "dinov2-base"
    old_row = _row(xray / content_key, "s0001")
    assert not np.array_equal(_row(xray / new_content_key, "s0001"), old_row)  # the new cache embedded the new bytes
    np.testing.assert_array_equal(_row(xray / new_content_key, "s0000"), _row(xray / content_key, "s0000"))

    # A new mtime alone, then a new size alone: each is a new key in the default (stat) mode.
    os.utime(image, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    touched_key = _extract_key(manifest, cache)
    _rewrite(image, seed=1, size=(64, 80), keep_mtime_ns=before.st_mtime_ns + 10**9)
    resized_key = _extract_key(manifest, cache)
    keys = {stat_key, content_key, new_content_key, touched_key, resized_key}
    assert len(keys) == 5
    assert {p.name for p in xray.iterdir()} == keys  # one cache folder per key, none overwritten


def _row(folder: Path, sample_id: str) -> np.ndarray:
    from adacomed.cache_schema import EmbeddingCache

    return np.asarray(EmbeddingCache(folder).read([sample_id]))
