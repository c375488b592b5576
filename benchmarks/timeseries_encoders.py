"""Is Fracast-0 a sound real-weights series encoder? Forecast accuracy, label signal of its embedding, and cost.

Fracast-0's weights ship on PyPI (the ``fracast`` package), MOIRAI's do not, so the demo and CI could use it the
way they use MiniLM for text. Three measurements, all in this one process:

1. **Forecasts** (are the weights real?): 50 synthetic hourly series with a daily cycle, trend and noise; the
   median of Fracast's 48 h forecast from 240 h of context against the last value and the seasonal-naive
   forecast (repeat the last day). Mean absolute error, lower is better.
2. **Label signal** (does the embedding carry information?): the demo cohort's 48 h series embedded by
   ``fracast-0`` (real weights), by ``moirai-large`` with random weights (tiny-random: the architecture without
   training), by the grid Fracast itself sees (min-max normalised values, flattened) and by random noise; 5 x 5
   cross-validated logistic regression AUROC for in-hospital mortality. The per-variable mean of the raw values
   (levels, which both encoders normalise away) is listed as the ceiling of what the data holds.
3. **Cost**: CPU seconds per sample of ``fracast-0`` (12 variables, each a 2048-step context) and of MOIRAI-large's
   architecture at full size (random weights, 1024-d, 24 layers) on the same grids.

    python benchmarks/timeseries_encoders.py [--subjects 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adacomed.cache_schema import Manifest
from adacomed.extract.encoders import TINY_RANDOM, create_encoder
from adacomed.extract.readers import create_reader
from adacomed.pipelines.datasets.demo import build_demo_cohort

RESULTS = Path(__file__).parent / "results" / "timeseries_encoders.json"


def forecast_errors(series_count: int = 50) -> dict[str, float]:
    from fracast import FracastModel

    model = FracastModel.from_pretrained(weights="fp32")
    rng = np.random.default_rng(0)
    errors: dict[str, list[float]] = {"fracast_median": [], "last_value": [], "seasonal_naive": []}
    for _ in range(series_count):
        t = np.arange(240 + 48)
        series = 10 + 3 * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6.3)) + 0.02 * rng.normal() * t
        series = series + rng.normal(0, 0.5, t.size)
        context, future = series[:240], series[240:]
        median = model.forecast(context.astype(np.float32), horizon=48)[:, 4]  # quantile 0.5
        errors["fracast_median"].append(float(np.abs(median - future).mean()))
        errors["last_value"].append(float(np.abs(context[-1] - future).mean()))
        errors["seasonal_naive"].append(float(np.abs(np.tile(context[-24:], 2) - future).mean()))
    return {name: float(np.mean(values)) for name, values in errors.items()}


def cross_validated_auroc(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for seed in range(5):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        predicted = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
        scores.append(roc_auc_score(labels, predicted))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores))}


def embed(name: str, weights: str | None, grids: list, batch: int = 16) -> tuple[np.ndarray, float]:
    encoder = create_encoder(name, weights=weights)
    encoder.encode_samples([encoder.prepare(grids[0])], 1)  # load the model outside the timing
    started = time.process_time()
    rows = [
        encoder.encode_samples([encoder.prepare(g) for g in grids[i : i + batch]], batch).embeddings
        for i in range(0, len(grids), batch)
    ]
    return np.concatenate(rows), (time.process_time() - started) / len(grids)


def full_size_moirai_seconds(grids: list) -> float:
    """CPU seconds per sample of MOIRAI-large's architecture (random weights saved in the released layout)."""
    from safetensors.torch import save_file

    from adacomed.extract.encoders.moirai_net import MoiraiConfig, MoiraiEncoder

    with tempfile.TemporaryDirectory() as folder:
        config = {"d_model": 1024, "num_layers": 24, "patch_sizes": [8, 16, 32, 64, 128], "max_seq_len": 512}
        save_file(MoiraiEncoder(MoiraiConfig(**{**config, "patch_sizes": (8, 16, 32, 64, 128)})).state_dict(),
                  f"{folder}/model.safetensors")  # fmt: skip
        Path(folder, "config.json").write_text(json.dumps(config))
        _, seconds = embed("moirai-large", folder, grids)
    return seconds


def normalised_grid(series) -> np.ndarray:
    out = np.zeros(series.values.shape, np.float64)
    for column in range(series.values.shape[1]):
        seen = series.observed[:, column]
        if seen.any():
            low, high = series.values[seen, column].min(), series.values[seen, column].max()
            out[:, column] = np.where(seen, (series.values[:, column] - low) / max(high - low, 1e-5), 0.0)
    return out.reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)

    result: dict = {"forecast_mae_48h": forecast_errors()}
    print("forecast MAE over 48 h:", result["forecast_mae_48h"])

    with tempfile.TemporaryDirectory() as folder:
        path = build_demo_cohort(Path(folder), subjects=args.subjects, modalities=["timeseries"], show_progress=False)
        manifest = Manifest.read(path)
        items = manifest.modality_items("timeseries")
        reader = create_reader("timeseries")
        grids = [reader.read(pointer) for _, pointer in items]
    labels = manifest.labels("mortality").loc[[sample for sample, _ in items]].to_numpy()
    keep = ~np.isnan(labels)
    labels, grids = labels[keep].astype(int), [g for g, k in zip(grids, keep) if k]

    fracast, fracast_seconds = embed("fracast-0", None, grids)
    moirai_random, _ = embed("moirai-large", TINY_RANDOM, grids)
    levels = np.stack([np.where(g.observed, g.values, 0).sum(0) / np.maximum(g.observed.sum(0), 1) for g in grids])
    features = {
        "fracast-0 (real weights, 64-d)": fracast,
        "moirai-large architecture, tiny-random (64-d)": moirai_random,
        "Fracast's own input: min-max normalised grid (576-d)": np.stack([normalised_grid(g) for g in grids]),
        "random noise (64-d)": np.random.default_rng(1).normal(size=(len(grids), 64)),
        "ceiling: mean raw value per variable (12-d, levels)": levels,
    }
    result["mortality_auroc_5x5cv"] = {name: cross_validated_auroc(x, labels) for name, x in features.items()}
    result["cohort"] = {"subjects": args.subjects, "samples": len(grids), "positives": int(labels.sum())}
    for name, score in result["mortality_auroc_5x5cv"].items():
        print(f"  {name:55s} AUROC {score['mean']:.3f} +- {score['std']:.3f}")

    result["cpu_seconds_per_sample"] = {
        "fracast-0 (12 variables x 2048-step context)": fracast_seconds,
        "moirai-large, full size 1024-d x 24 layers (random weights)": full_size_moirai_seconds(grids[:32]),
    }
    result["torch_threads"] = 2
    result["note"] = "measured on a shared 2-core machine; CPU seconds, not wall time"
    print("CPU seconds per sample:", result["cpu_seconds_per_sample"])
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
