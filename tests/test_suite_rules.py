"""Rules the test suite keeps about itself: time limits everywhere, real-data tests that cannot skip in CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, require_shared

TESTS = Path(__file__).resolve().parent
RUNS = {"run", "check_output", "check_call", "call"}  # subprocess functions that take timeout=
WAITS = {"communicate", "wait"}  # Popen methods that block: they need a timeout too


def _calls_without_timeout(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        is_subprocess_run = node.func.attr in RUNS and isinstance(owner, ast.Name) and owner.id == "subprocess"
        if is_subprocess_run or node.func.attr in WAITS:
            if not any(k.arg == "timeout" for k in node.keywords) and not (node.func.attr in WAITS and node.args):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}(...)")
    return found


def test_every_subprocess_a_test_starts_has_a_timeout() -> None:
    missing = [call for path in sorted(TESTS.glob("*.py")) for call in _calls_without_timeout(path)]
    assert not missing, f"subprocess calls without timeout= (a hung child would hang the suite): {missing}"


def test_every_test_has_a_time_limit() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert float(options["timeout"]) > 0
    pytest.importorskip("pytest_timeout")  # the dev extra installs it; without it the setting would do nothing


def _outcome(path: Path) -> tuple[str, str]:
    """What ``require_shared`` does with ``path``, caught here: a skip escaping this test would read as a pass."""
    try:
        require_shared(path, "../shared/data")
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return ("skip" if isinstance(exc, pytest.skip.Exception) else "fail"), str(exc)
    return "pass", ""


def test_missing_shared_data_skips_on_a_clone_and_fails_in_ci(tmp_path: Path, monkeypatch) -> None:
    absent = tmp_path / "shared" / "data"
    monkeypatch.delenv("CI", raising=False)
    assert _outcome(absent)[0] == "skip" and "fresh clone" in _outcome(absent)[1]
    monkeypatch.setenv("CI", "true")
    assert _outcome(absent)[0] == "fail" and "CI=true" in _outcome(absent)[1]
    assert _outcome(tmp_path) == ("pass", "")
