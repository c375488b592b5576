"""The extraction runner: manifest rows -> encoder -> committed cache shards.

The runner knows nothing about any particular model: it reads the encoder's contract (``load_input``,
``collate``, ``encode``, ``fingerprint``) and the cache contract (``CacheDir``). Work is planned as a pure
function of the sorted sample ids (``plan.json``); this process takes every ``num_shards``-th shard from
``shard_index`` (SLURM job arrays), skips committed shards, claims the rest so concurrent runs do not duplicate
work, commits each shard atomically, and finalises the cache when every planned shard is committed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache_schema import CacheDir, Fingerprint, Manifest, ShardPlan
from ..cache_schema.store import DEFAULT_ROWS_PER_SHARD
from .encoders import Encoder, create_encoder, default_encoder
from .errors import ExtractError, InputError, SampleFailed

ON_ERROR = ("skip", "fail")


@dataclass
class ExtractConfig:
    """Everything one extraction run needs; the CLI fills it, dask ships it to workers (plain data only)."""

    manifest: Path
    modality: str
    cache: Path
    encoder: str | None = None  # default: the modality's registered default
    weights: str | None = None  # local folder/file, hub id, or "tiny-random"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "auto"
    num_workers: int = 2  # decode threads
    on_error: str = "skip"
    storage_dtype: str = "float16"
    shard_format: str = "h5"
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    num_shards: int = 1  # this run takes shards i with i % num_shards == shard_index
    shard_index: int = 0
    wait_for_others: bool = True  # wait for shards claimed by live concurrent runs, then finalise

    def __post_init__(self) -> None:
        self.manifest = Path(self.manifest)
        self.cache = Path(self.cache)
        if self.on_error not in ON_ERROR:
            raise ExtractError(f"--on-error {self.on_error!r} is not one of {list(ON_ERROR)}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ExtractError(f"--shard-index must be in [0, {self.num_shards}); got {self.shard_index}")
        if self.batch_size < 1:
            raise ExtractError("--batch-size must be at least 1")

    @property
    def encoder_name(self) -> str:
        return self.encoder or default_encoder(self.modality)

    def build_encoder(self) -> Encoder:
        return create_encoder(self.encoder_name, self.weights, self.device, self.dtype, **self.encoder_options)


@dataclass
class ShardResult:
    index: int
    rows: int
    errors: int
    seconds: float
    skipped: bool = False  # already committed before this run


@dataclass
class RunSummary:
    cache_path: Path
    cache_key: str
    planned_shards: int
    results: list[ShardResult]
    finalized: bool
    seconds: float

    @property
    def rows_written(self) -> int:
        return sum(r.rows for r in self.results if not r.skipped)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results if not r.skipped)


@dataclass
class ExtractionJob:
    """A planned extraction: the manifest items, the encoder and the cache folder, shared by every executor."""

    config: ExtractConfig
    encoder: Encoder
    items: dict[str, Any]
    sorted_ids: list[str]
    cache: CacheDir
    plan: ShardPlan

    @property
    def fingerprint(self) -> Fingerprint:
        return self.cache.fingerprint

    def my_shards(self) -> list[int]:
        cfg = self.config
        return [i for i in range(self.plan.n_shards) if i % cfg.num_shards == cfg.shard_index]


def plan_job(config: ExtractConfig, encoder: Encoder | None = None) -> ExtractionJob:
    """Read the manifest, build the (lazy) encoder, fix the cache key and the shard plan."""
    manifest = Manifest.read(config.manifest)
    items = dict(manifest.modality_items(config.modality))
    if not items:
        raise ExtractError(f"manifest {config.manifest} has no rows with modality {config.modality!r}")
    encoder = encoder or config.build_encoder()
    if encoder.embed_dim <= 0:  # e.g. precomputed features without a dim option: learn it from the first sample
        first = sorted(items)[0]
        try:
            encoder.load_input(items[first])
        except InputError as exc:
            raise ExtractError(
                f"{encoder.spec.name} needs its output dim: sample {first!r} could not be read ({exc.reason}); "
                "pass --option dim=N"
            ) from None
        if encoder.embed_dim <= 0:
            raise ExtractError(f"{encoder.spec.name} could not determine its output dim; pass --option dim=N")
    fingerprint = encoder.fingerprint(config.modality, manifest.input_hash(config.modality), config.storage_dtype)
    cache = CacheDir(config.cache, fingerprint, config.shard_format)  # type: ignore[arg-type]
    plan = cache.initialise(len(items), config.rows_per_shard)
    return ExtractionJob(config, encoder, items, sorted(items), cache, plan)


# --------------------------------------------------------------------- one shard
def _load_one(encoder: Encoder, sample_id: str, pointer: Any) -> tuple[str, Any, InputError | None]:
    try:
        return sample_id, encoder.load_input(pointer), None
    except InputError as exc:
        return sample_id, None, exc
    except Exception as exc:  # noqa: BLE001 - any reader failure is this sample's failure, reported by type only
        return sample_id, None, InputError(f"{type(exc).__name__} while reading input", "read")


def _decoded(job: ExtractionJob, ids: Sequence[str], pool: ThreadPoolExecutor | None) -> Iterator[tuple]:
    """Decode samples in order, ``num_workers`` threads ahead of the model."""
    if pool is None:
        for sid in ids:
            yield _load_one(job.encoder, sid, job.items[sid])
        return
    window = max(2 * job.config.batch_size, 4 * (job.config.num_workers or 1))
    pending = []
    for sid in ids:
        pending.append(pool.submit(_load_one, job.encoder, sid, job.items[sid]))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


def extract_shard(
    job: ExtractionJob,
    index: int,
    on_progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Compute and commit one shard. With ``on_error='fail'`` a bad sample raises and nothing is committed."""
    start = time.perf_counter()
    cfg = job.config
    ids = job.plan.ids_of(job.sorted_ids, index)
    done_ids: list[str] = []
    outputs: list[np.ndarray] = []
    errors: list[dict[str, str]] = []

    def fail_or_record(sample_id: str, stage: str, reason: str) -> None:
        if cfg.on_error == "fail":
            raise SampleFailed(sample_id, stage, reason)
        errors.append({"sample_id": sample_id, "stage": stage, "reason": reason})

    def flush(batch_ids: list[str], batch: list[Any]) -> None:
        if not batch:
            return
        try:
            out = job.encoder.encode(job.encoder.collate(batch)).numpy()
        except Exception as exc:  # noqa: BLE001 - retry one by one to find the sample that breaks the model
            if len(batch) == 1:
                fail_or_record(batch_ids[0], "encode", f"{type(exc).__name__} in the model forward")
                return
            for sid, sample in zip(batch_ids, batch):
                flush([sid], [sample])
            return
        if out.shape != (len(batch), job.encoder.embed_dim):
            raise ExtractError(
                f"encoder {job.encoder.spec.name} returned shape {out.shape}, expected ({len(batch)}, "
                f"{job.encoder.embed_dim})"
            )
        finite = np.isfinite(out).all(axis=1)
        for sid, row, ok in zip(batch_ids, out, finite):
            if ok:
                done_ids.append(sid)
                outputs.append(row)
            else:
                fail_or_record(sid, "output", "non-finite values in the embedding")

    pool = ThreadPoolExecutor(cfg.num_workers) if cfg.num_workers > 0 else None
    try:
        batch_ids: list[str] = []
        batch: list[Any] = []
        for sid, sample, error in _decoded(job, ids, pool):
            if error is not None:
                fail_or_record(sid, error.stage, error.reason)
            else:
                batch_ids.append(sid)
                batch.append(sample)
            if len(batch) == cfg.batch_size:
                flush(batch_ids, batch)
                job.cache.refresh_claim(index)
                batch_ids, batch = [], []
            if on_progress:
                on_progress(1)
        flush(batch_ids, batch)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    embeddings = np.stack(outputs) if outputs else np.zeros((0, job.encoder.embed_dim), dtype=np.float32)
    job.cache.commit_shard(job.plan, index, done_ids, {"embeddings": embeddings}, errors)
    return ShardResult(index, len(done_ids), len(errors), time.perf_counter() - start)


