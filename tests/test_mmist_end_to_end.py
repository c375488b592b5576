"""Issue "Datasets": the real MMIST ccRCC release through the whole pipeline with a real offline text model.

manifest (adacomed-data mmist) -> clinical prompts embedded by real MiniLM weights, shipped CT/WSI features by
the precomputed encoder (adacomed-extract) -> adacomed-train --task vital12. Skips when ../shared is absent.
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
import torch
from sklearn.metrics import roc_auc_score

from adacomed.cache_schema import Manifest, open_cache, verify_cache

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(1800)
def test_mmist_ct_cohort_trains_vital12_from_the_cache(mmist_root: Path, tmp_path: Path):
    out, cache = tmp_path / "mmist", tmp_path / "cache"
    _run("adacomed-data", "mmist", "--root", str(mmist_root), "--out", str(out), "--cohort", "ct")
    manifest_path = out / "manifest.parquet"
    manifest = Manifest.read(manifest_path)
    assert len(manifest.table) == 239
    for modality, encoder in (
        ("clinical", "all-minilm-l6-v2"),
        ("ct_features", "precomputed"),
        ("wsi_features", "precomputed"),
    ):
        _run(
            "adacomed-extract",
            "--manifest",
            str(manifest_path),
            "--modality",
            modality,
            "--encoder",
            encoder,
            "--cache",
            str(cache),
            "--batch-size",
            "32",
        )
    clinical = open_cache(cache, "clinical")
    assert clinical.dim == 384 and len(clinical) == 239 and len(clinical.errors()) == 0
    assert open_cache(cache, "ct_features").dim == 512 and open_cache(cache, "wsi_features").dim == 1024
    for folder in (c.path for c in map(lambda m: open_cache(cache, m), ("clinical", "ct_features", "wsi_features"))):
        assert verify_cache(folder) == []

    run = tmp_path / "run"
    _run(
        "adacomed-train",
        "--task",
        "vital12",
        "--manifest",
        str(manifest_path),
        "--cache",
        str(cache),
        "--out",
        str(run),
        "--modalities",
        "ct_features,wsi_features,clinical",
        "--epochs",
        "5",
        "--small-epochs",
        "5",
        "--seed",
        "0",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    n_test = int((manifest.table.split == "test").sum())
    assert metrics["task"] == "vital12" and metrics["n"]["test"] == n_test
    assert set(metrics["test"]["at_0.5"]) == {"acc", "auroc", "auprc", "mAP", "mAR", "mF1", "bacc"}
    predictions = pd.read_parquet(run / "predictions.parquet")
    test = predictions[predictions.split == "test"]
    assert np.isclose(metrics["auroc"]["test"]["fused"], roc_auc_score(test.label, test.prob_fused))
    test_ids = set(manifest.table.loc[manifest.table.split == "test", "sample_id"])
    assert test_ids <= set(predictions.sample_id)
    p = {c: torch.tensor(predictions[c].to_numpy(), dtype=torch.float64) for c in predictions.columns[3:]}
    fused = torch.sigmoid(p["w_large"] * torch.logit(p["prob_large"]) + p["w_small"] * torch.logit(p["prob_small"]))
    assert np.allclose(predictions.prob_fused, fused.numpy(), atol=1e-4)  # every sample has a large modality here
    assert (run / "report.md").exists() and (run / "config.toml").exists()
