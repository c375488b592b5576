"""Bags in the cache contract: per-sample variable-length arrays beside the pooled embedding, in the same shard."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema import (
    CacheDir,
    EmbeddingCache,
    Fingerprint,
    Manifest,
    ManifestInfo,
    ModalitySource,
    TaskSpec,
    verify_cache,
)
from adacomed.cache_schema.shards import bag_values_name
from adacomed.extract.encoders import EncodedSamples, Encoder, EncoderSpec
from adacomed.extract.errors import ExtractError
from adacomed.extract.runner import ExtractConfig, plan_job, run_local

LENGTHS = [3, 0, 5, 1, 7, 2, 4]  # patches per sample; one sample with none


def _fp(fmt: str, storage: str = "float16") -> Fingerprint:
    return Fingerprint(
        modality="wsi",
        encoder="bag-test",
        encoder_version="1",
        weights="none",
        pooling="mean",
        preprocessing={},
        dim=4,
        input_hash=fmt,
        storage_dtype=storage,
    )


def _bags(seed: int = 0) -> tuple[list[str], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids = [f"slide{i}" for i in range(len(LENGTHS))]
    features = [rng.normal(size=(n, 4)).astype(np.float32) for n in LENGTHS]
    coords = [rng.integers(0, 100_000, size=(n, 2)).astype(np.int64) for n in LENGTHS]
    pooled = np.stack([f.mean(axis=0) if len(f) else np.zeros(4, np.float32) for f in features])
    return ids, pooled, features, coords


def _commit(tmp_path: Path, fmt: str, storage: str = "float16", rows_per_shard: int = 3) -> CacheDir:
    ids, pooled, features, coords = _bags()
    cache = CacheDir(tmp_path / fmt, _fp(fmt, storage), fmt)  # type: ignore[arg-type]
    plan = cache.initialise(len(ids), rows_per_shard)
    for index in range(plan.n_shards):
        rows = range(index * rows_per_shard, min((index + 1) * rows_per_shard, len(ids)))
        cache.commit_shard(
            plan,
            index,
            [ids[r] for r in rows],
            {"embeddings": pooled[list(rows)]},
            bags={"features": [features[r] for r in rows], "coords": [coords[r] for r in rows]},
        )
    assert cache.finalize(plan) is not None
    return cache


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_bags_read_back_per_sample_beside_the_embedding(tmp_path: Path, fmt: str) -> None:
    ids, pooled, features, coords = _bags()
    cache = EmbeddingCache(_commit(tmp_path, fmt).path)
    assert cache.bag_names == ["coords", "features"]
    assert cache.array_names == ["embeddings"]  # stage two sees the pooled rows only
    np.testing.assert_array_equal(cache.read(ids), pooled.astype(np.float16))
    for sid, feats, xy in zip(ids, features, coords):
        bag = cache.read_bag(sid)
        assert bag["features"].dtype == np.float16 and bag["features"].shape == feats.shape
        np.testing.assert_array_equal(bag["features"], feats.astype(np.float16))
        assert bag["coords"].dtype == np.int64
        np.testing.assert_array_equal(bag["coords"], xy)
    assert list(cache.read_bag(ids[2], ["coords"])) == ["coords"]
    with pytest.raises(KeyError, match="no bag 'tiles'"):
        cache.read_bag(ids[0], ["tiles"])
    with pytest.raises(KeyError, match="'nope'"):
        cache.read_bag("nope")


def test_h5_and_parquet_bags_are_identical_and_float32_on_request(tmp_path: Path) -> None:
    h5 = EmbeddingCache(_commit(tmp_path / "a", "h5").path)
    pq = EmbeddingCache(_commit(tmp_path / "b", "parquet").path)
    for sid in h5.ids:
        for name in h5.bag_names:
            np.testing.assert_array_equal(h5.read_bag(sid)[name], pq.read_bag(sid)[name])
    exact = EmbeddingCache(_commit(tmp_path / "c", "h5", storage="float32").path)
    _, _, features, _ = _bags()
    np.testing.assert_array_equal(exact.read_bag("slide4")["features"], features[4])


def test_h5_bags_are_contiguous_memory_maps(tmp_path: Path) -> None:
    import h5py

    cache = _commit(tmp_path, "h5", rows_per_shard=len(LENGTHS))
    shard = next((cache.path / "shards").glob("*.h5"))
    with h5py.File(shard, "r") as f:
        values = f[bag_values_name("features")]
        assert values.chunks is None and values.compression is None and values.shape == (sum(LENGTHS), 4)
    bag = EmbeddingCache(cache.path).read_bag("slide2")["features"]
    assert isinstance(bag.base, np.memmap) or isinstance(bag, np.memmap)


def test_float16_overflow_in_one_sample_stores_the_whole_bag_as_float32(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path, _fp("h5"), "h5")
    plan = cache.initialise(2, 2)
    big = np.full((2, 4), 1e6, np.float32)
    cache.commit_shard(
        plan, 0, ["a", "b"], {"embeddings": np.ones((2, 4), np.float32)}, bags={"features": [np.ones((3, 4)), big]}
    )
    cache.finalize(plan)
    read = EmbeddingCache(cache.path)
    assert read.read_bag("a")["features"].dtype == read.read_bag("b")["features"].dtype == np.float32
    assert read.read_bag("b")["features"][0, 0] == 1e6


def test_verify_names_a_shard_whose_bag_bytes_changed(tmp_path: Path) -> None:
    import h5py

    cache = _commit(tmp_path, "h5")
    assert verify_cache(cache.path) == []
    shard = sorted((cache.path / "shards").glob("*.h5"))[1]
    with h5py.File(shard, "r") as f:
        offset = f[bag_values_name("features")].id.get_offset()
    data = bytearray(shard.read_bytes())
    data[offset + 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_cache(cache.path)
    assert len(problems) == 1 and shard.name in problems[0].message


def test_mismatched_bags_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path, _fp("h5"), "h5")
    plan = cache.initialise(2, 2)
    embeddings = {"embeddings": np.ones((2, 4), np.float32)}
    with pytest.raises(ValueError, match="1 arrays for 2 ids"):
        cache.commit_shard(plan, 0, ["a", "b"], embeddings, bags={"features": [np.ones((3, 4))]})
    with pytest.raises(ValueError, match="sample 1 has shape"):
        cache.commit_shard(plan, 0, ["a", "b"], embeddings, bags={"features": [np.ones((3, 4)), np.ones((3, 5))]})
    assert cache.read_sidecar(plan, 0) is None and not list(cache.shards_dir.iterdir())


# ----------------------------------------------------------------- the runner with a bag encoder
BAG_SPEC = EncoderSpec("bag-test", "wsi", 4, "mean", reader="features", bags=("features", "coords"), rows_per_shard=2)


class RowsAsPatches(Encoder):
    """A bag encoder without a model: a sample's values as N x 4 "patch features", their mean as the slide row."""

    def __init__(self, spec: EncoderSpec = BAG_SPEC, broken: bool = False):
        super().__init__(spec, "none")
        self.broken = broken
        self.calls: list[int] = []

    def build_model(self) -> Any:
        return object()

    def forward(self, batch: Any) -> Any:
        raise AssertionError("bag encoders go through encode_samples")

    def preprocessing(self) -> dict[str, Any]:
        return {}

    def weights_identity(self) -> str:
        return "none"

    def prepare(self, vector: np.ndarray) -> np.ndarray:
        return vector.reshape(-1, 4)

    def encode_samples(self, samples: list[Any], batch_size: int) -> EncodedSamples:
        self.calls.append(len(samples))
        (patches,) = samples
        coords = np.arange(2 * len(patches), dtype=np.int64).reshape(-1, 2)
        bag = {"features": patches} if self.broken else {"features": patches, "coords": coords}
        return EncodedSamples(patches.mean(axis=0, keepdims=True), [bag])


