"""The prepared GPU check runs end to end on the CPU at tiny sizes (it has not run on a GPU in CI)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _load("gpu_check")
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--smoke", "--device", "cpu", "--out", str(out)])
    gpu_check.main()
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["device"] == "cpu"
    models = [r["model"] for r in result["rows"]]
    assert models == ["UNI-sized ViT-L/16", "DINOv2 ViT-g/14", "13B LLaMA-architecture"]
    for row in result["rows"]:
        assert row["pipeline"] > 0 and row["bare"] > 0
