"""Preemptible training: the trainer's own process is killed (SIGKILL) at several points of a run, the same
command is started again with --resume, and the outputs equal those of an unbroken run (CPU, within 1e-6).

Also: a checkpoint is one commit (a crash before the JSON's rename leaves the previous one in force, nothing
half-written is ever loaded), a second live trainer on a run folder refuses and names the holder, and a small
model's inputs keep their order through its saved file (the cause of the old resume bug: the saved config's
inputs came back sorted, so the fusion layer read features in another order).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_helpers import build_cohort
from typer.testing import CliRunner

from adacomed.cache_schema import atomic
from adacomed.train import checkpoint as checkpoint_module
from adacomed.train.checkpoint import ResumeError, commit_checkpoint, load_checkpoint
from adacomed.train.cli import app
from adacomed.train.run_lock import RunLock, RunLockedError
from adacomed.train.small_model import SmallEnsemble, SmallInputSpec, SmallModel, SmallModelConfig
from adacomed.train.small_training import read_small_info, save_small_model, small_config_from_dict

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
TIMEOUT = 240


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


def command(cohort: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    manifest, cache = cohort
    settings = {
        "small_hidden_dim": 32,
        "small_ensemble": 2,
        "small_patience": 10,
        "proj_dim": 16,
        "checkpoint_seconds": 0,
        "small_lr": 3e-3,
    }
    args = [str(BIN / "adacomed-train"), "--task", "mortality", "--manifest", str(manifest), "--cache", str(cache)]
    args += ["--out", str(out), "--device", "cpu", "--epochs", "4", "--small-epochs", "4", "--batch-size", "32"]
    args += ["--lr", "0.003", *(f"--set={key}={value}" for key, value in settings.items())]
    return args + list(extra)


def run_until(args: list[str], marker: str | None, stop_then=None) -> tuple[int, str]:
    """Run the trainer; SIGKILL its own process as soon as it prints a line containing ``marker`` (None: let it
    finish). With ``stop_then``, the process is first frozen (SIGSTOP) and ``stop_then(args, process)`` is
    called while it holds the run folder. Returns (exit status, output)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker is not None and marker in line:
                if stop_then is not None:
                    proc.send_signal(signal.SIGSTOP)
                    try:
                        stop_then(args, proc)
                    finally:
                        proc.kill()
                proc.kill()
                break
        proc.wait(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
    return proc.returncode, "".join(lines)


def assert_close(a, b, where: str = "metrics") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, abs=1e-6), where
    else:
        assert a == b, where


def reference_run(cohort: tuple[Path, Path], out: Path) -> Path:
    """The unbroken run, in this process (one thread, like the subprocesses: the same floats)."""
    args = command(cohort, out)[1:]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    return out


@pytest.mark.slow
def test_kill_minus_nine_anywhere_then_resume_equals_an_unbroken_run(cohort, tmp_path):
    run = tmp_path / "run"
    kills = [
        ("small model", "checkpoint committed: small model 1/2 epoch 2"),
        ("co-training", "checkpoint committed: co-training epoch 2"),
        ("evaluation", "evaluating the chosen epoch"),
        ("report", "writing outputs"),
    ]
    for attempt, (stage, marker) in enumerate(kills):
        extra = ("--resume",) if attempt else ()
        status, output = run_until(
            command(cohort, run, *extra), marker, stop_then=second_trainer if attempt == 1 else None
        )
        assert status == -signal.SIGKILL, f"not killed during the {stage}: {output[-3000:]}"
        assert (run / ".lock").exists()  # left behind by the killed holder; the next run takes it over
    status, output = run_until(command(cohort, run, "--resume"), None)
    assert status == 0, output[-3000:]
    assert "small model: finished in the checkpoint" in output and "co-training: resuming after epoch 4" in output

    reference = reference_run(cohort, tmp_path / "reference")
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference / "predictions.parquet"), pd.read_parquet(run / "predictions.parquet"), atol=1e-6
    )
    expected, got = (json.loads((folder / "metrics.json").read_text()) for folder in (reference, run))
    assert_close(expected, got)
    assert not (run / ".lock").exists()
    assert not list(run.rglob("*.tmp"))  # temp files of the killed writers were collected


