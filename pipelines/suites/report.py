"""A suite's ``report.md``: the command, the cohort, its tables (Markdown here, CSV beside) and PNG figures, and
a table linking every run folder. Every file is written atomically; links are relative to the report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...cache_schema.atomic import atomic_write_bytes, atomic_write_text
from .runs import runs_markdown


@dataclass
class Section:
    """One heading of a report: Markdown text, tables saved as CSV (name -> frame) and figures (name -> PNG)."""

    heading: str
    markdown: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)


def write_suite_report(
    report: Path,
    title: str,
    intro: Sequence[str],
    sections: Sequence[Section],
    runs: pd.DataFrame,
    run_labels: Sequence[str],
) -> Path:
    """Write ``report`` and, beside it, ``<stem>_<name>.csv`` / ``<stem>_<name>.png`` for each table and figure,
    plus ``<stem>_runs.csv`` (every run's metrics and folder)."""
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    stem = report.stem
    lines = [f"# {title}", "", *(f"{line}\n" for line in intro)]
    for section in sections:
        lines += [f"## {section.heading}", "", section.markdown, ""]
        for name, frame in section.tables.items():
            path = report.with_name(f"{stem}_{name}.csv")
            atomic_write_text(path, frame.to_csv(index=False))
            lines.append(f"Table as CSV: [{path.name}]({path.name})")
        for name, png in section.figures.items():
            path = report.with_name(f"{stem}_{name}.png")
            atomic_write_bytes(path, png)
            lines += ["", f"![{name}]({path.name})"]
        lines.append("")
    runs_csv = report.with_name(f"{stem}_runs.csv")
    relative = runs.assign(run=[Path(_relative(p, report.parent)).as_posix() for p in runs["run"]])
    atomic_write_text(runs_csv, relative.to_csv(index=False))
    lines += [
        "## Runs",
        "",
        f"Every run's folder (its own `report.md`, `metrics.json`, `predictions.parquet`); all metrics in "
        f"[{runs_csv.name}]({runs_csv.name}).",
        "",
        runs_markdown(runs, report.parent, run_labels),
        "",
    ]
    atomic_write_text(report, "\n".join(lines))
    return report


def _relative(path: str, start: Path) -> str:
    import os

    return os.path.relpath(path, start)
