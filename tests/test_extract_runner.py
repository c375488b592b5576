"""Stage one end to end: resume, per-sample errors, job arrays, concurrent runs, kill -9, dask worker loss."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adacomed.cache_schema import EmbeddingCache, Manifest, open_cache, verify_cache
from adacomed.extract.errors import ExtractError
from adacomed.extract.runner import ExtractConfig, plan_job, run_local

sys.path.insert(0, str(Path(__file__).parent))
from extract_helpers import extract_cmd, image_cohort, run_extract  # noqa: E402


def _cache(root: Path, modality: str = "xray") -> EmbeddingCache:
    return open_cache(root, modality)


def _config(manifest: Path, cache: Path, **changes) -> ExtractConfig:
    values = dict(
        manifest=manifest,
        modality="xray",
        cache=cache,
        weights="tiny-random",
        batch_size=4,
        num_workers=1,
        rows_per_shard=5,
    )
    values.update(changes)
    return ExtractConfig(**values)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return image_cohort(tmp_path_factory.mktemp("cohort"), n=24)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> EmbeddingCache:
    """An uninterrupted run: what every interrupted, split or concurrent run must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("ref")
    summary = run_local(plan_job(_config(cohort, root)))
    assert summary.finalized and summary.rows_written == 24
    return _cache(root)


def _same(a: EmbeddingCache, b: EmbeddingCache) -> None:
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(np.asarray(a.read_all()), np.asarray(b.read_all()))


def test_rerun_skips_committed_work(cohort, reference, tmp_path):
    summary = run_local(plan_job(_config(cohort, tmp_path)))
    again = run_local(plan_job(_config(cohort, tmp_path)))
    assert summary.rows_written == 24 and again.rows_written == 0
    assert all(r.skipped for r in again.results)
    _same(reference, _cache(tmp_path))
    assert verify_cache(_cache(tmp_path).path) == []


def test_changed_preprocessing_is_a_new_cache(cohort, tmp_path):
    a = plan_job(_config(cohort, tmp_path))
    b = plan_job(_config(cohort, tmp_path, encoder_options={"crop_size": 196}))
    assert a.fingerprint.key != b.fingerprint.key and a.cache.path != b.cache.path
    assert b.fingerprint.preprocessing["crop_height"] == 196


def test_bad_samples_skip_records_errors_and_fail_names_the_sample(tmp_path):
    manifest_path = image_cohort(tmp_path / "c", n=10)
    manifest = Manifest.read(manifest_path)
    img = tmp_path / "c" / "img"
    (img / "0003.png").write_bytes(b"not a png at all")  # undecodable
    (img / "0006.png").unlink()  # missing
    manifest.table.loc[manifest.table.sample_id == "s0008", "note_text"] = "   \n  "  # empty note
    manifest.write(manifest_path)

    skip = run_local(plan_job(_config(manifest_path, tmp_path / "skip", num_workers=0)))
    assert skip.finalized and skip.rows_written == 8
    errors = _cache(tmp_path / "skip").errors().set_index("sample_id")
    assert set(errors.index) == {"s0003", "s0006"}
    assert errors.loc["s0006", "stage"] == "read"
    assert errors.loc["s0003", "stage"] in ("read", "decode")

    fail = run_extract(manifest_path, tmp_path / "fail", "--on-error", "fail", "--rows-per-shard", "2", check=False)
    assert fail.returncode == 1
    assert "s0003" in fail.stderr and "committed before it are kept" in " ".join(fail.stderr.split())
    committed = list((tmp_path / "fail").glob("xray/*/*/shards/*.json"))
    assert len(committed) == 1  # shard 0 (s0000, s0001) stays committed; the run stopped in shard 1

    notes = run_extract(manifest_path, tmp_path / "notes", "--on-error", "skip", modality="notes", check=False)
    assert notes.returncode == 0, notes.stderr
    note_errors = _cache(tmp_path / "notes", "notes").errors()
    assert note_errors.to_dict("records") == [
        {"sample_id": "s0008", "stage": "preprocess", "reason": "empty note", "shard": "shard-00000-of-00001"}
    ]


def test_job_array_parts_complete_the_cache(cohort, reference, tmp_path):
    first = run_extract(
        cohort, tmp_path, "--num-shards", "2", "--rows-per-shard", "5", env={"SLURM_ARRAY_TASK_ID": "0"}
    )
    assert "other shards are still pending" in " ".join(first.stderr.split())
    assert not list(tmp_path.glob("xray/*/*/index.json"))
    run_extract(cohort, tmp_path, "--num-shards", "2", "--rows-per-shard", "5", env={"SLURM_ARRAY_TASK_ID": "1"})
    _same(reference, _cache(tmp_path))


