"""The cache contract: manifest validation, shard round trips, commits, verify, fingerprints, reader API."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema import (
    CacheDir,
    CacheIncomplete,
    CacheNotFound,
    CorruptShard,
    EmbeddingCache,
    Fingerprint,
    Manifest,
    ManifestError,
    ManifestInfo,
    ModalitySource,
    TaskSpec,
    diff_fingerprints,
    open_cache,
    verify_cache,
)
from adacomed.cache_schema.shards import ShardReader


def _table(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "subject_id": [f"p{i // 2}" for i in range(n)],
            "split": ["train", "train", "val", "test", "train", "test"][:n],
            "label_mortality": [0.0, 1.0, np.nan, 0.0, 1.0, 0.0][:n],
            "xray_path": [f"img/{i}.png" for i in range(n)],
            "note_text": ["a note"] * n,
        }
    )


def _info() -> ManifestInfo:
    return ManifestInfo(
        cohort="test",
        modalities={"xray": ModalitySource("xray_path", "path", "."), "notes": ModalitySource("note_text", "text")},
        tasks={"mortality": TaskSpec("label_mortality", "died in hospital")},
    )


def _fp(**changes) -> Fingerprint:
    base = Fingerprint(
        modality="xray",
        encoder="enc",
        encoder_version="1",
        weights="sha256:abc",
        pooling="cls",
        preprocessing={"resize": 256, "crop": 224},
        dim=8,
        input_hash="h",
    )
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------ manifest
def test_manifest_round_trip(tmp_path):
    manifest = Manifest(_table(), _info(), base_dir=tmp_path)
    path = manifest.write(tmp_path / "m.parquet")
    again = Manifest.read(path)
    assert again.sample_ids == manifest.sample_ids
    assert again.info == manifest.info
    assert again.labels("mortality").isna().sum() == 1
    items = dict(again.modality_items("xray"))
    assert items["s002"] == (tmp_path / "img/2.png").resolve()
    assert again.input_hash("xray") == manifest.input_hash("xray")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop(columns=["split"]), "missing required column"),
        (lambda t: t.assign(sample_id=["s000"] * len(t)), "duplicates"),
        (lambda t: t.assign(split=["train", "train", "dev", "test", "train", "test"]), "sample 's002': column 'split'"),
        (lambda t: t.assign(label_mortality=[0, 1, 2, 0, 1, 0]), "sample 's002': column 'label_mortality'"),
        (lambda t: t.assign(xray_path=["img/0.png", "../../etc/passwd", "a", "b", "c", "d"]), "escapes"),
        (lambda t: t.assign(xray_path=["/abs/0.png", "b", "a", "b", "c", "d"]), "absolute path"),
        (lambda t: t.drop(columns=["note_text"]), "modality 'notes' declares column 'note_text'"),
    ],
)
def test_manifest_validation_names_row_and_column(tmp_path, mutate, message):
    with pytest.raises(ManifestError, match=message):
        Manifest(mutate(_table()), _info(), base_dir=tmp_path)


def test_manifest_without_declarations_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    _table().to_parquet(path)
    with pytest.raises(ManifestError, match="no 'adacomed' metadata"):
        Manifest.read(path)


def test_input_hash_tracks_pointers_not_order(tmp_path):
    a = Manifest(_table(), _info(), base_dir=tmp_path)
    b = Manifest(_table().iloc[::-1], _info(), base_dir=tmp_path)
    assert a.input_hash("notes") == b.input_hash("notes")
    changed = _table()
    changed.loc[0, "note_text"] = "another note"
    assert Manifest(changed, _info(), base_dir=tmp_path).input_hash("notes") != a.input_hash("notes")


# -------------------------------------------------------------- fingerprints
def test_every_fingerprint_field_changes_the_key():
    base = _fp()
    changes = {
        "modality": "notes",
        "encoder": "other",
        "encoder_version": "2",
        "weights": "sha256:def",
        "pooling": "mean",
        "preprocessing": {"resize": 256, "crop": 256},
        "inference_dtype": "bfloat16",
        "storage_dtype": "float32",
        "dim": 16,
        "input_hash": "h2",
        "input_files": "stat:other",
        "schema_version": 99,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(Fingerprint)}
    keys = {base.key}
    for name, value in changes.items():
        keys.add(dataclasses.replace(base, **{name: value}).key)
    assert len(keys) == len(changes) + 1


def test_key_is_stable_across_processes():
    code = (
        "from adacomed.cache_schema import Fingerprint;"
        "print(Fingerprint(modality='xray', encoder='enc', encoder_version='1', weights='sha256:abc', pooling='cls',"
        "preprocessing={'crop': 224, 'resize': 256}, dim=8, input_hash='h').key)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == _fp().key


def test_fingerprint_diff_is_readable():
    lines = diff_fingerprints(_fp().to_dict(), _fp(preprocessing={"resize": 256, "crop": 256}).to_dict())
    assert lines == ["preprocessing.crop: 224 -> 256"]


# -------------------------------------------------------------------- shards
def _commit_all(tmp_path, fmt, values, ids, rows_per_shard=4, fingerprint=None):
    cache = CacheDir(tmp_path / "cache", fingerprint or _fp(input_hash=fmt), fmt)
    plan = cache.initialise(len(ids), rows_per_shard)
    order = sorted(ids)
    for i in range(plan.n_shards):
        shard_ids = plan.ids_of(order, i)
        cache.commit_shard(plan, i, shard_ids, {"embeddings": values[[ids.index(s) for s in shard_ids]]})
    assert cache.finalize(plan) is not None
    return cache


def test_h5_and_parquet_read_back_identical(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"id{i:02d}" for i in range(10)]
    values = rng.normal(size=(10, 8)).astype(np.float32)
    h5 = EmbeddingCache(_commit_all(tmp_path, "h5", values, ids).path)
    pq = EmbeddingCache(_commit_all(tmp_path, "parquet", values, ids).path)
    assert list(h5.ids) == list(pq.ids) == sorted(ids)
    assert h5.dtype() == pq.dtype() == np.float16
    np.testing.assert_array_equal(h5.read_all(), pq.read_all())
    np.testing.assert_allclose(h5.read(["id07", "id01"]).astype(np.float32), values[[7, 1]], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(h5.read(["id07", "id01"]), pq.read(["id07", "id01"]))
    tensor = h5.torch(["id07", "id03"])  # the README: the same values as a float32 torch tensor
    assert str(tensor.dtype) == "torch.float32" and tuple(tensor.shape) == (2, 8)
    np.testing.assert_array_equal(tensor.numpy(), h5.read(["id07", "id03"]).astype(np.float32))
    with pytest.raises(KeyError, match="'nope'"):
        h5.read(["nope"])


def test_shards_are_contiguous_and_uncompressed(tmp_path):
    import h5py

    cache = _commit_all(tmp_path, "h5", np.ones((5, 8), np.float32), [f"a{i}" for i in range(5)])
    shard = next((cache.path / "shards").glob("*.h5"))
    with h5py.File(shard, "r") as f:
        assert f["embeddings"].chunks is None and f["embeddings"].compression is None
    reader = ShardReader(shard)
    assert isinstance(reader.array("embeddings"), np.memmap)


def test_float16_overflow_is_stored_as_float32(tmp_path):
    values = np.ones((4, 8), np.float32)
    values[2, 3] = 1e6
    cache = EmbeddingCache(_commit_all(tmp_path, "h5", values, ["a", "b", "c", "d"]).path)
    assert cache.dtype() == np.float32
    assert cache.read(["c"])[0, 3] == 1e6


def test_float32_on_request(tmp_path):
    fp = _fp(storage_dtype="float32")
    cache = EmbeddingCache(
        _commit_all(tmp_path, "h5", np.ones((3, 8), np.float32), ["a", "b", "c"], fingerprint=fp).path
    )
    assert cache.dtype() == np.float32


def test_flipped_byte_is_caught_by_verify(tmp_path):
    cache = _commit_all(
        tmp_path, "h5", np.random.default_rng(1).normal(size=(9, 8)).astype(np.float32), [f"x{i}" for i in range(9)]
    )
    assert verify_cache(cache.path) == []
    shard = sorted((cache.path / "shards").glob("*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) - 20] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_cache(cache.path)
    assert len(problems) == 1 and problems[0].kind == "damaged"
    assert shard.name in problems[0].message and "xxh3_64" in problems[0].message


def test_partial_cache_is_refused_unless_allowed(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(8, 4)
    cache.commit_shard(plan, 0, ["a", "b", "c", "d"], {"embeddings": np.zeros((4, 8), np.float32)})
    with pytest.raises(CacheIncomplete, match="1/2 shards committed"):
        open_cache(tmp_path / "cache", "xray")
    partial = open_cache(tmp_path / "cache", "xray", allow_partial=True)
    assert len(partial) == 4 and not partial.complete


def test_uncommitted_shard_is_invisible(tmp_path):
    """A shard file without its commit record (a crash between rename and sidecar) does not exist for readers."""
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(4, 4)
    record = cache.commit_shard(plan, 0, ["a", "b", "c", "d"], {"embeddings": np.zeros((4, 8), np.float32)})
    cache.sidecar_path(plan, 0).unlink()
    assert cache.committed(plan) == {} and cache.finalize(plan) is None
    assert (cache.path / record["file"]).exists()


def test_open_cache_lists_choices(tmp_path):
    _commit_all(tmp_path, "h5", np.ones((3, 8), np.float32), ["a", "b", "c"])
    _commit_all(tmp_path, "h5", np.ones((3, 8), np.float32), ["a", "b", "c"], fingerprint=_fp(encoder="other"))
    with pytest.raises(CacheNotFound, match="several caches match"):
        open_cache(tmp_path / "cache", "xray")
    assert open_cache(tmp_path / "cache", "xray", encoder="other").encoder == "other"
    with pytest.raises(CacheNotFound, match="existing: \\['xray/enc/"):
        open_cache(tmp_path / "cache", "notes")


def test_errors_table_travels_with_the_commit(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(3, 4)
    cache.commit_shard(
        plan,
        0,
        ["a", "c"],
        {"embeddings": np.zeros((2, 8), np.float32)},
        errors=[{"sample_id": "b", "stage": "read", "reason": "file not found"}],
    )
    cache.finalize(plan)
    errors = EmbeddingCache(cache.path).errors()
    assert errors.to_dict("records") == [
        {"sample_id": "b", "stage": "read", "reason": "file not found", "shard": "shard-00000-of-00001"}
    ]


def test_claims_exclude_and_recover_from_dead_owner(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    cache.initialise(4, 4)
    assert cache.try_claim(0)
    assert not cache.try_claim(0)  # held by this live process
    claim = cache.claims_dir / "shard-00000.claim"
    info = json.loads(claim.read_text())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60
    )
    info["pid"] = int(dead.stdout)
    claim.write_text(json.dumps(info))
    assert cache.try_claim(0)  # the owner is gone: stale, taken over


def test_plan_is_fixed_by_the_first_writer(tmp_path):
    first = CacheDir(tmp_path / "cache", _fp(), "h5").initialise(10, 4)
    second = CacheDir(tmp_path / "cache", _fp(), "h5").initialise(10, 3)
    assert first == second and first.n_shards == 3


def test_duplicate_writers_never_mix_data_and_record(tmp_path):
    """Two writers of one shard: whichever commit record lands last names its own complete data file."""
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(2, 4)
    first = np.full((2, 8), 1.0, np.float32)
    second = np.full((2, 8), 2.0, np.float32)
    cache.commit_shard(plan, 0, ["a", "b"], {"embeddings": first}, errors=[])
    cache.commit_shard(plan, 0, ["a", "b"], {"embeddings": second}, errors=[])
    assert len(list(cache.shards_dir.glob("shard-00000-of-00001.*.h5"))) == 2  # both complete, differently named
    cache.finalize(plan)
    assert verify_cache(cache.path) == []
    np.testing.assert_array_equal(EmbeddingCache(cache.path).read_all(), second.astype(np.float16))
    assert cache.collect_garbage(plan, min_age_seconds=0) == 1  # the loser's file goes
    assert len(list(cache.shards_dir.glob("shard-00000-of-00001.*.h5"))) == 1
    np.testing.assert_array_equal(EmbeddingCache(cache.path).read_all(), second.astype(np.float16))


def test_parquet_shard_with_no_rows(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "parquet")
    plan = cache.initialise(1, 4)
    cache.commit_shard(
        plan,
        0,
        [],
        {"embeddings": np.zeros((0, 8), np.float32)},
        errors=[{"sample_id": "a", "stage": "read", "reason": "file not found"}],
    )
    assert cache.finalize(plan) is not None
    read = EmbeddingCache(cache.path)
    assert len(read) == 0 and read.read_all().shape == (0, 8) and len(read.errors()) == 1


def test_changed_input_file_changes_the_files_hash(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(6):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"x" * (i + 1))
    manifest = Manifest(_table(), _info(), base_dir=tmp_path)
    before = manifest.input_files_hash("xray")
    content = manifest.input_files_hash("xray", mode="content")
    (tmp_path / "img" / "3.png").write_bytes(b"different pixels")
    assert manifest.input_files_hash("xray") != before
    assert manifest.input_files_hash("xray", mode="content") != content
    assert manifest.input_hash("xray") == Manifest(_table(), _info(), base_dir=tmp_path).input_hash("xray")
    assert manifest.input_files_hash("notes") == ""


def test_a_folder_pointer_hashes_every_file_in_it(tmp_path):
    """A DICOM series is a folder: a slice changed, added or renamed inside it is another input."""
    for i in range(6):
        series = tmp_path / "img" / f"{i}.png"  # the pointer names a folder here
        series.mkdir(parents=True)
        for k in range(3):
            (series / f"slice-{k}.dcm").write_bytes(bytes([k]) * (i + 1))
    manifest = Manifest(_table(), _info(), base_dir=tmp_path)
    hashes = [manifest.input_files_hash("xray"), manifest.input_files_hash("xray", mode="content")]
    seen = {tuple(hashes)}
    slice_one = tmp_path / "img" / "2.png" / "slice-1.dcm"
    slice_one.write_bytes(b"other pixels")  # same folder mtime, another slice content
    seen.add((manifest.input_files_hash("xray"), manifest.input_files_hash("xray", mode="content")))
    (tmp_path / "img" / "2.png" / "slice-3.dcm").write_bytes(b"a new slice")
    seen.add((manifest.input_files_hash("xray"), manifest.input_files_hash("xray", mode="content")))
    slice_one.rename(slice_one.with_name("slice-9.dcm"))
    seen.add((manifest.input_files_hash("xray"), manifest.input_files_hash("xray", mode="content")))
    assert len({pair[0] for pair in seen}) == len({pair[1] for pair in seen}) == 4


def test_disk_full_while_writing_leaves_nothing_visible(tmp_path, monkeypatch):
    import errno

    from adacomed.cache_schema import store

    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(2, 4)

    def full(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "write_shard_file", full)
    with pytest.raises(OSError, match="No space left"):
        cache.commit_shard(plan, 0, ["a", "b"], {"embeddings": np.zeros((2, 8), np.float32)})
    assert cache.committed(plan) == {}
    assert list(cache.shards_dir.iterdir()) == [] and list(cache.tmp_dir.iterdir()) == []


def test_dead_writers_temp_files_are_collected(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    plan = cache.initialise(2, 4)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60
    )
    host = os.uname().nodename
    orphan = cache.tmp_dir / f".shard-00000-of-00001.h5.{host}.{int(dead.stdout)}.abcd1234.tmp"
    orphan.write_bytes(b"half a shard")
    mine = cache.tmp_dir / f".shard-00000-of-00001.h5.{host}.{os.getpid()}.abcd1234.tmp"
    mine.write_bytes(b"being written")
    assert cache.collect_garbage(plan) == 1
    assert not orphan.exists() and mine.exists()


def test_reads_work_with_hdf5_file_locking_disabled(tmp_path):
    cache = _commit_all(tmp_path, "h5", np.ones((3, 8), np.float32), ["a", "b", "c"])
    code = (
        "import sys; from adacomed.cache_schema import EmbeddingCache;"
        "print(EmbeddingCache(sys.argv[1]).read(['b']).shape)"
    )
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache.path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "(1, 8)"


def test_truncated_shard_is_named_on_open(tmp_path):
    cache = _commit_all(tmp_path, "h5", np.ones((3, 8), np.float32), ["a", "b", "c"])
    shard = next(cache.shards_dir.glob("*.h5"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptShard, match=shard.name):
        EmbeddingCache(cache.path)


def test_a_live_owner_keeps_its_claim_past_the_lease(tmp_path):
    cache = CacheDir(tmp_path / "cache", _fp(), "h5")
    cache.initialise(4, 4)
    assert cache.try_claim(0)
    claim = cache.claims_dir / "shard-00000.claim"
    os.utime(claim, (0, 0))  # ancient: the lease ran out, but the owner (this process) is alive on this host
    assert not cache.try_claim(0, lease_seconds=1)
