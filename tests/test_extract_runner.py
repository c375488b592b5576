"""Stage one end to end: resume, per-sample errors, job arrays, concurrent runs, kills at each commit step, dask.

Most tests run the CLI in this process (typer's test runner). A process boundary is kept only where the test is
about processes: kills, two concurrent runs, the SLURM array variables end to end (once), and dask workers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adacomed.cache_schema import EmbeddingCache, Manifest, open_cache, verify_cache
from adacomed.cache_schema.stop_points import STOP_AT_ENV
from adacomed.extract import cli
from adacomed.extract.errors import ExtractError, SampleFailed
from adacomed.extract.runner import ExtractConfig, plan_job, run_local

sys.path.insert(0, str(Path(__file__).parent))
from extract_helpers import (  # noqa: E402
    SUBPROCESS_TIMEOUT,
    cli_extract,
    extract_cmd,
    image_cohort,
    run_extract,
    wait_until_stopped,
)

N_SAMPLES, ROWS_PER_SHARD, BATCH_SIZE = 24, 5, 4  # five shards; the reference and every run below use these
RUN_ARGS = ("--rows-per-shard", str(ROWS_PER_SHARD), "--batch-size", str(BATCH_SIZE), "--num-workers", "1")


def _cache(root: Path, modality: str = "xray") -> EmbeddingCache:
    return open_cache(root, modality)


def _config(manifest: Path, cache: Path, **changes) -> ExtractConfig:
    values = dict(
        manifest=manifest,
        modality="xray",
        cache=cache,
        weights="tiny-random",
        batch_size=BATCH_SIZE,
        num_workers=1,
        rows_per_shard=ROWS_PER_SHARD,
    )
    values.update(changes)
    return ExtractConfig(**values)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return image_cohort(tmp_path_factory.mktemp("cohort"), n=N_SAMPLES)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> EmbeddingCache:
    """An uninterrupted run: what every interrupted, split or concurrent run must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("ref")
    summary = run_local(plan_job(_config(cohort, root)))
    assert summary.finalized and summary.rows_written == N_SAMPLES
    return _cache(root)


def _same(a: EmbeddingCache, b: EmbeddingCache) -> None:
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(np.asarray(a.read_all()), np.asarray(b.read_all()))


def _records(cache_root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache_root.glob("xray/*/*/shards/*.json"))]


def test_rerun_skips_committed_work(cohort, reference, tmp_path):
    summary = run_local(plan_job(_config(cohort, tmp_path)))
    again = run_local(plan_job(_config(cohort, tmp_path)))
    assert summary.rows_written == N_SAMPLES and again.rows_written == 0
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

    fail = cli_extract(manifest_path, tmp_path / "fail", "--on-error", "fail", "--rows-per-shard", "2")
    assert fail.exit_code == 1, fail.output
    assert "s0003" in fail.stderr and "committed before it are kept" in " ".join(fail.stderr.split())
    committed = list((tmp_path / "fail").glob("xray/*/*/shards/*.json"))
    assert len(committed) == 1  # shard 0 (s0000, s0001) stays committed; the run stopped in shard 1

    notes = cli_extract(manifest_path, tmp_path / "notes", "--on-error", "skip", modality="notes")
    assert notes.exit_code == 0, notes.output
    note_errors = _cache(tmp_path / "notes", "notes").errors()
    assert note_errors.to_dict("records") == [
        {"sample_id": "s0008", "stage": "preprocess", "reason": "empty note", "shard": "shard-00000-of-00001"}
    ]


def test_job_array_parts_complete_the_cache(cohort, reference, tmp_path, monkeypatch):
    """Part 0 in its own process reads the real SLURM variables; part 1 (in process) completes the cache."""
    slurm = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    first = run_extract(cohort, tmp_path, *RUN_ARGS, env={**slurm, "SLURM_ARRAY_TASK_ID": "0"})
    assert "other shards are still pending" in " ".join(first.stderr.split())
    assert not list(tmp_path.glob("xray/*/*/index.json"))
    assert sorted(r["index"] for r in _records(tmp_path)) == [0, 2, 4]  # every other shard, from the task id
    for name, value in {**slurm, "SLURM_ARRAY_TASK_ID": "1"}.items():
        monkeypatch.setenv(name, value)
    second = cli_extract(cohort, tmp_path, *RUN_ARGS)
    assert second.exit_code == 0, second.output
    assert "complete (index.json written)" in second.stderr
    _same(reference, _cache(tmp_path))


