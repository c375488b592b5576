"""Beyond the paper, per run: attribution columns and table, focal loss, Youden threshold, ECE, temperature scaling."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve
from train_helpers import build_cohort

from adacomed.train.config import TrainConfig, optimisation_dict, small_model_dict
from adacomed.train.diagnostics import fit_temperature
from adacomed.train.loop import train_run
from adacomed.train.losses import task_loss
from adacomed.train.metrics import expected_calibration_error, youden_threshold


def _config(manifest: Path, cache: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        task="mortality",
        manifest=str(manifest),
        cache=str(cache),
        out=str(out),
        device="cpu",
        epochs=3,
        batch_size=32,
        lr=3e-3,
        small_epochs=4,
        small_lr=3e-3,
        small_batch_size=32,
        small_hidden_dim=24,
        checkpoint_seconds=0,
        preset={"proj_dim": 16},
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diagnostics")
    manifest, cache = build_cohort(root / "cohort")
    plain = _config(manifest, cache, root / "plain")
    train_run(plain)
    train_run(dataclasses.replace(plain, out=str(root / "scaled"), temperature_scaling=True))
    train_run(dataclasses.replace(plain, out=str(root / "focal"), loss="focal", focal_gamma=2.0))
    return {"plain": root / "plain", "scaled": root / "scaled", "focal": root / "focal"}


def test_attribution_columns_are_distributions_and_the_table_is_their_class_mean(runs):
    run = runs["plain"]
    predictions = pd.read_parquet(run / "predictions.parquet")
    modalities = ("ct_features", "notes", "xray")
    router = predictions[[c for c in predictions.columns if c.startswith("router_") and "share" not in c]]
    assert router.shape[1] == 2 ** len(modalities) - 1  # one expert per non-empty modality subset
    np.testing.assert_allclose(router.sum(axis=1), 1.0, atol=1e-5)
    shares = predictions[[f"router_share_{m}" for m in modalities]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    attention = predictions[[f"attention_{m}" for m in modalities]]
    np.testing.assert_allclose(attention.sum(axis=1, skipna=True), 1.0, atol=1e-5)  # over the present modalities
    missing_ct = predictions["attention_ct_features"].isna()
    assert missing_ct.any() and (predictions.loc[missing_ct, "router_ct_features"] == 0).all()
    # The large path's share of the fused logit, from the logits and deployed weights in the same file.
    large = (predictions.w_large * predictions.logit_large).abs()
    small = (predictions.w_small * predictions.logit_small).abs()
    np.testing.assert_allclose(predictions.share_large, large / (large + small), rtol=1e-5)
    fused = 1 / (
        1 + np.exp(-(predictions.w_large * predictions.logit_large + predictions.w_small * predictions.logit_small))
    )
    np.testing.assert_allclose(predictions.prob_fused, fused, atol=1e-5)
    # attribution.csv and metrics.json hold the per-class means of the test rows of predictions.parquet.
    table = pd.read_csv(run / "attribution.csv")
    test = predictions[predictions.split == "test"]
    for name, part in (("label 0", test[test.label == 0]), ("label 1", test[test.label == 1]), ("all", test)):
        row = table[table["class"] == name].iloc[0]
        assert row["n"] == len(part)
        for column in ["share_large", *shares.columns, *attention.columns]:
            assert row[column] == pytest.approx(part[column].mean(), abs=1e-6), (name, column)
    metrics = json.loads((run / "metrics.json").read_text())
    stored = pd.DataFrame(metrics["attribution"])[table.columns]
    assert list(stored["class"]) == list(table["class"])
    np.testing.assert_allclose(stored[table.columns[1:]].to_numpy(float), table[table.columns[1:]].to_numpy(float))
    report = (run / "report.md").read_text()
    assert "## Modality attribution" in report and "## Calibration" in report
    for png in ("attribution.png", "reliability.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thresholds_and_calibration_in_metrics_match_the_predictions(runs):
    run = runs["plain"]
    predictions = pd.read_parquet(run / "predictions.parquet")
    metrics = json.loads((run / "metrics.json").read_text())
    val, test = (predictions[predictions.split == s] for s in ("val", "test"))
    youden = metrics["thresholds"]["youden"]
    assert youden == pytest.approx(youden_threshold(val.label.to_numpy(), val.prob_fused.to_numpy()))
    predicted = test.prob_fused.to_numpy() >= youden
    recalls = [(predicted[test.label == k] == k).mean() for k in (0, 1)]
    assert metrics["test"]["at_youden"]["bacc"] == pytest.approx(np.mean(recalls))
    assert metrics["test"]["at_0.5"]["bacc"] == pytest.approx(metrics["test"]["at_0.5"]["mAR"])
    for split, part in (("val", val), ("test", test)):
        y, p = part.label.to_numpy(), part.prob_fused.to_numpy()
        edges = np.minimum((p * 10).astype(int), 9)
        ece = sum((edges == b).mean() * abs(y[edges == b].mean() - p[edges == b].mean()) for b in np.unique(edges))
        assert metrics["calibration"]["ece"][split] == pytest.approx(ece)
    assert metrics["calibration"]["temperature"] is None and "prob_calibrated" not in predictions


def test_temperature_scaling_reports_beside_and_never_changes_predictions(runs):
    plain = pd.read_parquet(runs["plain"] / "predictions.parquet")
    scaled = pd.read_parquet(runs["scaled"] / "predictions.parquet")
    pd.testing.assert_frame_equal(plain, scaled[plain.columns])
    metrics = json.loads((runs["scaled"] / "metrics.json").read_text())
    temperature = metrics["calibration"]["temperature"]
    val = scaled[scaled.split == "val"]
    logits = np.log(val.prob_fused / (1 - val.prob_fused)).to_numpy(np.float64)
    assert temperature == pytest.approx(fit_temperature(logits, val.label.to_numpy()), rel=1e-3)
    test = scaled[scaled.split == "test"]
    test_logits = np.log(test.prob_fused / (1 - test.prob_fused)).to_numpy(np.float64)
    np.testing.assert_allclose(test.prob_calibrated, 1 / (1 + np.exp(-test_logits / temperature)), atol=1e-4)
    assert metrics["calibration"]["ece_calibrated"]["test"] == pytest.approx(
        expected_calibration_error(test.label.to_numpy(), test.prob_calibrated.to_numpy())
    )
    assert "after T=" in (runs["scaled"] / "report.md").read_text()


def test_focal_loss_is_an_opt_in_that_changes_training(runs):
    focal = pd.read_parquet(runs["focal"] / "predictions.parquet")
    plain = pd.read_parquet(runs["plain"] / "predictions.parquet")
    assert not np.allclose(focal.prob_fused, plain.prob_fused)
    default = TrainConfig(task="t")
    assert "loss" not in optimisation_dict(default) and "loss" not in small_model_dict(default)
    changed = dataclasses.replace(default, loss="focal")
    assert optimisation_dict(changed)["loss"] == "focal" and small_model_dict(changed)["focal_gamma"] == 2.0


def test_focal_loss_formula_and_bce_when_gamma_is_zero():
    logits = torch.tensor([-2.0, -0.3, 0.4, 3.0])
    target = torch.tensor([0.0, 1.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=torch.tensor(3.0))
    assert torch.equal(task_loss(logits, target, 3.0), bce)
    p = torch.sigmoid(logits)
    p_t = torch.where(target == 1, p, 1 - p)
    torch.testing.assert_close(task_loss(logits, target, 3.0, focal_gamma=2.0), (1 - p_t) ** 2 * bce)


def test_youden_threshold_and_temperature_match_references():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0.001, 0.999)
    fpr, tpr, thresholds = roc_curve(y, p)
    assert youden_threshold(y, p) == pytest.approx(thresholds[1:][np.argmax((tpr - fpr)[1:])])
    logits = np.log(p / (1 - p)) * 3
    best = minimize_scalar(
        lambda t: np.mean(np.logaddexp(0, logits / t) - y * logits / t), bounds=(0.05, 20), method="bounded"
    )
    assert fit_temperature(logits, y) == pytest.approx(best.x, rel=1e-3)
    assert fit_temperature(logits, np.zeros(200)) == 1.0
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))
