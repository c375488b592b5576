"""Small cohorts for extraction tests: real PNG files and notes behind a real manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from adacomed.cache_schema import Manifest, ManifestInfo, ModalitySource, TaskSpec

BIN = Path(sys.executable).parent


def image_cohort(root: Path, n: int = 24, seed: int = 0, side: int = 64) -> Path:
    """``n`` grey PNGs of varied content plus a note each; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pixels = (rng.random((side, side + 8 * (i % 3))) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / "img" / f"{i:04d}.png")
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
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        extract_cmd(manifest, cache, *extra, modality=modality),
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
    )
