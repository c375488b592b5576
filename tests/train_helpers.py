"""A small synthetic cohort for stage-two tests, its caches written directly (no extract import)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adacomed.cache_schema import CacheDir, Fingerprint, Manifest, ManifestInfo, ModalitySource, SmallInput, TaskSpec

N_SAMPLES = 150
LARGE_DIMS = {"xray": 24, "notes": 32, "ct_features": 16}


def write_cache(root: Path, manifest: Manifest, modality: str, values: dict[str, np.ndarray], **fp_changes) -> None:
    """Commit one finalised cache of ``values`` (sample id -> vector) the way stage one would."""
    dim = len(next(iter(values.values())))
    fields = dict(
        modality=modality,
        encoder="synthetic",
        encoder_version="1",
        weights="test:synthetic",
        pooling="none",
        storage_dtype="float32",
        dim=dim,
        input_hash=manifest.input_hash(modality),
    )
    fields.update(fp_changes)
    cache = CacheDir(root, Fingerprint(**fields))
    ids = sorted(values)
    plan = cache.initialise(len(ids), rows_per_shard=64)  # several shards: exercises the multi-shard read path
    for index in range(plan.n_shards):
        shard_ids = plan.ids_of(ids, index)
        cache.commit_shard(plan, index, shard_ids, {"embeddings": np.stack([values[s] for s in shard_ids])})
    assert cache.finalize(plan) is not None


def build_cohort(root: Path, with_val: bool = True, nan_sample: str | None = None) -> tuple[Path, Path]:
    """~150 samples, a latent signal z behind the label, three large modalities (one missing for 20 %)."""
    rng = np.random.default_rng(7)
    ids = [f"s{i:03d}" for i in range(N_SAMPLES)]
    z = rng.normal(size=N_SAMPLES)
    label = (z + 0.35 * rng.normal(size=N_SAMPLES) > 0).astype(float)
    label[[5, 17]] = np.nan  # excluded from the task
    split = np.array(["train"] * 100 + ["val"] * 20 + ["test"] * 30, dtype=object)
    if not with_val:
        split[split == "val"] = "train"
    has_ct = rng.random(N_SAMPLES) > 0.2
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "subject_id": [f"p{i // 2:03d}" for i in range(N_SAMPLES)],
            "split": split,
            "label_mortality": label,
            "xray_path": [f"cxr/{s}.png" for s in ids],
            "note_text": [f"synthetic note number {i}" for i in range(N_SAMPLES)],
            "ct_path": [f"ct/{s}.npz" if has else None for s, has in zip(ids, has_ct)],
            "clinical_text": [f"age group {i % 5}" for i in range(N_SAMPLES)],
            "age": 60 + 8 * z + rng.normal(size=N_SAMPLES),
            "sex": rng.choice(["F", "M"], size=N_SAMPLES),
            "grade": rng.choice(["G1", "G2", "G3"], size=N_SAMPLES),
            "labs": [list((0.8 * zi + 0.5 * rng.normal(size=8)).astype(float)) for zi in z],
        }
    )
    info = ManifestInfo(
        cohort="synthetic",
        modalities={
            "xray": ModalitySource(column="xray_path", kind="path", root="."),
            "notes": ModalitySource(column="note_text", kind="text"),
            "ct_features": ModalitySource(column="ct_path", kind="path", root="."),
            "clinical": ModalitySource(column="clinical_text", kind="text"),  # declared, never cached
        },
        tasks={"mortality": TaskSpec(column="label_mortality", positive="died in hospital")},
        small_inputs={
            "age": SmallInput(column="age", kind="numerical"),
            "sex": SmallInput(column="sex", kind="categorical"),
            "grade": SmallInput(column="grade", kind="ordinal", options={"levels": ["G1", "G2", "G3"]}),
            "labs": SmallInput(column="labs", kind="vector"),
        },
    )
    manifest_path = root / "manifest.parquet"
    manifest = Manifest(table, info)
    manifest.write(manifest_path)
    cache_root = root / "cache"
    for modality, dim in LARGE_DIMS.items():
        direction = rng.normal(size=dim)
        rows = {}
        for i, sid in enumerate(ids):
            if modality == "ct_features" and not has_ct[i]:
                continue
            rows[sid] = (z[i] * direction + 0.8 * rng.normal(size=dim)).astype(np.float32)
        if nan_sample is not None and modality == "notes":
            rows[nan_sample][3] = np.nan
        write_cache(cache_root, manifest, modality, rows)
    return manifest_path, cache_root
