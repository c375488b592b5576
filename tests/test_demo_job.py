"""The README's main job, ``pipelines/demo_job.sh``, end to end on a few demo subjects: it runs and leaves what it says.

The check follows what the job wrote (every cache it made, whatever its modalities), not a hard-coded list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from adacomed.cache_schema import Manifest, list_caches, verify_cache

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUBJECTS, TASK = 40, "longstay"  # the demo's most balanced task: both classes in val and test at 40 subjects


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_job_runs_end_to_end_on_a_small_cohort(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EPOCHS": "1", "SMALL_EPOCHS": "1"}  # a smoke run, not a study
    job = [str(REPO / "pipelines" / "demo_job.sh"), str(BIN), str(out), str(SUBJECTS), TASK]
    done = subprocess.run(["bash", *job], capture_output=True, text=True, env=env, timeout=1100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    manifest = Manifest.read(out / "cohort" / "manifest.parquet")
    caches = list_caches(out / "cache")  # stage one's, and the small model's prepared inputs (small.<name>)
    stage_one = [cache for cache in caches if cache.modality in manifest.info.modalities]
    assert stage_one, "stage one wrote no cache"
    for cache in caches:
        assert cache.status == "complete" and verify_cache(cache.path) == [], cache.path
    for cache in stage_one:
        assert cache.rows + cache.n_errors == len(manifest.modality_items(cache.modality)), cache.modality
        assert f"ok {cache.path}" in " ".join(done.stdout.split())  # the job's own verify step saw it

    run = out / "runs" / TASK
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_parquet(run / "predictions.parquet")
    test = predictions[predictions.split == "test"]
    assert metrics["task"] == TASK and metrics["n"]["test"] == len(test) > 0
    assert np.isclose(metrics["auroc"]["test"]["fused"], roc_auc_score(test.label, test.prob_fused))
    assert (run / "report.md").exists() and f"report at {run}/report.md" in " ".join(done.stdout.split())
