"""``cohort_summary.json`` and ``cohort_summary.md``: sizes and positive rates beside the paper's Table 4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ....cache_schema.atomic import atomic_write_bytes, atomic_write_json

TASK_NAMES = ("mortality", "longstay", "readmission")
# Supplement Table 4 (subjects per task and positive:negative ratio).
PAPER_TABLE4 = {
    "mortality": {"subjects": 11483, "pos_neg": "1:6.6"},
    "longstay": {"subjects": 10069, "pos_neg": "1.5:1"},
    "readmission": {"subjects": 11483, "pos_neg": "1:22.5"},
}


def pos_neg_ratio(positive: int, negative: int) -> str:
    """The paper's notation: ``1:6.6`` when negatives dominate, ``1.5:1`` when positives do."""
    if positive == 0 or negative == 0:
        return f"{positive}:{negative}"
    if positive >= negative:
        return f"{positive / negative:.1f}:1"
    return f"1:{negative / positive:.1f}"


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """Counts per task, modality and split from a written manifest table."""
    tasks = {}
    for task in TASK_NAMES:
        labels = table[f"label_{task}"]
        labelled = labels.notna()
        positive, negative = int((labels == 1).sum()), int((labels == 0).sum())
        tasks[task] = {
            "admissions": int(labelled.sum()),
            "subjects": int(table.loc[labelled, "subject_id"].nunique()),
            "positive": positive,
            "negative": negative,
            "excluded": int((~labelled).sum()),
            "positive_rate": round(positive / max(positive + negative, 1), 4),
            "pos_neg": pos_neg_ratio(positive, negative),
        }
    has_xray = table["xray_path"].notna()
    has_notes = table["note_text"].notna()
    has_events = table["timeseries_observations"] > 0
    return {
        "admissions": len(table),
        "subjects": int(table["subject_id"].nunique()),
        "tasks": tasks,
        "paper_table4": PAPER_TABLE4,
        "modalities": {
            "xray": int(has_xray.sum()),
            "notes": int(has_notes.sum()),
            "timeseries_with_events": int(has_events.sum()),
            "all_three": int((has_xray & has_notes & has_events).sum()),
        },
        "splits": {
            split: {"admissions": int((table["split"] == split).sum()), "subjects": int(group["subject_id"].nunique())}
            for split, group in table.groupby("split")
        },
        "median_los_days": float(np.nanmedian(table["los_days"])) if len(table) else None,
    }


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# MIMIC-IV-MM cohort summary",
        "",
        f"{summary['admissions']} admissions of {summary['subjects']} subjects. Settings: "
        + ", ".join(f"{k}={v}" for k, v in summary["settings"].items()),
        "",
        "| task | admissions | subjects | positive | negative | excluded | pos:neg | paper subjects | paper pos:neg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, row in summary["tasks"].items():
        paper = PAPER_TABLE4[task]
        lines.append(
            f"| {task} | {row['admissions']} | {row['subjects']} | {row['positive']} | {row['negative']} | "
            f"{row['excluded']} | {row['pos_neg']} | {paper['subjects']:,} | {paper['pos_neg']} |"
        )
    lines += ["", "| modality | admissions |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in summary["modalities"].items()]
    lines += ["", "| split | admissions | subjects |", "|---|---|---|"]
    lines += [f"| {name} | {row['admissions']} | {row['subjects']} |" for name, row in summary["splits"].items()]
    lines += ["", "Exclusions: " + ", ".join(f"{k}={v}" for k, v in summary["exclusions"].items()), ""]
    lines += [
        "Notes: labels, windows and boundaries are defined in `adacomed.pipelines.mimic_cohort`; discharge",
        "summaries are charted at discharge, so inside the window the notes are radiology reports unless",
        "`note_types` says otherwise. Admissions without an X-ray in the window keep an empty `xray_path`.",
        "",
    ]
    return "\n".join(lines)


def write_summary(
    out: Path,
    table: pd.DataFrame,
    settings: dict[str, Any],
    exclusions: dict[str, int],
    streaming: dict[str, Any],
) -> dict[str, Any]:
    """Write both summary files into ``out`` (atomically) and return the summary."""
    summary = {"cohort": "mimic-iv-mm", "settings": settings, **summarise(table), "exclusions": exclusions}
    summary["streaming"] = streaming
    atomic_write_json(Path(out) / "cohort_summary.json", summary)
    atomic_write_bytes(Path(out) / "cohort_summary.md", _markdown(summary).encode())
    return summary
