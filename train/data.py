"""Stage two's data: one task's labels, splits, cached large embeddings and prepared small inputs, as tensors.

Everything is checked before training starts (missing caches, caches built from another manifest, a task
without labels, non-finite values) and then held in memory as tensors, moved to the device once; a batch is an
index gather, so no epoch touches a file. Samples missing a modality keep a zero row and a False present flag
(MoME masks them); they are never dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache_schema import CacheSummary, EmbeddingCache, Manifest, ManifestError, list_caches, open_cache
from ..cache_schema.fingerprint import diff_fingerprints
from ..cache_schema.splits import split_subjects

SPLITS = ("train", "val", "test")
# Prepared small-input arrays whose NaN means "missing field" by the small model's batch contract.
NAN_MEANS_MISSING = (".numerical",)
READ_CHUNK = 4096  # rows per read from the cache while loading


class DataError(ValueError):
    """The run's inputs are unusable; the message names the modality, the sample and the cause (no patient text)."""


@dataclass
class TaskData:
    """One task's cohort in memory: row ``i`` of every tensor is sample ``sample_ids[i]`` (manifest order)."""

    task: str
    sample_ids: list[str]
    splits: np.ndarray  # str per sample, after any validation carve
    labels: torch.Tensor  # float32 [N]
    large: dict[str, torch.Tensor]  # modality -> [N, D] in the cache's dtype (zero rows where absent)
    present: torch.Tensor  # bool [N, M], M in ``large`` order
    small: dict[str, torch.Tensor]  # prepared small-model inputs, gathered to the labelled samples
    small_config: Any  # SmallModelConfig from the prepared inputs
    cache_keys: dict[str, str]  # modality -> "<encoder>/<key>" of the cache trained on
    index: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> long indices

    @property
    def large_dims(self) -> dict[str, int]:
        return {name: int(t.shape[1]) for name, t in self.large.items()}

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    def to(self, device: torch.device) -> TaskData:
        """Move every tensor to ``device`` (once, before training)."""
        self.labels = self.labels.to(device)
        self.large = {k: v.to(device) for k, v in self.large.items()}
        self.present = self.present.to(device)
        self.small = {k: v.to(device) for k, v in self.small.items()}
        self.index = {k: v.to(device) for k, v in self.index.items()}
        return self

    def large_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """float32 rows of every modality (stored float16 rows are cast after the gather)."""
        return {name: t.index_select(0, idx).float() for name, t in self.large.items()}

    def small_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t.index_select(0, idx) for name, t in self.small.items()}


# ------------------------------------------------------------------------------------------------ labels/splits
def task_labels(manifest: Manifest, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, labels) of the samples labelled for ``task``; NaN labels (excluded samples) are dropped."""
    if task not in manifest.info.tasks:
        label_cols = sorted(c for c in manifest.table.columns if str(c).startswith("label_"))
        raise DataError(
            f"task {task!r} has no label in the manifest: declared tasks {sorted(manifest.info.tasks)}, "
            f"label columns {label_cols}; declare it in ManifestInfo.tasks or pick one of those"
        )
    labels = manifest.labels(task).to_numpy(dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(labels))
    if keep.size == 0:
        raise DataError(f"task {task!r}: every label is empty (all samples excluded)")
    return keep, labels[keep].astype(np.float32)


def check_subject_splits(manifest: Manifest) -> None:
    """Refuse a manifest in which one subject (patient) has samples in more than one split (leakage)."""
    table = manifest.table
    per_subject = table.groupby(table["subject_id"].astype(str))["split"].agg(lambda s: sorted(set(map(str, s))))
    spanning = per_subject[per_subject.map(len) > 1]
    if len(spanning):
        subject, splits = spanning.index[0], spanning.iloc[0]
        raise DataError(
            f"subject {subject!r} has samples in splits {splits} ({len(spanning)} subjects span several splits); "
            "a patient must stay in one split, or its other admissions leak into evaluation: re-split the manifest "
            "by subject_id"
        )


def assign_splits(
    splits: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    subjects: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the manifest's splits; without any ``val`` row, carve a validation set from train by subject.

    Whole subjects move to validation (a patient with several admissions is never in both), stratified on the
    subject's label (a subject with any positive admission counts as positive), seeded, at least one subject of
    each class when there are two: the project's one subject-level split
    (:func:`adacomed.cache_schema.splits.split_subjects`). ``subjects`` None treats every sample as its own.
    """
    splits = splits.astype(object).copy()
    for name in ("train", "test"):
        if not (splits == name).any():
            raise DataError(f"no labelled sample is in split {name!r}; the manifest needs train and test rows")
    if (splits == "val").any():
        return splits
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the manifest has no val rows and val_fraction={val_fraction} cannot carve one")
    subjects = np.arange(len(splits)).astype(str) if subjects is None else np.asarray(subjects).astype(str)
    train = np.flatnonzero(splits == "train")
    parts = split_subjects(
        subjects[train], {"train": 1.0 - val_fraction, "val": val_fraction}, seed, labels[train], at_least_one=True
    )
    splits[train[parts == "val"]] = "val"
    return splits