def test_concurrent_processes_share_the_work(cohort, reference, tmp_path):
    """Two runs started at once on one cache: every shard is computed by exactly one of them, none is lost."""
    code = (
        "import json, sys; from adacomed.extract.runner import ExtractConfig, plan_job, run_local;"
        "cfg = ExtractConfig(manifest=sys.argv[1], modality='xray', cache=sys.argv[2], weights='tiny-random',"
        "batch_size=2, num_workers=1, rows_per_shard=2);"
        "s = run_local(plan_job(cfg)); print(json.dumps([r.index for r in s.results if not r.skipped]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(cohort), str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    computed = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(computed[0] + computed[1]) == list(range(12))  # disjoint and complete
    _same(reference, _cache(tmp_path))
    assert verify_cache(_cache(tmp_path).path) == []


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_is_bit_identical(tmp_path):
    cohort = image_cohort(tmp_path / "cohort", n=160, side=96)
    extra = ("--rows-per-shard", "4", "--batch-size", "2")
    run_extract(cohort, tmp_path / "reference", *extra)
    reference = _cache(tmp_path / "reference")
    rng = random.Random(0)
    interrupted = 0
    for trial in range(4):
        cache = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(
            extract_cmd(cohort, cache, *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + 120
        while not list(cache.glob("xray/*/*/shards/*.json")) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            interrupted += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = open_cache(cache, "xray", allow_partial=True)
        assert all(p.kind == "unfinished" for p in verify_cache(partial.path))  # nothing damaged is visible
        assert set(partial.ids) <= set(reference.ids)
        np.testing.assert_array_equal(np.asarray(partial.read_all()), reference.read(list(partial.ids)))
        run_extract(cohort, cache, *extra)
        _same(reference, _cache(cache))
        assert verify_cache(_cache(cache).path) == []
        assert list(_cache(cache).path.joinpath("_tmp").iterdir()) == []  # the killed writer's temp is collected
    assert interrupted >= 2, "the kills mostly landed after the run finished; the test did not test much"


@pytest.mark.slow
def test_dask_worker_killed_mid_task_is_retried(cohort, reference, tmp_path):
    from distributed import Client, LocalCluster

    from adacomed.extract.dask_executor import run_dask

    big = image_cohort(tmp_path / "cohort", n=60, side=96)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        job = plan_job(_config(big, tmp_path / "cache", rows_per_shard=3, batch_size=1))
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(summary=run_dask(job, cluster.scheduler_address)))
        thread.start()
        deadline = time.monotonic() + 180
        while not list((tmp_path / "cache").glob("xray/*/*/shards/*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
        assert outcome["summary"].finalized
    expected = run_local(plan_job(_config(big, tmp_path / "local", rows_per_shard=3, batch_size=1)))
    assert expected.finalized
    _same(_cache(tmp_path / "local"), _cache(tmp_path / "cache"))
    assert verify_cache(_cache(tmp_path / "cache").path) == []


def test_dask_executor_matches_local(cohort, reference, tmp_path):
    from adacomed.extract.dask_executor import run_dask

    summary = run_dask(plan_job(_config(cohort, tmp_path)), n_workers=1)
    assert summary.finalized
    _same(reference, _cache(tmp_path))


def test_cli_lists_encoders_and_rejects_bad_arguments(cohort, tmp_path):
    listing = subprocess.run(extract_cmd(cohort, tmp_path)[:1] + ["--list-encoders"], capture_output=True, text=True)
    assert listing.returncode == 0 and "dinov2-giant" in listing.stdout
    bad = run_extract(cohort, tmp_path, "--on-error", "maybe", check=False)
    assert bad.returncode == 2 and "--on-error" in bad.stderr


def test_unreadable_inputs_never_leak_note_text(tmp_path):
    manifest_path = image_cohort(tmp_path / "c", n=4)
    manifest = Manifest.read(manifest_path)
    manifest.table.loc[0, "note_text"] = "SECRET-PATIENT-NAME " * 5000  # long, but fine: truncated, not an error
    manifest.table.loc[1, "note_text"] = ""
    manifest.write(manifest_path)
    run = run_extract(manifest_path, tmp_path / "cache", modality="notes")
    assert "SECRET" not in run.stdout + run.stderr
    assert "SECRET" not in json.dumps(_cache(tmp_path / "cache", "notes").errors().to_dict("records"))


def test_png_16bit_and_rgb_inputs_are_accepted(tmp_path):
    manifest_path = image_cohort(tmp_path / "c", n=3)
    img = tmp_path / "c" / "img"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(img / "0001.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img / "0002.png")
    summary = run_local(plan_job(_config(manifest_path, tmp_path / "cache")))
    assert summary.rows_written == 3 and summary.errors == 0


def test_a_model_that_fails_on_every_sample_stops_the_run(cohort, tmp_path, monkeypatch):
    """Not a per-sample problem (wrong device, too long inputs...): the run stops and commits nothing."""
    job = plan_job(_config(cohort, tmp_path, rows_per_shard=24, batch_size=4))

    def broken(batch):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(job.encoder, "forward", broken)
    with pytest.raises(ExtractError, match="failed on 8 samples in a row.*same device"):
        run_local(job)
    assert job.cache.committed(job.plan) == {}


def test_weights_that_cannot_load_stop_the_run(cohort, tmp_path):
    run = run_extract(cohort, tmp_path, "--encoder", "dinov2-base", "--weights", str(tmp_path / "nowhere"), check=False)
    assert run.returncode == 2 and "nowhere" in run.stderr
    assert not list(tmp_path.glob("xray/*/*/shards/*.json"))


def test_slurm_array_split_handles_steps_and_counts(monkeypatch):
    from adacomed.extract.runner import slurm_array_split

    for name in (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_TASK_COUNT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert slurm_array_split() is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "8")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "4")  # --array=0-15:4 -> tasks 0, 4, 8, 12
    assert slurm_array_split() == (4, 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert slurm_array_split() == (4, 2)