def _values_cohort(root: Path) -> Path:
    rng = np.random.default_rng(3)
    rows = [
        {
            "sample_id": f"s{i}",
            "subject_id": f"p{i}",
            "split": "train",
            "label": float(i % 2),
            "values": rng.normal(size=4 * n).astype(np.float32).tolist(),
        }
        for i, n in enumerate([2, 5, 1, 3, 4])
    ]
    info = ManifestInfo(
        cohort="bags",
        modalities={"wsi": ModalitySource("values", "values")},
        tasks={"mortality": TaskSpec("label", "died")},
    )
    return Manifest(pd.DataFrame(rows), info).write(root / "manifest.parquet")


def test_runner_stores_each_samples_bag_and_shards_by_the_encoders_default(tmp_path: Path) -> None:
    manifest = _values_cohort(tmp_path)
    config = ExtractConfig(manifest=manifest, modality="wsi", cache=tmp_path / "cache", batch_size=64, num_workers=0)
    encoder = RowsAsPatches()
    job = plan_job(config, encoder=encoder)
    assert job.plan.rows_per_shard == 2 and job.plan.n_shards == 3  # the spec's default, not 32768
    summary = run_local(job)
    assert summary.finalized and summary.rows_written == 5
    assert set(encoder.calls) == {1}, "a bag encoder gets one sample per call"
    cache = EmbeddingCache(summary.cache_path)
    items = dict(Manifest.read(manifest).modality_items("wsi"))
    for sid, values in items.items():
        patches = values.reshape(-1, 4)
        np.testing.assert_array_equal(cache.read_bag(sid)["features"], patches.astype(np.float16))
        assert cache.read_bag(sid)["coords"].shape == (len(patches), 2)
        np.testing.assert_allclose(cache.read([sid])[0], patches.mean(axis=0), atol=2e-3)
    again = run_local(plan_job(config, encoder=RowsAsPatches()))  # a rerun resumes: nothing left to do
    assert all(r.skipped for r in again.results)


def test_runner_refuses_an_encoder_that_breaks_its_bag_contract(tmp_path: Path) -> None:
    config = ExtractConfig(manifest=_values_cohort(tmp_path), modality="wsi", cache=tmp_path / "cache", num_workers=0)
    job = plan_job(config, encoder=RowsAsPatches(dataclasses.replace(BAG_SPEC, name="bag-broken"), broken=True))
    with pytest.raises(ExtractError, match="returned no bag 'coords'"):
        run_local(job)
    assert not list(job.cache.shards_dir.glob("*.json")), "nothing is committed from a broken encoder"