CONCURRENT_RUN = """
import json, os, sys, time
from pathlib import Path
from adacomed.extract.runner import ExtractConfig, plan_job, run_local

manifest, cache, barrier, name = sys.argv[1:5]
job = plan_job(ExtractConfig(manifest=manifest, modality="xray", cache=cache, weights="tiny-random",
                             batch_size=2, num_workers=0, rows_per_shard=2))
job.encoder.model  # load before the barrier: both runs start computing at the same moment
forward, calls = job.encoder.forward, []

def wait_for_both(stage):
    Path(barrier, f"{stage}-{name}").touch()
    deadline = time.monotonic() + 120
    while len([f for f in os.listdir(barrier) if f.startswith(stage)]) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)

def contended_forward(batch):
    # The first forward waits (holding its shard's claim) until the other run is in a forward too: each run
    # computes at least one shard whatever the machine's load; later shards interleave by their claims.
    if not calls:
        wait_for_both("forward")
    calls.append(1)
    time.sleep(0.02)
    return forward(batch)

job.encoder.forward = contended_forward
wait_for_both("start")
summary = run_local(job, poll_seconds=0.05)
print(json.dumps({"pid": os.getpid(), "computed": [r.index for r in summary.results if not r.skipped]}))
"""


def test_concurrent_processes_share_the_work(cohort, reference, tmp_path):
    """Two runs started together on one cache: both compute shards, each shard exactly once, none is lost."""
    # CONCURRENT_RUN holds each run's first forward until the other is in one: neither can do all the work alone.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_RUN, str(cohort), str(tmp_path / "cache"), str(barrier), name],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        runs = [json.loads(p.communicate(timeout=SUBPROCESS_TIMEOUT)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs)
    computed = [run["computed"] for run in runs]
    assert all(computed), f"one run computed nothing: {computed}"
    assert sorted(computed[0] + computed[1]) == list(range(N_SAMPLES // 2))  # disjoint and complete
    assert {r["pid"] for r in _records(tmp_path / "cache")} == {run["pid"] for run in runs}
    _same(reference, _cache(tmp_path / "cache"))
    assert verify_cache(_cache(tmp_path / "cache").path) == []


# ------------------------------------------------------------------------------------------- kills
# Each run freezes itself at the n-th visit of a named step of the commit protocol (ADACOMED_STOP_AT) and is killed
# there with SIGKILL: the kill lands at that step whatever the machine's speed. (point, n, shards committed by then)
KILL_POINTS = {
    "planning": (1, 0),  # fingerprint.json written, plan.json not
    "shard-written": (2, 1),  # shard 1's data file complete in _tmp/
    "shard-renamed": (3, 2),  # shard 2's data file in shards/, its commit record not written (the commit window)
    "committed": (4, 4),  # right after the 4th commit record
    "finalizing": (1, 5),  # every shard committed, index.json not written
    "finalized": (1, 5),  # index.json written, the clean-up after it not done
}


@pytest.fixture(scope="module")
def killed_runs(cohort, tmp_path_factory) -> dict[str, Path | str]:
    """One CLI process per kill point, all started together; each is killed once frozen at its point.

    Returns point -> the cache root the killed run left, or the reason it could not be killed there.
    """
    root = tmp_path_factory.mktemp("killed")
    procs = {}
    outcome: dict[str, Path | str] = {}
    try:
        for point, (nth, _) in KILL_POINTS.items():
            procs[point] = subprocess.Popen(
                extract_cmd(cohort, root / point, *RUN_ARGS),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "HF_HUB_OFFLINE": "1", STOP_AT_ENV: f"{point}:{nth}"},
            )
        for point, proc in procs.items():
            try:
                wait_until_stopped(proc.pid, SUBPROCESS_TIMEOUT, alive=proc)
            except AssertionError as exc:
                outcome[point] = str(exc)
                continue
            proc.send_signal(signal.SIGKILL)  # the extraction's own process, frozen at its point
            proc.wait(timeout=60)
            outcome[point] = root / point
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    return outcome


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill9_at_each_commit_step_then_resume_is_bit_identical(point, killed_runs, cohort, reference):
    cache_root = killed_runs[point]
    assert isinstance(cache_root, Path), cache_root
    (folder,) = cache_root.glob("xray/*/*")
    committed = KILL_POINTS[point][1]
    committed_rows = min(committed * ROWS_PER_SHARD, N_SAMPLES)
    assert len(list(folder.glob("shards/*.json"))) == committed
    assert (folder / "plan.json").exists() == (point != "planning")
    assert (folder / "index.json").exists() == (point == "finalized")
    if point == "shard-written":
        assert len(list((folder / "_tmp").iterdir())) == 1  # the killed writer's temp file
    if point == "shard-renamed":
        assert len(list(folder.glob("shards/*.h5"))) == committed + 1  # a data file no commit record names
    if point != "planning":
        assert all(p.kind == "unfinished" for p in verify_cache(folder))  # nothing damaged is visible
        partial = open_cache(cache_root, "xray", allow_partial=True)
        assert len(partial) == committed_rows
        np.testing.assert_array_equal(np.asarray(partial.read_all()), reference.read(list(partial.ids)))

    resumed = run_local(plan_job(_config(cohort, cache_root)))
    assert resumed.finalized
    assert resumed.rows_written == N_SAMPLES - committed_rows
    _same(reference, _cache(cache_root))
    assert verify_cache(folder) == []
    assert list((folder / "_tmp").iterdir()) == []  # the killed writer's temp is collected
    assert list((folder / "claims").iterdir()) == []


# ------------------------------------------------------------------------------------------- dask
@pytest.fixture(scope="module")
def dask_cluster():
    """One two-worker LocalCluster for every dask test of this module (a cluster start costs seconds)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        yield cluster


def test_dask_executor_matches_local(cohort, reference, tmp_path, dask_cluster):
    from adacomed.extract.dask_executor import run_dask

    summary = run_dask(plan_job(_config(cohort, tmp_path)), dask_cluster.scheduler_address)
    assert summary.finalized
    _same(reference, _cache(tmp_path))


def test_dask_worker_killed_mid_task_is_retried(cohort, reference, tmp_path, dask_cluster):
    """A worker frozen in a shard's commit window is killed; the scheduler re-runs that shard on another worker."""
    from distributed import Client

    from adacomed.extract.dask_executor import run_dask

    with Client(dask_cluster.scheduler_address, timeout=60) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]

        def arm() -> int:  # runs in the victim only; a restarted worker starts without it
            os.environ[STOP_AT_ENV] = "shard-renamed:1"
            return os.getpid()

        pid = client.run(arm, workers=[victim])[victim]
        outcome: dict = {}
        job = plan_job(_config(cohort, tmp_path))
        thread = threading.Thread(target=lambda: outcome.update(summary=run_dask(job, dask_cluster.scheduler_address)))
        thread.start()
        try:
            wait_until_stopped(pid, SUBPROCESS_TIMEOUT)
            (orphan,) = [
                f for f in job.cache.shards_dir.glob("*.h5") if not f.with_name(f"{f.name[:20]}.json").exists()
            ]
            index = int(re.match(r"shard-(\d+)-of", orphan.name).group(1))
            in_flight = client.processing(workers=[victim])[victim]
            assert any(key.endswith(f"-shard-{index}") for key in in_flight), (index, in_flight)
        finally:
            os.kill(pid, signal.SIGKILL)
            thread.join(timeout=SUBPROCESS_TIMEOUT)
    assert not thread.is_alive() and outcome["summary"].finalized
    record = json.loads(job.cache.sidecar_path(job.plan, index).read_text())
    assert record["pid"] != pid  # committed by the worker that re-ran it
    _same(reference, _cache(tmp_path))
    assert verify_cache(_cache(tmp_path).path) == []


