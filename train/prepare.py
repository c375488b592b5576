"""Write the small model's inputs into the cache once, so no training epoch decodes a file.

    prepared = prepare_small_inputs(manifest, "cache/")      # builds what is missing, reuses the rest
    prepared.arrays["xray.image"]                            # uint8 [N, 256, 256], manifest order
    model = SmallModel(prepared.model_config())
    logits = model(prepared.batch([0, 1, 2]))

Each input group is one cache (``cache_schema.CacheDir``) under modality ``small.<group>``: every image, text,
time-series and vector input is its own group (named after the input); all categorical, ordinal and numerical
inputs form one group, ``tabular``. The fingerprint holds the parameters, what was learned from the train split
(vocabularies, statistics; for a trained tokenizer, the digest of its train corpus) and a hash of the rows
(sample id, split, pointers), so a changed split or parameter gives a new cache, never a silent mix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from ..cache_schema import CacheDir, CacheNotFound, EmbeddingCache, Fingerprint, Manifest
from ..cache_schema.fingerprint import hash_rows
from ..cache_schema.store import cache_path
from .input_groups import TABULAR_KINDS, ImageGroup, InputGroup, TimeSeriesGroup, VectorGroup
from .small_model import SmallInputSpec, SmallModelConfig
from .tabular_input import TabularGroup
from .text_input import TextGroup

PREPARE_VERSION = "1"
TABULAR_GROUP = "tabular"
DEFAULT_ROWS_PER_SHARD = 1024


@dataclass
class PreparedInputs:
    """The small model's inputs for every manifest sample, in manifest order.

    ``arrays`` are keyed ``<group>.<array>`` (see :mod:`adacomed.train.small_model` for the batch contract);
    ``errors`` lists per-sample failures (sample_id, stage, reason, shard); such inputs are marked missing.
    """

    sample_ids: list[str]
    arrays: dict[str, np.ndarray]
    specs: dict[str, SmallInputSpec]
    cache_paths: dict[str, Path] = field(default_factory=dict)
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "stage", "reason"]))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def model_config(self, hidden_dim: int = 256, dropout: float = 0.1) -> SmallModelConfig:
        """The small model's configuration for these inputs."""
        return SmallModelConfig(inputs=dict(self.specs), hidden_dim=hidden_dim, dropout=dropout)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of sample ids (KeyError naming the first unknown id)."""
        where = {sid: i for i, sid in enumerate(self.sample_ids)}
        try:
            return np.fromiter((where[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise KeyError(f"sample {exc.args[0]!r} has no prepared small-model inputs") from None

    def batch(
        self, rows: Sequence[int] | np.ndarray, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Tensors of these rows for :meth:`SmallModel.forward` (uint8 images stay uint8: the model crops them)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {}
        for key, array in self.arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array[rows]))
            out[key] = tensor.to(device) if device is not None else tensor
        return out


def _groups(
    manifest: Manifest,
    tokenizer: str | os.PathLike | None,
    max_length: int,
    vocab_size: int,
    time_steps: int,
    window_hours: float = 48.0,
) -> list[InputGroup]:
    declared = manifest.info.small_inputs
    if not declared:
        raise ValueError("the manifest declares no small_inputs: nothing to prepare for the small model")
    groups: list[InputGroup] = []
    tabular = {name: small for name, small in declared.items() if small.kind in TABULAR_KINDS}
    for name, small in declared.items():
        if small.kind in TABULAR_KINDS:
            continue
        if name == TABULAR_GROUP:
            raise ValueError(f"small input {name!r} ({small.kind}) clashes with the tabular group's name; rename it")
        if small.kind == "image":
            groups.append(ImageGroup(name, manifest, small))
        elif small.kind == "text":
            groups.append(TextGroup(name, manifest, small, tokenizer, max_length, vocab_size))
        elif small.kind == "timeseries":
            groups.append(TimeSeriesGroup(name, manifest, small, time_steps, window_hours))
        elif small.kind == "vector":
            groups.append(VectorGroup(name, manifest, small))
        else:
            raise ValueError(f"small input {name!r}: kind {small.kind!r} has no preparation")
    if tabular:
        groups.append(TabularGroup(TABULAR_GROUP, manifest, tabular))
    return groups


def _fingerprint(group: InputGroup) -> Fingerprint:
    return Fingerprint(
        modality=f"small.{group.name}",
        encoder=f"prepare-{group.model_kind}",
        encoder_version=PREPARE_VERSION,
        weights=group.weights(),
        pooling="none",
        preprocessing={
            **group.preprocessing(),
            "statistics_from": "train",
            "columns": {name: small.column for name, small in group.inputs.items()},
        },
        storage_dtype="float32",
        input_hash=hash_rows(group.input_rows()),
    )


def _build(group: InputGroup, writer: CacheDir, rows_per_shard: int, shard_format: str, progress: Progress | None):
    """Commit every shard not yet committed, then finalise (resumes after a crash)."""
    position = {sid: i for i, sid in enumerate(group.sample_ids)}
    sorted_ids = sorted(group.sample_ids)
    plan = writer.initialise(len(sorted_ids), rows_per_shard)
    group.prepare_build(writer.path)
    done = writer.committed(plan)
    task = progress.add_task(f"small.{group.name}", total=plan.n_shards, completed=len(done)) if progress else None
    for index in range(plan.n_shards):
        if index in done:
            continue
        ids = plan.ids_of(sorted_ids, index)
        arrays, errors = group.encode([position[sid] for sid in ids])
        writer.commit_shard(plan, index, ids, arrays, errors=errors)
        if progress is not None and task is not None:
            progress.advance(task)
    if writer.finalize(plan) is None:
        raise RuntimeError(f"cache {writer.path} could not be finalised: shards are missing after the build")


def _as_stored(key: str, array: np.ndarray) -> np.ndarray:
    return array.astype(bool, copy=False) if key.endswith((".present", ".mask")) else array


def prepare_small_inputs(
    manifest: Manifest,
    cache_root: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    *,
    max_length: int = 256,
    vocab_size: int = 8000,
    time_steps: int = 48,
    window_hours: float = 48.0,
    fit_ids: Sequence[str] | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    shard_format: str = "h5",
    build: bool = True,
    show_progress: bool = True,
) -> PreparedInputs:
    """Prepare (or reuse) the cache of every declared small input and load it, in manifest order.

    Args:
        manifest: the cohort; its ``small_inputs`` declare what to prepare.
        cache_root: the cache root (the same as stage one's).
        tokenizer: a ``tokenizer.json`` or a folder holding one; None trains WordPiece on the train notes.
        max_length: tokens kept per note.
        vocab_size: vocabulary size of a trained tokenizer.
        time_steps: length of the time-series grid.
        window_hours: time-series rows at ``hours >= window_hours`` (or < 0) are dropped; the window is cut into
            ``time_steps`` bins.
        fit_ids: the samples statistics, vocabularies and a trained tokenizer are learned from (manifest train
            rows only); None = every manifest train row. The trainer passes its train rows after a validation
            carve, so nothing is learned from validation samples; the choice is part of each cache's fingerprint.
        rows_per_shard: samples per shard.
        shard_format: ``h5`` or ``parquet``.
        build: False only loads, raising CacheNotFound when a cache is absent or incomplete.
        show_progress: a rich progress bar while building.
    """
    groups = _groups(manifest, tokenizer, max_length, vocab_size, time_steps, window_hours)
    if fit_ids is not None:
        position = {sid: i for i, sid in enumerate(manifest.sample_ids)}
        unknown = [sid for sid in fit_ids if sid not in position]
        if unknown:
            raise KeyError(f"fit_ids: sample {unknown[0]!r} is not in the manifest ({len(unknown)} unknown)")
        fit_rows = sorted({position[sid] for sid in fit_ids})
        for group in groups:
            group.use_fit_rows(fit_rows)
    arrays: dict[str, np.ndarray] = {}
    specs: dict[str, SmallInputSpec] = {}
    paths: dict[str, Path] = {}
    errors = []
    ids = manifest.sample_ids
    progress = Progress(transient=True, disable=not show_progress)
    with progress:
        for group in groups:
            group.fit()
            fingerprint = _fingerprint(group)
            folder = cache_path(cache_root, fingerprint)
            if not (folder / "index.json").exists():
                if not build:
                    raise CacheNotFound(
                        f"no complete prepared cache for small input {group.name!r} at {folder}; "
                        "run prepare_small_inputs (or `adacomed-train`) to build it"
                    )
                _build(
                    group, CacheDir(cache_root, fingerprint, fmt=shard_format), rows_per_shard, shard_format, progress
                )
            cache = EmbeddingCache(folder)
            positions = cache.positions(ids)
            in_order = np.array_equal(positions, np.arange(len(ids)))
            for name in cache.array_names:
                array = cache.read_all(name) if in_order else cache.read_positions(positions, name)
                arrays[name] = _as_stored(name, array)
            specs[group.name] = group.spec(folder)
            paths[group.name] = folder
            errors.append(cache.errors())
    table = pd.concat(errors, ignore_index=True) if errors else pd.DataFrame(columns=["sample_id", "stage", "reason"])
    return PreparedInputs(sample_ids=ids, arrays=arrays, specs=specs, cache_paths=paths, errors=table)


def load_prepared_inputs(
    manifest: Manifest, cache_root: str | os.PathLike, tokenizer: str | os.PathLike | None = None, **options
) -> PreparedInputs:
    """Load inputs prepared earlier with the same manifest and options; CacheNotFound if any group is not built."""
    return prepare_small_inputs(manifest, cache_root, tokenizer, build=False, **options)
