"""Shared fixtures. Real-data tests read ../shared when it is there and skip otherwise -- except under CI=true,
where a missing ../shared fails them: CI always has it, and a silent skip there would hide a broken real-data path.
"""

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
SHARED_FIXTURES = ("mmist_root",)  # fixtures that read ../shared: their tests must carry the `shared` marker


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_shared(path: Path, what: str) -> Path:
    """``path`` if it exists; else skip (a user's fresh clone) or, under CI=true, fail."""
    if path.exists():
        return path
    message = f"{what} is absent"
    if in_ci():
        pytest.fail(f"{message}, and CI=true: CI must run the real-data tests (check out ../shared)", pytrace=False)
    pytest.skip(f"{message} (fresh clone): real-data test skipped")


@pytest.fixture(scope="session")
def mmist_root() -> Path:
    """The real MMIST ccRCC release under ../shared; skips when a fresh clone has no ../shared (fails under CI)."""
    require_shared(MMIST_ROOT / "Code" / "clinical+genomic_split.csv", "../shared/data/mmist_ccrcc")
    return MMIST_ROOT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that reads ../shared without the `shared` marker would escape `-m "not shared"`: refuse to run."""
    unmarked = [
        item.nodeid
        for item in items
        if set(SHARED_FIXTURES) & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("shared") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests reading ../shared need @pytest.mark.shared: " + ", ".join(unmarked))


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Two cores are shared by the whole suite: keep torch from oversubscribing them."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
