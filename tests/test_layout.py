"""The layout's rules, checked: dependency direction, small files, no pickle loading in the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("cache_schema", "extract", "train", "pipelines")
# What each part may import from the others: pipelines -> {extract, train} -> cache_schema.
ALLOWED = {
    "cache_schema": set(),
    "extract": {"cache_schema"},
    "train": {"cache_schema"},
    "pipelines": {"cache_schema", "extract", "train"},
}


def _python_files(part: str) -> list[Path]:
    return sorted((REPO / part).rglob("*.py"))


def _imported_parts(text: str, depth: int) -> set[str]:
    """Parts a module imports; ``depth`` is 1 for ``part/x.py``, 2 for ``part/sub/x.py``."""
    found = set(re.findall(r"^\s*(?:from|import)\s+adacomed\.(\w+)", text, flags=re.M))
    for dots, name in re.findall(r"^\s*from\s+(\.+)(\w+)", text, flags=re.M):
        if len(dots) == depth + 1:  # climbs out of this part to a sibling part
            found.add(name)
    return found & set(PARTS)


@pytest.mark.parametrize("part", PARTS)
def test_dependency_direction(part):
    for path in _python_files(part):
        depth = len(path.relative_to(REPO / part).parts)
        illegal = _imported_parts(path.read_text(), depth) - ALLOWED[part] - {part}
        assert not illegal, f"{path.relative_to(REPO)} imports {sorted(illegal)}"


def test_the_import_scan_sees_every_form():
    text = "from ..train.loop import x\nfrom ...extract import y\nimport adacomed.pipelines.cli\nfrom .z import w\n"
    assert _imported_parts(text, 1) == {"train", "pipelines"}
    assert _imported_parts(text, 2) == {"extract", "pipelines"}


def test_files_stay_small():
    too_long = {
        str(p.relative_to(REPO)): n
        for part in PARTS
        for p in _python_files(part)
        if (n := len(p.read_text().splitlines())) > 800
    }
    assert not too_long, f"files over 800 lines (split them by concept): {too_long}"


def test_no_unsafe_deserialisation_in_the_package():
    pattern = re.compile(r"allow_pickle\s*=\s*True|pickle\.load|torch\.load\((?![^)]*weights_only=True)")
    offenders = [
        str(p.relative_to(REPO)) for part in PARTS for p in _python_files(part) if pattern.search(p.read_text())
    ]
    assert not offenders, f"unsafe deserialisation in {offenders}"


def test_moved_pipeline_modules_keep_their_old_import_paths():
    """pipelines/ was grouped into datasets/ and suites/; the flat names users imported still give the same module."""
    import importlib

    from adacomed import pipelines

    for old, new in pipelines.MOVED.items():
        assert (REPO / "pipelines" / (new.replace(".", "/") + ".py")).exists(), new
        assert not (REPO / "pipelines" / f"{old}.py").exists(), f"{old}.py is back beside its new home"
        moved = importlib.import_module(f"adacomed.pipelines.{old}")
        assert moved is importlib.import_module(f"adacomed.pipelines.{new}")
    from adacomed.pipelines.demo import build_demo_cohort
    from adacomed.pipelines.experiments import compare

    assert build_demo_cohort.__module__ == "adacomed.pipelines.datasets.demo"
    assert compare.__module__ == "adacomed.pipelines.suites.compare"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adacomed.pipelines.no_such_module")
