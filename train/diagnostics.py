"""What the paper leaves open (supplement section 3), reported per run: attribution, imbalance, calibration.

- **Attribution**: per sample, the share of the fused logit that comes from the large path
  (``|w_L z_L| / (|w_L z_L| + |w_S z_S|)``), MoME's router weight per expert (modality subset), each
  modality's share of the router (an expert's weight split evenly over its modalities) and the attention each
  modality's token receives from the present tokens (mean over heads and present queries). All go into
  ``predictions.parquet``; :func:`attribution_table` averages them per class (test split) for the report.
- **Imbalance**: the threshold maximising Youden's J on validation, beside the macro-F1 one and 0.5.
- **Calibration**: expected calibration error and a reliability diagram; with ``temperature_scaling`` a
  temperature fitted on the validation split's fused logits gives ``prob_calibrated`` (reporting only: the
  fused probability and every metric at 0.5 stay as trained).

Everything here runs after training on the chosen model, so it never changes what a run trains or predicts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import TaskData
from .metrics import binary_metrics, calibration_bins, expected_calibration_error
from .runtime import autocast, batches

N_BINS = 10
CLASS_WORDS = {0: "label 0", 1: "label 1"}


def expert_names(modalities: list[str], subsets: list[tuple[int, ...]]) -> list[str]:
    """``xray+notes`` style names of MoME's experts, in the router's order."""
    return ["+".join(modalities[m] for m in subset) for subset in subsets]


@torch.no_grad()
def attribution_columns(
    model: Any, data: TaskData, idx: torch.Tensor, small_feat: torch.Tensor, batch_size: int, amp: bool
) -> dict[str, np.ndarray]:
    """Per-sample router weights, modality shares of the router and attention received, for the samples ``idx``.

    A separate pass under ``record_attention`` (the prediction pass does not ask for attention weights, so its
    numbers are exactly the trained model's). A sample without any large modality has NaN router and attention
    values: MoME does not run for it.
    """
    model.eval()
    mome = model.mome
    names = list(mome.modalities)
    experts = expert_names(names, mome.subsets)
    membership = mome.membership.float()  # [E, M]
    split_evenly = membership / membership.sum(1, keepdim=True)
    router_rows, share_rows, attention_rows = [], [], []
    mome.record_attention = True
    try:
        for batch in batches(idx, batch_size):
            present = data.present[batch].bool()
            with autocast(data.labels.device, amp):
                model(data.large_batch(batch), present, small_feat[batch])
            router = mome.last_router_weights.float()  # [B, E]
            attention = mome.last_attention.float()  # [B, M, M]
            queries = present.float()
            received = (attention * queries[:, :, None]).sum(1) / queries.sum(1, keepdim=True).clamp(min=1.0)
            empty = ~present.any(1)
            nan = torch.full_like(received, math.nan)
            router_rows.append(torch.where(empty[:, None], torch.full_like(router, math.nan), router))
            share_rows.append(torch.where(empty[:, None], nan, router @ split_evenly))
            attention_rows.append(torch.where(empty[:, None] | ~present, nan, received))
    finally:
        mome.record_attention = False
        mome.last_attention = None
    router = torch.cat(router_rows).cpu().numpy()
    share = torch.cat(share_rows).cpu().numpy()
    attention = torch.cat(attention_rows).cpu().numpy()
    columns: dict[str, np.ndarray] = {}
    for e, name in enumerate(experts):
        columns[f"router_{name}"] = router[:, e].astype(np.float32)
    for m, name in enumerate(names):
        columns[f"router_share_{name}"] = share[:, m].astype(np.float32)
    for m, name in enumerate(names):
        columns[f"attention_{name}"] = attention[:, m].astype(np.float32)
    return columns


def path_shares(
    large_logits: torch.Tensor, small_logits: torch.Tensor, w_large: float, w_small: float, available: torch.Tensor
) -> np.ndarray:
    """Per sample, the large path's share of the fused logit's magnitude (0 without a large modality, where the
    fused logit is the small one; 0.5 when both contributions are 0)."""
    large = (w_large * large_logits.float()).abs()
    small = (w_small * small_logits.float()).abs()
    total = large + small
    share = torch.where(total > 0, large / total.clamp(min=1e-12), torch.full_like(total, 0.5))
    return torch.where(available.bool(), share, torch.zeros_like(share)).cpu().numpy().astype(np.float32)


def attribution_table(predictions: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Mean attribution values per class (and over all) on ``split``: one row per class, columns ``n``,
    ``share_large`` and every ``router_share_*`` and ``attention_*`` column (NaNs skipped)."""
    frame = predictions[predictions.split == split]
    columns = ["share_large"] + [
        c for c in predictions.columns if c.startswith("router_share_") or c.startswith("attention_")
    ]
    rows = []
    for name, part in [(CLASS_WORDS[k], frame[frame.label == k]) for k in (0, 1)] + [("all", frame)]:
        rows.append({"class": name, "n": len(part), **{c: float(part[c].mean()) for c in columns}})
    return pd.DataFrame(rows)


def attribution_plot(table: pd.DataFrame) -> Any:
    """Bars per modality (router share and attention received) for each class, and the large-path share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = table[table["class"] != "all"]
    router = [c for c in table.columns if c.startswith("router_share_")]
    attention = [c for c in table.columns if c.startswith("attention_")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [len(router), len(attention), 1]})
    for ax, cols, prefix, title in (
        (axes[0], router, "router_share_", "MoME router share per modality"),
        (axes[1], attention, "attention_", "attention received per modality"),
        (axes[2], ["share_large"], "", "large path's share of the logit"),
    ):
        width = 0.8 / max(len(classes), 1)
        positions = np.arange(len(cols))
        for k, (_, row) in enumerate(classes.iterrows()):
            ax.bar(positions + k * width, [row[c] for c in cols], width, label=f"{row['class']} (n={row['n']})")
        ax.set_xticks(positions + width * (len(classes) - 1) / 2)
        ax.set_xticklabels([c.removeprefix(prefix) or c for c in cols], rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Modality attribution (test split, mean per class)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------ calibration
def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the BCE of ``sigmoid(logits / T)`` (golden-section search on log T in
    [1/20, 20]; deterministic). 1 when the labels hold one class (nothing to fit)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(labels) == 0 or labels.min() == labels.max():
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    low, high = math.log(1 / 20), math.log(20)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(math.exp((low + high) / 2))


def calibration_summary(predictions: pd.DataFrame, temperature: float | None) -> dict[str, Any]:
    """ECE and reliability bins of the fused probability per split (val, test), and after temperature scaling
    when a temperature was fitted."""
    summary: dict[str, Any] = {"n_bins": N_BINS, "temperature": temperature, "ece": {}, "bins": {}}
    if temperature is not None:
        summary["ece_calibrated"] = {}
    for split in ("val", "test"):
        part = predictions[predictions.split == split]
        y = part.label.to_numpy()
        summary["ece"][split] = expected_calibration_error(y, part.prob_fused.to_numpy(), N_BINS)
        summary["bins"][split] = calibration_bins(y, part.prob_fused.to_numpy(), N_BINS)
        if temperature is not None:
            summary["ece_calibrated"][split] = expected_calibration_error(y, part.prob_calibrated.to_numpy(), N_BINS)
    return summary


def calibrated_metrics(predictions: pd.DataFrame) -> dict[str, Any]:
    """Test metrics of ``prob_calibrated`` at 0.5 (ranking metrics equal the raw ones: T > 0 keeps the order)."""
    test = predictions[predictions.split == "test"]
    return binary_metrics(test.label.to_numpy(), test.prob_calibrated.to_numpy(), 0.5)


def reliability_plot(predictions: pd.DataFrame, calibrated: bool) -> Any:
    """Observed positive rate against mean predicted probability per bin (val and test), with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("prob_fused", "fused")] + ([("prob_calibrated", "temperature-scaled")] if calibrated else [])
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 4.2), squeeze=False)
    for ax, (column, word) in zip(axes[0], columns):
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        for split, marker in (("val", "s"), ("test", "o")):
            part = predictions[predictions.split == split]
            y, p = part.label.to_numpy(), part[column].to_numpy()
            bins = calibration_bins(y, p, N_BINS)
            keep = np.asarray(bins["count"]) > 0
            ece = expected_calibration_error(y, p, N_BINS)
            ax.plot(
                np.asarray(bins["mean_prob"])[keep],
                np.asarray(bins["positive_rate"])[keep],
                marker=marker,
                label=f"{split} (ECE {ece:.3f}, n={len(y)})",
            )
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed positive rate")
        ax.set_title(f"Reliability ({word}, {N_BINS} bins)", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    return fig
