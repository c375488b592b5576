"""Shared fixtures. Real-data tests read ../shared when it is there and skip otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MMIST_ROOT = SHARED / "data" / "mmist_ccrcc"


@pytest.fixture(scope="session")
def mmist_root() -> Path:
    """The real MMIST ccRCC release under ../shared; skips when a fresh clone has no ../shared."""
    if not (MMIST_ROOT / "Code" / "clinical+genomic_split.csv").exists():
        pytest.skip("../shared/data/mmist_ccrcc is absent (fresh clone): real-data test skipped")
    return MMIST_ROOT


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Two cores are shared by the whole suite: keep torch from oversubscribing them."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
