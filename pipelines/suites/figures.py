"""The suites' PNG figures: radar panels (data ratio, the supplement's Figures 1-2), sweep lines (ablation),
per-seed spread (stability). Each takes the suite's summary table and returns PNG bytes (written atomically by
the caller), so every number drawn is one of the table's."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .evaluation import METRICS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def radar_panels(table: pd.DataFrame, panel: str, series: str, metrics: Sequence[str] = METRICS) -> bytes:
    """One polar panel per value of ``panel`` (a training ratio), one closed polygon per ``series`` (a method),
    ``metrics`` as the axes (their ``<metric>_mean`` columns); radial axis 0-1 with rings every 0.2."""
    plt = _pyplot()
    panels = list(dict.fromkeys(table[panel]))
    methods = list(dict.fromkeys(table[series]))
    angles = np.linspace(0, 2 * math.pi, len(metrics), endpoint=False)
    closed = np.r_[angles, angles[:1]]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 4.0), subplot_kw={"projection": "polar"}, squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for ax, value in zip(axes[0], panels):
        part = table[table[panel] == value]
        for k, method in enumerate(methods):
            row = part[part[series] == method]
            if row.empty:
                continue
            values = row.iloc[0][[f"{m}_mean" for m in metrics]].to_numpy(float)
            ax.plot(closed, np.r_[values, values[:1]], color=colours(k % 10), linewidth=1.4, label=str(method))
            ax.fill(closed, np.r_[values, values[:1]], color=colours(k % 10), alpha=0.08)
        ax.set_xticks(angles)
        ax.set_xticklabels(list(metrics), fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.2, 0.4, 0.6, 0.8])
        ax.set_yticklabels(["0.2", "0.4", "0.6", "0.8"], fontsize=6)
        ax.set_title(f"{panel} {value:g}" if isinstance(value, float) else f"{panel} {value}", fontsize=10, pad=14)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 4), fontsize=8, bbox_to_anchor=(0.5, -0.06))
    return _png(fig)


def sweep_lines(
    table: pd.DataFrame, x: str, metrics: Sequence[str] = METRICS, log2: bool = False, title: str = ""
) -> bytes:
    """Each metric's mean (± std as a band) against the swept value ``x``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = table[x].to_numpy(float)
    for metric in metrics:
        mean, std = table[f"{metric}_mean"].to_numpy(float), table[f"{metric}_std"].to_numpy(float)
        ax.plot(xs, mean, marker="o", label=metric)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.12)
    if log2:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
    ax.set(xlabel=x, ylabel="test metric (mean ± std over runs)", ylim=(0, 1), title=title)
    ax.legend(fontsize=8, ncol=3, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def method_bars(table: pd.DataFrame, series: str, metrics: Sequence[str] = METRICS, title: str = "") -> bytes:
    """Grouped bars: each metric's mean (error bar: std) per method."""
    plt = _pyplot()
    methods = list(table[series])
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(metrics) * max(len(methods), 1) / 3), 4.0))
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(metrics))
    for k, (_, row) in enumerate(table.iterrows()):
        ax.bar(
            positions + k * width,
            [row[f"{m}_mean"] for m in metrics],
            width,
            yerr=[row[f"{m}_std"] for m in metrics],
            label=str(row[series]),
            capsize=2,
        )
    ax.set_xticks(positions + width * (len(methods) - 1) / 2)
    ax.set_xticklabels(list(metrics))
    ax.set(ylim=(0, 1), ylabel="test metric (mean ± std over runs)", title=title)
    ax.legend(fontsize=7, ncol=min(len(methods), 4), loc="lower right")
    return _png(fig)


def seed_spread(runs: pd.DataFrame, by: str, metrics: Sequence[str] = METRICS, title: str = "") -> bytes:
    """Every run's value of each metric (one dot per ``by``, e.g. seed), with the mean as a bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, metric in enumerate(metrics):
        values = runs[metric].to_numpy(float)
        ax.scatter(np.full(len(values), k) + np.linspace(-0.15, 0.15, len(values)), values, s=16, zorder=3)
        ax.hlines(np.nanmean(values), k - 0.3, k + 0.3, color="k", linewidth=1.2)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(list(metrics))
    ax.set(ylim=(0, 1), ylabel=f"test metric per run (line: mean over {by}s)", title=title)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