def second_trainer(args: list[str], holder: subprocess.Popen) -> None:
    """While ``holder`` is frozen mid-run (alive, holding the folder), a second trainer refuses, naming it."""
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 1, result.output
    assert "being written by another live trainer" in result.output
    assert f"host '{atomic.host_name()}', pid {holder.pid}" in " ".join(result.output.split())


def test_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": atomic.host_name(), "pid": 2**22 + 12345, "time": 0}))
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"host": atomic.host_name(), "pid": sleeper.pid, "time": 0}))
        with pytest.raises(RunLockedError, match=rf"host '{atomic.host_name()}', pid {sleeper.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_a_crash_before_the_json_rename_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    first = {"model": {"w": torch.zeros(3)}}
    commit_checkpoint(tmp_path, "cotrain", first, {"epoch": 1})

    def crash(path, payload, durable=True):
        raise OSError("killed before the commit point")

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", crash)
    with pytest.raises(OSError, match="commit point"):
        commit_checkpoint(tmp_path, "cotrain", {"model": {"w": torch.ones(3)}}, {"epoch": 2})
    assert len(list((tmp_path / "tensors").iterdir())) == 2  # the new tensors were written, not committed
    loaded = load_checkpoint(tmp_path, "cotrain")
    assert loaded.meta["epoch"] == 1 and torch.equal(loaded.tensors["model"]["w"], torch.zeros(3))
    monkeypatch.undo()
    commit_checkpoint(tmp_path, "cotrain", {"model": {"w": torch.full((3,), 2.0)}}, {"epoch": 3})
    assert len(list((tmp_path / "tensors").iterdir())) == 1  # the orphan and the superseded file were collected

    damaged = tmp_path / json.loads((tmp_path / "cotrain.json").read_text())["files"]["model"]["file"]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match="does not match the digest"):
        load_checkpoint(tmp_path, "cotrain")
    assert load_checkpoint(tmp_path / "none", "cotrain") is None


def test_small_model_keeps_its_input_order_through_its_file(tmp_path):
    config = SmallModelConfig(  # not in sorted order: 'vitals' before 'tabular'
        inputs={
            "vitals": SmallInputSpec(kind="vector", dim=5),
            "tabular": SmallInputSpec(kind="tabular", n_categories=[3], n_levels=[4], n_numerical=1),
        },
        hidden_dim=8,
    )
    torch.manual_seed(0)
    model = SmallEnsemble([SmallModel(config), SmallModel(config)]).eval()
    save_small_model(tmp_path / "small.safetensors", model, {"task": "t", "train_ids": []})
    info = read_small_info(tmp_path / "small.safetensors")
    restored_config = small_config_from_dict(json.loads(json.dumps(info, sort_keys=True)))
    assert list(restored_config.inputs) == ["vitals", "tabular"]
    from safetensors.torch import load_file

    restored = SmallEnsemble([SmallModel(restored_config) for _ in range(info["members"])]).eval()
    restored.load_state_dict(load_file(str(tmp_path / "small.safetensors")))
    batch = {
        "vitals.values": torch.randn(4, 5),
        "tabular.categorical": torch.tensor([[1], [2], [0], [1]]),
        "tabular.ordinal": torch.tensor([[0], [3], [1], [2]]),
        "tabular.numerical": torch.tensor([[0.5], [float("nan")], [-1.0], [2.0]]),
    }
    torch.testing.assert_close(model(batch), restored(batch), rtol=0, atol=0)
    mean_of_members = torch.stack([member(batch) for member in model.members]).mean(0)
    torch.testing.assert_close(model(batch), mean_of_members)  # the ensemble's logit is the members' mean
