"""The extraction runner: manifest rows -> encoder -> committed cache shards.

The runner knows nothing about any particular model: it reads the encoder's contract (``load_input``,
``encode_samples``, ``fingerprint``) and the cache contract (``CacheDir``). Bag encoders (a slide's patch
features) get one sample per call and return its bag beside the pooled row; both go into the same shard.

Work is planned as a pure function of the sorted sample ids (``plan.json``); this process takes every
``num_shards``-th shard from ``shard_index`` (SLURM job arrays), skips committed shards, claims the rest so
concurrent runs do not duplicate work, commits each shard atomically, and finalises the cache when every planned
shard is committed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache_schema import CacheDir, Fingerprint, Manifest, ShardPlan
from ..cache_schema.store import DEFAULT_ROWS_PER_SHARD
from .encoders import EncodedSamples, Encoder, create_encoder, default_encoder
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
    rows_per_shard: int | None = None  # default: the encoder's (bag encoders: a few samples), else 32768
    num_shards: int = 1  # this run takes shards i with i % num_shards == shard_index
    shard_index: int = 0
    wait_for_others: bool = True  # wait for shards claimed by live concurrent runs, then finalise
    input_hash_mode: str = "stat"  # key the cache on input files' size+mtime ("stat") or their bytes ("content")

    def __post_init__(self) -> None:
        self.manifest = Path(self.manifest)
        self.cache = Path(self.cache)
        if self.on_error not in ON_ERROR:
            raise ExtractError(f"--on-error {self.on_error!r} is not one of {list(ON_ERROR)}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ExtractError(f"--shard-index must be in [0, {self.num_shards}); got {self.shard_index}")
        if self.batch_size < 1:
            raise ExtractError("--batch-size must be at least 1")
        if self.input_hash_mode not in ("stat", "content"):
            raise ExtractError(f"--input-hash {self.input_hash_mode!r} is not one of stat, content")

    @property
    def encoder_name(self) -> str:
        return self.encoder or default_encoder(self.modality)

    def build_encoder(self) -> Encoder:
        return create_encoder(self.encoder_name, self.weights, self.device, self.dtype, **self.encoder_options)

    def shard_rows(self, encoder: Encoder) -> int:
        return self.rows_per_shard or encoder.spec.rows_per_shard or DEFAULT_ROWS_PER_SHARD


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
    if encoder.embed_dim <= 0:  # e.g. precomputed features without a dim option: learn it from the data
        _learn_dim(encoder, items)
    fingerprint = encoder.fingerprint(
        config.modality,
        manifest.input_hash(config.modality),
        config.storage_dtype,
        manifest.input_files_hash(config.modality, config.input_hash_mode),
    )
    cache = CacheDir(config.cache, fingerprint, config.shard_format)  # type: ignore[arg-type]
    plan = cache.initialise(len(items), config.shard_rows(encoder))
    return ExtractionJob(config, encoder, items, sorted(items), cache, plan)


def _learn_dim(encoder: Encoder, items: dict[str, Any], tries: int = 32) -> None:
    """Read samples in id order until one is readable; its size fixes the encoder's output dim."""
    reasons = []
    for sample_id in sorted(items)[:tries]:
        try:
            encoder.load_input(items[sample_id])
        except InputError as exc:
            reasons.append(f"{sample_id}: {exc.reason}")
            continue
        if encoder.embed_dim > 0:
            return
    raise ExtractError(
        f"{encoder.spec.name} could not learn its output dim from the first {min(tries, len(items))} samples "
        f"({'; '.join(reasons[:3]) or 'no size'}); pass --option dim=N"
    )


def run_environment(encoder: Encoder) -> dict[str, Any]:
    """Library versions and device of a run: recorded in every commit record, not part of the cache key."""
    import platform

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": encoder.device,
        "dtype": encoder.dtype_name,
    }
    for package in ("transformers", "open_clip", "timm"):
        module = sys.modules.get(package)
        if module is not None:
            env[package] = getattr(module, "__version__", "unknown")
    if encoder.device.startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(torch.device(encoder.device))
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def result_from_record(record: dict[str, Any]) -> ShardResult:
    """A shard committed earlier, as this run's result."""
    return ShardResult(record["index"], record["rows"], len(record["errors"]), 0.0, skipped=True)


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
    # Plain encoders decode a couple of batches ahead; bag encoders (whole slides) only one sample per worker.
    ahead = 1 if job.encoder.spec.bags else 2 * job.config.batch_size
    window = max(ahead, 2 * (job.config.num_workers or 1))
    pending = []
    for sid in ids:
        pending.append(pool.submit(_load_one, job.encoder, sid, job.items[sid]))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


MAX_CONSECUTIVE_MODEL_FAILURES = 8