# ----------------------------------------------------------------------------------------------- large caches
def available_modalities(manifest: Manifest, cache_root: Path) -> list[str]:
    """Manifest-declared modalities with a complete cache, in the manifest's declaration order."""
    cached = {c.modality for c in list_caches(cache_root) if c.status == "complete"}
    return [name for name in manifest.info.modalities if name in cached]


def _describe(caches: list[CacheSummary]) -> str:
    return ", ".join(f"{c.modality}/{c.encoder}/{c.key} ({c.status}, {c.rows} rows)" for c in caches) or "none"


def _hash_mismatch(manifest: Manifest, modality: str, cache: EmbeddingCache) -> DataError:
    expected = manifest.input_hash(modality)
    lines = diff_fingerprints({"input_hash": expected}, {"input_hash": cache.fingerprint.input_hash})
    manifest_ids = {sid for sid, _ in manifest.modality_items(modality)}
    cache_ids = set(cache.ids.tolist())
    only_manifest, only_cache = sorted(manifest_ids - cache_ids), sorted(cache_ids - manifest_ids)
    hint = [f"- {line}" for line in lines]
    hint.append(f"- rows: manifest {len(manifest_ids)}, cache {len(cache_ids)}")
    if only_manifest:
        hint.append(f"- samples only in the manifest: {only_manifest[:5]}{' ...' if len(only_manifest) > 5 else ''}")
    if only_cache:
        hint.append(f"- samples only in the cache: {only_cache[:5]}{' ...' if len(only_cache) > 5 else ''}")
    if not only_manifest and not only_cache:
        hint.append("- same sample ids: the pointers (paths, texts or values) of some rows changed")
    return DataError(
        f"modality {modality!r}: the cache {cache.encoder}/{cache.key} was built from another manifest "
        f"(its fingerprint.input_hash differs from this manifest's). Re-run adacomed-extract for {modality!r} "
        "on this manifest, or train with the manifest it was built from.\n  --- manifest\n  +++ cache\n  "
        + "\n  ".join(hint)
    )


def open_modality_cache(manifest: Manifest, cache_root: Path, request: str) -> EmbeddingCache:
    """The one complete cache of ``request`` (``modality`` or ``modality/encoder``) built from this manifest."""
    modality, _, encoder = request.partition("/")
    if modality not in manifest.info.modalities:
        raise DataError(
            f"modality {modality!r} is not declared in the manifest; declared: {sorted(manifest.info.modalities)}"
        )
    everything = list_caches(cache_root)
    candidates = [c for c in everything if c.modality == modality and (not encoder or c.encoder == encoder)]
    complete = [c for c in candidates if c.status == "complete"]
    if not complete:
        raise DataError(
            f"modality {request!r} has no complete cache under {cache_root}; run adacomed-extract for it first. "
            f"Existing caches: {_describe(everything)}"
        )
    expected = manifest.input_hash(modality)
    opened = [open_cache(cache_root, modality, encoder=c.encoder, key=c.key) for c in complete]
    matching = [c for c in opened if c.fingerprint.input_hash == expected]
    if not matching:
        raise _hash_mismatch(manifest, modality, opened[0])
    if len(matching) > 1:
        listing = ", ".join(f"{modality}/{c.encoder}" for c in matching)
        raise DataError(f"modality {modality!r} has several caches built from this manifest; name one: {listing}")
    return matching[0]


