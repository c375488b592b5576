"""Small cohorts for extraction tests (real PNGs and notes behind a real manifest); the CLI in or out of process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from adacomed.cache_schema import Manifest, ManifestInfo, ModalitySource, TaskSpec

BIN = Path(sys.executable).parent
SUBPROCESS_TIMEOUT = 300  # seconds; a hung extraction fails its test instead of hanging the suite


def image_cohort(root: Path, n: int = 24, seed: int = 0, side: int = 64, compress_level: int = 6) -> Path:
    """``n`` grey PNGs of varied content plus a note each; returns the manifest path.

    ``compress_level=0`` stores the pixels uncompressed, so a file rewritten with other pixels of the same size
    keeps its byte size (the cache-key tests change bytes without changing size or mtime).
    """
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pixels = (rng.random((side, side + 8 * (i % 3))) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / "img" / f"{i:04d}.png", compress_level=compress_level)
        rows.append(
            {
                "sample_id": f"s{i:04d}",
                "subject_id": f"p{i:04d}",
                "split": ("train", "val", "test")[i % 3],
                "label_mortality": float(i % 2),
                "xray_path": f"{i:04d}.png",
                "note_text": f"Patient {i} stable.\n  Follow up in {i % 7} days.",
            }
        )
    info = ManifestInfo(
        cohort="test-images",
        modalities={"xray": ModalitySource("xray_path", "path", "img"), "notes": ModalitySource("note_text", "text")},
        tasks={"mortality": TaskSpec("label_mortality", "died")},
    )
    return Manifest(pd.DataFrame(rows), info).write(root / "manifest.parquet")


def extract_cmd(manifest: Path, cache: Path, *extra: str, modality: str = "xray") -> list[str]:
    return [
        str(BIN / "adacomed-extract"),
        "--manifest",
        str(manifest),
        "--modality",
        modality,
        "--cache",
        str(cache),
        "--weights",
        "tiny-random",
        *extra,
    ]


def run_extract(
    manifest: Path, cache: Path, *extra: str, modality: str = "xray", env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """``adacomed-extract`` in its own process: only for tests about processes (kills, SLURM variables)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        extract_cmd(manifest, cache, *extra, modality=modality),
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
        timeout=SUBPROCESS_TIMEOUT,
    )


def cli_extract(manifest: Path, cache: Path, *extra: str, modality: str = "xray"):
    """``adacomed-extract`` in this process (typer's test runner): the same CLI without a process start-up."""
    from typer.testing import CliRunner

    from adacomed.extract.cli import app

    return CliRunner().invoke(app, extract_cmd(manifest, cache, *extra, modality=modality)[1:])


def wait_until_stopped(pid: int, timeout: float, alive: object = None) -> None:
    """Wait until process ``pid`` has frozen itself at its ``ADACOMED_STOP_AT`` point (it sent itself SIGSTOP).

    ``alive`` (a Popen) lets the wait fail at once when the process exits before reaching its point.
    """
    import psutil

    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process {pid} exited ({alive.returncode}) before reaching its stop point")
        if process.status() == psutil.STATUS_STOPPED:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not reach its stop point within {timeout:.0f} s")