def extract_shard(
    job: ExtractionJob,
    index: int,
    on_progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Compute and commit one shard. With ``on_error='fail'`` a bad sample raises and nothing is committed.

    Failures that are not a sample's fault stop the run instead of being recorded per sample: the model cannot
    load, or the forward fails on many samples in a row (a wrong device, a too-long max length, ...).
    """
    start = time.perf_counter()
    cfg = job.config
    encoder = job.encoder
    encoder.model  # noqa: B018 - load now: a weights or device problem is the run's, not a sample's
    ids = job.plan.ids_of(job.sorted_ids, index)
    done_ids: list[str] = []
    outputs: list[np.ndarray] = []
    bags: dict[str, list[np.ndarray]] = {name: [] for name in encoder.spec.bags}
    errors: list[dict[str, str]] = []
    model_failures = 0
    samples_per_call = 1 if encoder.spec.bags else cfg.batch_size

    def fail_or_record(sample_id: str, stage: str, reason: str) -> None:
        if cfg.on_error == "fail":
            raise SampleFailed(sample_id, stage, reason)
        errors.append({"sample_id": sample_id, "stage": stage, "reason": reason})

    def flush(batch_ids: list[str], batch: list[Any]) -> None:
        nonlocal model_failures
        if not batch:
            return
        try:
            encoded = encoder.encode_samples(batch, cfg.batch_size)
        except InputError as exc:  # a bag encoder met a bad part of its one sample (e.g. unreadable tiles)
            fail_or_record(batch_ids[0], exc.stage, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - retry one by one to find the sample that breaks the model
            if len(batch) > 1:
                for sid, sample in zip(batch_ids, batch):
                    flush([sid], [sample])
                return
            model_failures += 1
            if model_failures >= MAX_CONSECUTIVE_MODEL_FAILURES:
                raise ExtractError(
                    f"the model forward failed on {model_failures} samples in a row ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); this is not a per-sample problem, so the run stops"
                ) from exc
            fail_or_record(batch_ids[0], "encode", f"{type(exc).__name__} in the model forward")
            return
        model_failures = 0
        _check_encoded(encoder, encoded, len(batch))
        finite = np.isfinite(encoded.embeddings).all(axis=1)
        for i, (sid, row, ok) in enumerate(zip(batch_ids, encoded.embeddings, finite)):
            sample_bags = encoded.bags[i] if encoded.bags is not None else {}
            if ok and all(np.isfinite(b).all() for b in sample_bags.values() if b.dtype.kind == "f"):
                done_ids.append(sid)
                outputs.append(row)
                for name in bags:
                    bags[name].append(sample_bags[name])
            else:
                fail_or_record(sid, "output", "non-finite values in the embedding or its bag")

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
            if len(batch) == samples_per_call:
                flush(batch_ids, batch)
                batch_ids, batch = [], []
            job.cache.refresh_claim(index)
            if on_progress:
                on_progress(1)
        flush(batch_ids, batch)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    embeddings = np.stack(outputs) if outputs else np.zeros((0, encoder.embed_dim), dtype=np.float32)
    outputs.clear()
    job.cache.commit_shard(
        job.plan,
        index,
        done_ids,
        {"embeddings": embeddings},
        errors,
        extra={"env": run_environment(encoder)},
        bags=bags or None,
    )
    return ShardResult(index, len(done_ids), len(errors), time.perf_counter() - start)


def _check_encoded(encoder: Encoder, encoded: EncodedSamples, n: int) -> None:
    """The encoder kept its contract: ``(n, dim)`` rows and, for bag encoders, every declared bag per sample."""
    shape = np.shape(encoded.embeddings)
    if shape != (n, encoder.embed_dim):
        raise ExtractError(f"encoder {encoder.spec.name} returned shape {shape}, expected ({n}, {encoder.embed_dim})")
    if not encoder.spec.bags:
        return
    if encoded.bags is None or len(encoded.bags) != n:
        raise ExtractError(f"encoder {encoder.spec.name} declares bags {encoder.spec.bags} but returned none")
    for sample_bags in encoded.bags:
        missing = set(encoder.spec.bags) - set(sample_bags)
        if missing:
            raise ExtractError(f"encoder {encoder.spec.name} returned no bag {sorted(missing)[0]!r}")


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
        results.append(result_from_record(record))
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


def slurm_array_split() -> tuple[int, int] | None:
    """(parts, this part) inside a SLURM job array, from its task id, min, step and count; None outside one.

    ``--array=0-15:4`` runs tasks 0, 4, 8, 12: four parts, indices 0..3.
    """
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    step = int(os.environ.get("SLURM_ARRAY_TASK_STEP") or 1)
    low = int(os.environ.get("SLURM_ARRAY_TASK_MIN") or 0)
    high = int(os.environ.get("SLURM_ARRAY_TASK_MAX") or task)
    count = int(os.environ.get("SLURM_ARRAY_TASK_COUNT") or (high - low) // step + 1)
    return count, (int(task) - low) // step