def load_large(
    manifest: Manifest, cache_root: Path, requests: list[str], sample_ids: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
    """Embeddings per modality for ``sample_ids`` (zeros where absent), present flags [N, M], cache keys."""
    large: dict[str, torch.Tensor] = {}
    present_cols: list[np.ndarray] = []
    keys: dict[str, str] = {}
    ids = np.asarray(sample_ids, dtype=object)
    for request in requests:
        cache = open_modality_cache(manifest, cache_root, request)
        modality = cache.modality
        if modality in large:
            raise DataError(f"modality {modality!r} is requested twice")
        in_cache = np.fromiter((sid in cache for sid in sample_ids), dtype=bool, count=len(sample_ids))
        # Held in the cache's own dtype (float16 by default): memory stays the size of the cached arrays and a
        # batch is cast to float32 after its gather. Read in chunks so no second full-size copy is ever made.
        dtype = np.float16 if cache.dtype() == np.float16 else np.float32
        values = np.zeros((len(sample_ids), cache.dim), dtype=dtype)
        rows = np.flatnonzero(in_cache)
        positions = cache.positions(ids[rows].tolist())
        for start in range(0, len(rows), READ_CHUNK):
            values[rows[start : start + READ_CHUNK]] = cache.read_positions(positions[start : start + READ_CHUNK])
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise DataError(
                f"modality {modality!r}: the embedding of sample {sample_ids[bad]!r} holds NaN or inf "
                f"({int((~finite).sum())} samples affected); re-extract it or drop those samples from the manifest"
            )
        large[modality] = torch.from_numpy(values)
        present_cols.append(in_cache)
        keys[modality] = f"{cache.encoder}/{cache.key}"
    if not large:
        raise DataError(f"no large-model embeddings to train on: no modality cache under {cache_root}")
    return large, torch.from_numpy(np.stack(present_cols, axis=1)), keys


# ----------------------------------------------------------------------------------------------- small inputs
def small_tensors(
    prepared: Any, manifest_ids: list[str], rows: np.ndarray, sample_ids: list[str]
) -> dict[str, torch.Tensor]:
    """Gather the prepared small inputs (all manifest rows) to the labelled rows; reject non-finite values."""
    if list(prepared.sample_ids) != manifest_ids:
        raise DataError("prepared small inputs do not match the manifest's samples (order or ids); re-prepare them")
    out: dict[str, torch.Tensor] = {}
    identity = len(rows) == len(manifest_ids) and np.array_equal(rows, np.arange(len(rows)))
    for name, array in prepared.arrays.items():
        # Every manifest row labelled: use the loaded array itself (no second full-size copy of the X-rays); a
        # read-only memory map of a shard is copied once, so the tensor owns writable memory.
        if identity:
            picked = np.ascontiguousarray(array) if np.asarray(array).flags.writeable else np.array(array, order="C")
        else:
            picked = np.ascontiguousarray(np.asarray(array)[rows])
        if np.issubdtype(picked.dtype, np.floating):
            flat = picked.reshape(len(rows), -1)
            # Tabular ordinal/numerical fields use NaN for "missing" (the small model masks it); inf is never valid.
            nan_ok = name.endswith(NAN_MEANS_MISSING)
            ok = (~np.isinf(flat) if nan_ok else np.isfinite(flat)).all(axis=1)
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                what = "inf" if nan_ok else "NaN or inf"
                raise DataError(
                    f"small input {name!r}: sample {sample_ids[bad]!r} holds {what} "
                    f"({int((~ok).sum())} samples affected)"
                )
        out[name] = torch.from_numpy(picked)
    return out


def load_task_data(
    manifest: Manifest,
    cache_root: str | Path,
    task: str,
    modalities: tuple[str, ...] | list[str] = (),
    prepared: Any = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    tokenizer: str | None = None,
) -> TaskData:
    """Check and load everything a run needs; raises :class:`DataError` before any training on bad input."""
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        raise DataError(f"cache folder {cache_root} does not exist; run adacomed-extract first")
    check_subject_splits(manifest)
    rows, labels = task_labels(manifest, task)
    all_ids = manifest.sample_ids
    sample_ids = [all_ids[i] for i in rows]
    subjects = manifest.table["subject_id"].astype(str).to_numpy()[rows]
    splits = assign_splits(manifest.table["split"].to_numpy()[rows], labels, val_fraction, seed, subjects)
    for name in SPLITS:
        present_labels = set(labels[splits == name].tolist())
        if name != "test" and present_labels != {0.0, 1.0}:
            raise DataError(f"task {task!r}: split {name!r} needs positive and negative samples, has {present_labels}")
    requests = list(modalities) or available_modalities(manifest, cache_root)
    if not requests:
        raise DataError(
            f"no cache under {cache_root} for any modality the manifest declares "
            f"({sorted(manifest.info.modalities)}); existing: {_describe(list_caches(cache_root))}"
        )
    large, present, keys = load_large(manifest, cache_root, requests, sample_ids)
    if prepared is None:
        if not manifest.info.small_inputs:
            raise DataError("the manifest declares no small_inputs: the small model has nothing to read")
        from .prepare import prepare_small_inputs

        # Small-input statistics are fitted after the carve, on the manifest's train rows minus the carved
        # validation rows, so they never see this run's validation (or test) samples.
        carved = {sample_ids[i] for i in np.flatnonzero(splits == "val")}
        manifest_splits = manifest.table["split"].astype(str).tolist()
        fit_ids = [sid for sid, split in zip(all_ids, manifest_splits) if split == "train" and sid not in carved]
        try:
            prepared = prepare_small_inputs(manifest, cache_root, tokenizer=tokenizer, fit_ids=fit_ids)
        except ManifestError as exc:
            raise DataError(f"small inputs: {exc}") from exc
    small = small_tensors(prepared, all_ids, rows, sample_ids)
    index = {name: torch.from_numpy(np.flatnonzero(splits == name)).long() for name in SPLITS}
    return TaskData(
        task=task,
        sample_ids=sample_ids,
        splits=splits,
        labels=torch.from_numpy(labels),
        large=large,
        present=present,
        small=small,
        small_config=prepared.model_config(),
        cache_keys=keys,
        index=index,
    )


def describe(data: TaskData) -> str:
    """One line per split and modality for the run log (counts only)."""
    counts = {s: int((data.splits == s).sum()) for s in SPLITS}
    pos = {s: int(data.labels[data.index[s]].sum().item()) for s in SPLITS}
    cover = {m: f"{int(data.present[:, i].sum())}/{data.n}" for i, m in enumerate(data.large)}
    return json.dumps({"samples": counts, "positives": pos, "modalities_present": cover, "caches": data.cache_keys})
