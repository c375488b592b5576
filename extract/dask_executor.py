"""Run extraction shards as dask tasks: a LocalCluster by default, or an existing scheduler.

One model load per worker process (a worker plugin holds the planned job and builds the encoder on first use);
tasks return only the shard's metadata, never embeddings (the worker commits the shard itself). A task whose
worker dies is re-run by the scheduler on another worker; that is safe because commits are atomic and
idempotent. Claims are not used here: the scheduler already gives each shard to one worker at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from distributed import WorkerPlugin

from .errors import ExtractError
from .runner import (
    ExtractConfig,
    ExtractionJob,
    RunSummary,
    ShardResult,
    extract_shard,
    plan_job,
    result_from_record,
)


class ExtractionPlugin(WorkerPlugin):
    """Holds one planned extraction per worker process; the encoder's model loads lazily, once.

    The worker re-plans from the manifest and must arrive at the driver's cache key: a worker whose environment
    resolves other weights (another HF cache, other files) refuses instead of writing a different cache.
    """

    def __init__(self, config: dict[str, Any], cache_key: str):
        self.config = config
        self.cache_key = cache_key
        self.job: ExtractionJob | None = None

    def setup(self, worker: Any) -> None:
        self.job = None
        self._lock = threading.Lock()  # made on the worker: locks do not travel

    def teardown(self, worker: Any) -> None:
        self.job = None

    def get_job(self) -> ExtractionJob:
        with self._lock:  # a worker with several threads loads the model once
            if self.job is None:
                job = plan_job(ExtractConfig(**self.config))
                if job.fingerprint.key != self.cache_key:
                    raise ExtractError(
                        f"this worker computes cache key {job.fingerprint.key}, the driver {self.cache_key}: its "
                        "weights, inputs or code differ from the driver's; fix the worker environment"
                    )
                job.encoder.model  # noqa: B018 - load under the lock
                self.job = job
            return self.job


def _extract_shard_task(plugin_name: str, index: int) -> dict[str, Any]:
    from distributed import get_worker

    job = get_worker().plugins[plugin_name].get_job()
    record = job.cache.read_sidecar(job.plan, index)
    if record is not None:
        return dataclasses.asdict(result_from_record(record))
    return dataclasses.asdict(extract_shard(job, index))


def config_to_dict(config: ExtractConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["manifest"] = str(config.manifest.resolve())
    data["cache"] = str(config.cache.resolve())
    return data


def run_dask(
    job: ExtractionJob,
    scheduler_address: str | None = None,
    n_workers: int = 2,
    progress: Any = None,
    retries: int = 0,
) -> RunSummary:
    """Submit this process's uncommitted shards to dask and wait; finalise when every shard is committed.

    A lost worker is handled by the scheduler (its task re-runs elsewhere, up to ``allowed-failures``); task
    ``retries`` stay 0 by default because a task that raised (a bad sample with ``--on-error fail``) would fail
    the same way again.
    """
    from distributed import Client, LocalCluster, as_completed

    start = time.perf_counter()
    cluster = None
    if scheduler_address:
        client = Client(scheduler_address)
    else:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    plugin_name = f"adacomed-extract-{job.fingerprint.key}"
    try:
        client.register_plugin(ExtractionPlugin(config_to_dict(job.config), job.fingerprint.key), name=plugin_name)
        results: list[ShardResult] = []
        todo = []
        for index in job.my_shards():
            record = job.cache.read_sidecar(job.plan, index)
            if record is None:
                todo.append(index)
            else:
                results.append(result_from_record(record))
        task = None
        if progress is not None:
            task = progress.add_task(
                f"{job.config.modality} / {job.encoder.spec.name} (dask)", total=len(job.sorted_ids)
            )
            done = sum(len(job.plan.ids_of(job.sorted_ids, r.index)) for r in results)
            progress.advance(task, done)
        futures = [
            client.submit(
                _extract_shard_task, plugin_name, index, key=f"{plugin_name}-shard-{index}", retries=retries, pure=False
            )
            for index in todo
        ]
        for future in as_completed(futures):
            result = ShardResult(**future.result())
            results.append(result)
            if progress is not None:
                progress.advance(task, len(job.plan.ids_of(job.sorted_ids, result.index)))
        try:
            client.unregister_worker_plugin(plugin_name)
        except Exception:  # noqa: BLE001 - best effort on shutdown; the plugin holds no resources beyond the model
            pass
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    index = job.cache.finalize(job.plan)
    return RunSummary(
        job.cache.path,
        job.fingerprint.key,
        job.plan.n_shards,
        sorted(results, key=lambda r: r.index),
        index is not None,
        time.perf_counter() - start,
    )