# --------------------------------------------------------------------------------------- CLI, errors
def test_cli_lists_encoders_and_rejects_bad_arguments(cohort, tmp_path):
    from typer.testing import CliRunner

    listing = CliRunner().invoke(cli.app, ["--list-encoders"])
    assert listing.exit_code == 0 and "dinov2-giant" in listing.stdout
    bad = cli_extract(cohort, tmp_path, "--on-error", "maybe")
    assert bad.exit_code == 2 and "--on-error" in bad.stderr
    assert not list(tmp_path.glob("xray/*/*/shards/*.json"))


SECRET = "SECRET-PATIENT-NAME"


def _with_a_model_that_quotes_rejected_notes(plan):
    """Wrap ``plan_job``: its encoder's forward raises on notes containing 'rejects', quoting them like some
    libraries quote their input in errors. A note that fails this way carries the secret into the exception."""

    def planned(config, encoder=None):
        job = plan(config, encoder)
        collate, forward, batch_texts = job.encoder.collate, job.encoder.forward, []

        def remembering_collate(samples):
            batch_texts[:] = list(samples)
            return collate(samples)

        def quoting_forward(batch):
            rejected = [text for text in batch_texts if "rejects" in text]
            if rejected:
                raise ValueError(f"cannot embed {rejected[0]!r}")
            return forward(batch)

        job.encoder.collate, job.encoder.forward = remembering_collate, quoting_forward
        return job

    return planned


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_notes_that_fail_never_leak_their_text(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    manifest_path = image_cohort(tmp_path / "c", n=10)
    manifest = Manifest.read(manifest_path)
    manifest.table.loc[0, "note_text"] = f"{SECRET} " * 5000  # long, but fine: truncated, not an error
    manifest.table.loc[1, "note_text"] = f"{SECRET} has a note the model rejects"
    manifest.table.loc[2, "note_text"] = "  \n  "  # empty once cleaned
    manifest.write(manifest_path)
    quoting_plan = _with_a_model_that_quotes_rejected_notes(plan_job)
    monkeypatch.setattr(cli, "plan_job", quoting_plan)

    skip = cli_extract(manifest_path, tmp_path / "skip", modality="notes")
    assert skip.exit_code == 0, skip.output
    errors = _cache(tmp_path / "skip", "notes").errors().set_index("sample_id").reason.to_dict()
    assert SECRET not in json.dumps(errors)
    assert errors == {"s0001": "ValueError in the model forward", "s0002": "empty note"}

    # batch size 1: s0001's forward fails before the empty s0002 reaches a batch
    fail = cli_extract(manifest_path, tmp_path / "fail", "--on-error", "fail", "--batch-size", "1", modality="notes")
    assert fail.exit_code == 1 and "s0001" in fail.stderr

    config = _config(manifest_path, tmp_path / "direct", modality="notes", on_error="fail", batch_size=1)
    with pytest.raises(SampleFailed, match="s0001") as failed:
        run_local(quoting_plan(config))

    for index in range(manifest.table.shape[0]):  # every note is rejected: the run stops, naming the cause
        manifest.table.loc[index, "note_text"] = f"{SECRET} {index} rejects"
    manifest.write(manifest_path)
    stopped = cli_extract(manifest_path, tmp_path / "stopped", modality="notes")
    assert stopped.exit_code == 2 and "in a row" in stopped.stderr
    with pytest.raises(ExtractError, match="in a row") as stopped_direct:
        run_local(quoting_plan(_config(manifest_path, tmp_path / "direct2", modality="notes", rows_per_shard=10)))

    for text in (skip.output, fail.output, stopped.output, caplog.text):
        assert SECRET not in text
    assert SECRET not in _exception_text(failed.value) + _exception_text(stopped_direct.value)


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
    run = cli_extract(cohort, tmp_path, "--encoder", "dinov2-base", "--weights", str(tmp_path / "nowhere"))
    assert run.exit_code == 2 and "nowhere" in run.stderr
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
