"""A run's outputs: metrics.json, predictions.parquet, history.json, report.md with ROC/PR/weight plots, a table.

Test metrics are reported at the default threshold 0.5 and at the threshold chosen on validation (the one that
maximises validation macro F1, :func:`choose_threshold`), so a tuned operating point never peeks at test.
Every split is scored under the same frozen deployed fusion weights (the chosen epoch's train-epoch mean, see
:mod:`adacomed.train.cotrain`): the threshold is chosen on validation and applied to test under one fused model.
The report says how the epoch was chosen and repeats the warnings the run started with (a degenerate preset).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from ..cache_schema.atomic import atomic_write_bytes, atomic_write_json
from .diagnostics import (
    attribution_plot,
    attribution_table,
    calibrated_metrics,
    calibration_summary,
    fit_temperature,
    path_shares,
    reliability_plot,
)
from .metrics import EXTRA_METRIC_NAMES, METRIC_NAMES, binary_metrics, choose_threshold, youden_threshold

PLOTS = ("roc.png", "pr.png", "weights.png", "reliability.png", "attribution.png")
SELECTION_WORDS = {
    "val_loss": "lowest validation loss (BCE of the fused prediction)",
    "val_auroc": "highest validation AUROC",
}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _auroc(labels: np.ndarray, prob: np.ndarray) -> float:
    return binary_metrics(labels, prob)["auroc"]


def build_predictions(data: Any, outputs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per labelled sample: label, the three probabilities and the fusion weights its split used; then
    the attribution columns (:mod:`adacomed.train.diagnostics`): both paths' logits, the large path's share of
    the fused logit, router weights per expert, router share and attention received per modality."""
    frames = []
    for split, out in outputs.items():
        idx = data.index[split].cpu().numpy()
        frame = pd.DataFrame(
            {
                "sample_id": [data.sample_ids[i] for i in idx],
                "split": split,
                "label": data.labels.cpu().numpy()[idx].astype(np.float32),
                "prob_large": torch.sigmoid(out["large_logits"]).cpu().numpy().astype(np.float32),
                "prob_small": torch.sigmoid(out["small_logits"]).cpu().numpy().astype(np.float32),
                "prob_fused": out["prob_fused"].float().cpu().numpy().astype(np.float32),
                "w_large": np.float32(out["w_large"]),
                "w_small": np.float32(out["w_small"]),
            }
        )
        if "attribution" in out:
            available = data.present[data.index[split]].bool().any(1)
            frame["logit_large"] = out["large_logits"].float().cpu().numpy().astype(np.float32)
            frame["logit_small"] = out["small_logits"].float().cpu().numpy().astype(np.float32)
            frame["share_large"] = path_shares(
                out["large_logits"], out["small_logits"], out["w_large"], out["w_small"], available
            )
            for name, values in out["attribution"].items():
                frame[name] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def build_metrics(
    config: Any,
    predictions: pd.DataFrame,
    outputs: dict[str, dict[str, Any]],
    small_model_prob: dict[str, np.ndarray],
    best_epoch: int,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    deployed = {(o["w_large"], o["w_small"]) for o in outputs.values()}
    if len(deployed) != 1:
        raise ValueError(f"every split must be scored under the same deployed fusion weights; got {sorted(deployed)}")
    w_large, w_small = deployed.pop()
    val = predictions[predictions.split == "val"]
    test = predictions[predictions.split == "test"]
    threshold = choose_threshold(val.label.to_numpy(), val.prob_fused.to_numpy())
    youden = youden_threshold(val.label.to_numpy(), val.prob_fused.to_numpy())
    per_path = {}
    for split, frame in (("val", val), ("test", test)):
        y = frame.label.to_numpy()
        per_path[split] = {
            "fused": _auroc(y, frame.prob_fused.to_numpy()),
            "large": _auroc(y, frame.prob_large.to_numpy()),
            "small": _auroc(y, frame.prob_small.to_numpy()),
            "small_model_stage_a": _auroc(y, small_model_prob[split]),
        }
    return {
        "task": config.task,
        "weighting": config.weighting,
        "seed": config.seed,
        "best_epoch": best_epoch,
        "selection": (notes or {}).get("selection", "val_loss"),
        "warnings": list((notes or {}).get("warnings", [])),
        "val_threshold": threshold,
        "thresholds": {"max_f1": threshold, "youden": youden},
        "test": {
            "at_0.5": binary_metrics(test.label, test.prob_fused, 0.5),
            "at_val_threshold": binary_metrics(test.label, test.prob_fused, threshold),
            "at_youden": binary_metrics(test.label, test.prob_fused, youden),
        },
        "val": {
            "at_0.5": binary_metrics(val.label, val.prob_fused, 0.5),
            "at_val_threshold": binary_metrics(val.label, val.prob_fused, threshold),
            "at_youden": binary_metrics(val.label, val.prob_fused, youden),
        },
        "auroc": per_path,
        "deployed_weights": {"w_large": w_large, "w_small": w_small},
        "weights": {
            s: {"w_large": o["w_large"], "w_small": o["w_small"], "sim_mean": o["sim_mean"]} for s, o in outputs.items()
        },
        "n": {s: int((predictions.split == s).sum()) for s in ("train", "val", "test")},
        "n_positive": {s: int(predictions.label[predictions.split == s].sum()) for s in ("train", "val", "test")},
    }


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _write_figure(path: Path, fig: Any) -> None:
    import matplotlib.pyplot as plt

    atomic_write_bytes(path, _png(fig))
    plt.close(fig)


def write_plots(run_dir: Path, predictions: pd.DataFrame, history: list[dict[str, Any]]) -> None:
    """ROC and PR curves on test (fused, large, small) and the fusion weights per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    test = predictions[predictions.split == "test"]
    y = test.label.to_numpy()
    curves = {"fused": test.prob_fused, "large": test.prob_large, "small": test.prob_small}
    for name, kind in (("roc.png", "roc"), ("pr.png", "pr")):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for label, prob in curves.items():
            if len(np.unique(y)) < 2:
                break
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, prob)
                ax.plot(fpr, tpr, label=f"{label} (AUROC {_auroc(y, prob.to_numpy()):.3f})")
            else:
                precision, recall, _ = precision_recall_curve(y, prob)
                ax.plot(recall, precision, label=label)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
        else:
            ax.axhline(float(y.mean()) if len(y) else 0.0, color="k", linestyle=":", linewidth=0.8)
            ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
        ax.legend(loc="best", fontsize=8)
        atomic_write_bytes(run_dir / name, _png(fig))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["w_large"] for h in history], label="w_large (deployed)")
    ax.plot(epochs, [h["w_small"] for h in history], label="w_small (deployed)")
    ax.plot(epochs, [h["sim_mean"] for h in history], "--", label="sim (train mean)")
    ax.set(xlabel="epoch", ylabel="weight / similarity", title="Fusion weights", ylim=(-0.02, 1.02))
    ax.legend(loc="best", fontsize=8)
    atomic_write_bytes(run_dir / "weights.png", _png(fig))
    plt.close(fig)


TABLE_NAMES = METRIC_NAMES + EXTRA_METRIC_NAMES


def _threshold_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(row label, key of metrics['test']) for 0.5, the validation-chosen thresholds and the calibrated one."""
    rows = [("0.5", "at_0.5"), (f"val max-F1 {metrics['val_threshold']:.3f}", "at_val_threshold")]
    if "at_youden" in metrics["test"]:
        rows.append((f"val Youden {metrics['thresholds']['youden']:.3f}", "at_youden"))
    if "calibrated_at_0.5" in metrics["test"]:
        rows.append((f"0.5 after T={metrics['calibration']['temperature']:.3f}", "calibrated_at_0.5"))
    return rows


def metrics_table(metrics: dict[str, Any], title: str = "test metrics") -> Table:
    table = Table(title=title)
    table.add_column("threshold")
    for name in TABLE_NAMES:
        table.add_column(name, justify="right")
    for label, key in _threshold_rows(metrics):
        table.add_row(label, *(_fmt(metrics["test"][key].get(m)) for m in TABLE_NAMES))
    return table


def _beyond_the_paper(metrics: dict[str, Any], plots: bool) -> list[str]:
    """Calibration and attribution sections (absent from metrics written before they existed)."""
    lines: list[str] = []
    calibration = metrics.get("calibration")
    if calibration:
        ece = calibration["ece"]
        bins = calibration["n_bins"]
        text = f"Expected calibration error ({bins} bins): val {_fmt(ece['val'])}, test {_fmt(ece['test'])}"
        if calibration.get("temperature") is not None:
            after = calibration["ece_calibrated"]
            text += (
                f"; after temperature scaling fitted on validation (T = {calibration['temperature']:.3f}): "
                f"val {_fmt(after['val'])}, test {_fmt(after['test'])}"
            )
        lines += ["## Calibration", "", text + ".", ""]
        if plots:
            lines += ["![reliability](reliability.png)", ""]
    table = metrics.get("attribution")
    if table:
        columns = [c for c in table[0] if c not in ("class", "n")]
        lines += [
            "## Modality attribution (test split, mean per class)",
            "",
            "share_large: the large path's share of the fused logit; router_share: MoME's router weight of each "
            "modality (an expert's weight split over its modalities); attention: attention its token receives. "
            "Per-sample values are in `predictions.parquet`, this table in `attribution.csv`.",
            "",
            "| class | n | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for row in table:
            lines.append(f"| {row['class']} | {row['n']} | " + " | ".join(_fmt(row[c]) for c in columns) + " |")
        lines.append("")
        if plots:
            lines += ["![attribution](attribution.png)", ""]
    return lines


def report_markdown(metrics: dict[str, Any], plots: bool = True) -> str:
    rows = ["| threshold | " + " | ".join(TABLE_NAMES) + " |", "|---" * (len(TABLE_NAMES) + 1) + "|"]
    for label, key in _threshold_rows(metrics):
        rows.append(f"| {label} | " + " | ".join(_fmt(metrics["test"][key].get(m)) for m in TABLE_NAMES) + " |")
    paths = metrics["auroc"]
    auroc_rows = [
        "| split | fused | large | small (co-trained head) | small model (stage a) |",
        "|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        p = paths[split]
        auroc_rows.append(
            f"| {split} | " + " | ".join(_fmt(p[k]) for k in ("fused", "large", "small", "small_model_stage_a")) + " |"
        )
    w = metrics["weights"]["test"]
    selection = SELECTION_WORDS.get(metrics.get("selection"), str(metrics.get("selection")))
    warning_lines = [f"> **Warning:** {message}" for message in metrics.get("warnings", [])]
    return "\n".join(
        [
            f"# AdaCoMed run: task `{metrics['task']}`, weighting `{metrics['weighting']}`, seed {metrics['seed']}",
            "",
            *(line for message in warning_lines for line in (message, "")),
            f"Chosen co-training epoch: {metrics['best_epoch']} ({selection}). "
            f"Samples: {metrics['n']} (positives {metrics['n_positive']}).",
            "",
            "## Test metrics (fused prediction)",
            "",
            *rows,
            "",
            "## AUROC per path",
            "",
            *auroc_rows,
            "",
            f"Deployed fusion weights (mean over the chosen epoch's training steps, used for every split and "
            f"patient): w_large {w['w_large']:.3f}, w_small {w['w_small']:.3f} (test batches' mean sim "
            f"{w['sim_mean']:.3f}, a diagnostic).",
            "",
            *(
                [
                    "## Curves",
                    "",
                    "![ROC](roc.png) ![PR](pr.png)",
                    "",
                    "## Fusion weights per epoch",
                    "",
                    "![weights](weights.png)",
                    "",
                ]
                if plots
                else []
            ),
            *_beyond_the_paper(metrics, plots),
        ]
    )


def write_outputs(
    run_dir: Path,
    config: Any,
    data: Any,
    outputs: dict[str, dict[str, Any]],
    small_logits: torch.Tensor,
    history: list[dict[str, Any]],
    best_epoch: int,
    console: Console,
    notes: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Write predictions, metrics, history, plots and report.md; print the metrics table."""
    predictions = build_predictions(data, outputs)
    small_prob = {s: torch.sigmoid(small_logits[data.index[s]]).cpu().numpy() for s in ("val", "test")}
    metrics = build_metrics(config, predictions, outputs, small_prob, best_epoch, notes)
    temperature = None
    if getattr(config, "temperature_scaling", False) and "fused_logits" in outputs.get("val", {}):
        val = outputs["val"]
        temperature = fit_temperature(
            val["fused_logits"].float().cpu().numpy(), predictions.label[predictions.split == "val"]
        )
        logits = np.concatenate([outputs[s]["fused_logits"].float().cpu().numpy() for s in outputs])
        predictions["prob_calibrated"] = (1.0 / (1.0 + np.exp(-logits / temperature))).astype(np.float32)
        metrics["test"]["calibrated_at_0.5"] = calibrated_metrics(predictions)
    metrics["calibration"] = calibration_summary(predictions, temperature)
    attribution = attribution_table(predictions) if "share_large" in predictions.columns else None
    if attribution is not None:
        metrics["attribution"] = attribution.to_dict(orient="records")
        atomic_write_bytes(run_dir / "attribution.csv", attribution.to_csv(index=False).encode())
    metrics = _clean(metrics)
    buffer = io.BytesIO()
    predictions.to_parquet(buffer, index=False)
    atomic_write_bytes(run_dir / "predictions.parquet", buffer.getvalue())
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_json(run_dir / "history.json", _clean(history))
    plots = getattr(config, "plots", True)
    if plots:
        write_plots(run_dir, predictions, history)
        _write_figure(run_dir / "reliability.png", reliability_plot(predictions, temperature is not None))
        if attribution is not None:
            _write_figure(run_dir / "attribution.png", attribution_plot(attribution))
    atomic_write_bytes(run_dir / "report.md", report_markdown(metrics, plots).encode())
    console.print(metrics_table(metrics, f"{config.task} / {config.weighting}: test metrics"))
    console.print(
        f"outputs in {run_dir} (chosen epoch {best_epoch}); "
        + json.dumps({k: round(v, 4) if v is not None else None for k, v in metrics["auroc"]["test"].items()})
    )
    return metrics, predictions