# ----------------------------------------------------------------- local executor
def run_local(job: ExtractionJob, progress: Any = None, poll_seconds: float = 0.5) -> RunSummary:
    """Run this process's shards in order; resume by skipping committed ones; wait for live concurrent claims."""
    start = time.perf_counter()
    results: list[ShardResult] = []
    waiting: list[int] = []
    task = None
    if progress is not None:
        task = progress.add_task(f"{job.config.modality} / {job.encoder.spec.name}", total=len(job.sorted_ids))

    def advance(n: int) -> None:
        if progress is not None:
            progress.advance(task, n)

    def skip_committed(index: int) -> bool:
        record = job.cache.read_sidecar(job.plan, index)
        if record is None:
            return False
        results.append(ShardResult(index, record["rows"], len(record["errors"]), 0.0, skipped=True))
        advance(len(job.plan.ids_of(job.sorted_ids, index)))
        return True

    def run_or_defer(index: int) -> bool:
        """True when the shard is done (committed before, or computed now); False when another run holds it."""
        if skip_committed(index):
            return True
        if not job.cache.try_claim(index):
            return False
        try:
            if not skip_committed(index):  # it may have been committed between the check and the claim
                results.append(extract_shard(job, index, on_progress=advance))
        finally:
            job.cache.release_claim(index)
        return True

    for index in job.my_shards():
        if not run_or_defer(index):
            waiting.append(index)
    while waiting and job.config.wait_for_others:
        still: list[int] = []
        for index in waiting:
            if not run_or_defer(index):
                still.append(index)
        waiting = still
        if waiting:
            time.sleep(poll_seconds)
    index = job.cache.finalize(job.plan)
    return RunSummary(
        cache_path=job.cache.path,
        cache_key=job.fingerprint.key,
        planned_shards=job.plan.n_shards,
        results=sorted(results, key=lambda r: r.index),
        finalized=index is not None,
        seconds=time.perf_counter() - start,
    )


def slurm_shard_index(default: int = 0) -> int:
    """``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` when running inside a job array."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return default
    return int(task) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
