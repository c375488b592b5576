"""Data ratio (the supplement's Figures 1-2): every method trained on stratified fractions of each fold's
training part (same validation and test), radar panels of the six metrics, one panel per ratio."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ...cache_schema import Manifest
from .compare import cohort_lines, make_folds, method_name
from .evaluation import BASELINES, METRICS, applicable_baselines, run_baselines
from .figures import radar_panels
from .report import Section, write_suite_report
from .runs import (
    Clock,
    RunSpec,
    SuiteContext,
    command_line,
    markdown_table,
    run_table,
    subsample_train,
    summary_table,
)


def data_ratio(
    context: SuiteContext,
    ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    weightings: Sequence[str] = ("inverse",),
    baselines: Sequence[str] = BASELINES,
    protocol: str = "official",
    n_splits: int = 5,
    n_repeats: int = 1,
    report: Path | None = None,
    command: str | None = None,
) -> Path:
    """AdaCoMed (each weighting) and the baselines that apply, per training ratio; writes the report."""
    if not ratios:
        raise ValueError("no ratios given")
    clock = Clock()
    manifest = Manifest.read(context.manifest_path)
    folds = make_folds(manifest, context.task, protocol, n_splits, n_repeats, seed=0)
    runnable, skipped = applicable_baselines(manifest, baselines)
    specs, baseline_rows = [], []
    for ratio in ratios:
        cut = [subsample_train(manifest, context.task, fold, ratio) for fold in folds]
        for weighting in dict.fromkeys(weightings):
            config = context.base_config(weighting)
            method = method_name(weighting)
            specs += [RunSpec(f"ratio-{ratio:g}/{method}", f, config, {"ratio": ratio, "method": method}) for f in cut]
        if runnable:
            scored = run_baselines(manifest, context.task, cut, methods=runnable)
            baseline_rows.append(scored.assign(ratio=ratio))
    runs = run_table(context, specs, "data-ratio")
    rows = [runs[["ratio", "method", "fold", *METRICS, "BalAcc"]]]
    rows += [frame[["ratio", "method", "fold", *METRICS, "BalAcc"]] for frame in baseline_rows]
    every = pd.concat(rows, ignore_index=True).sort_values("ratio", kind="stable")
    columns = (*METRICS, "BalAcc")
    table = summary_table(every, ["ratio", "method"], columns)
    train_sizes = {
        ratio: sorted({len(subsample_train(manifest, context.task, f, ratio).train) for f in folds}) for ratio in ratios
    }
    report = Path(report) if report is not None else context.out / "report.md"
    intro = [
        *cohort_lines(manifest, context.task, folds, protocol),
        "Each ratio keeps that fraction of every fold's training subjects (stratified on the label, whole subjects; "
        "validation and test unchanged); training samples per ratio: "
        + ", ".join(f"{r:g}: {'/'.join(map(str, n))}" for r, n in train_sizes.items())
        + ". Test metrics at threshold 0.5 (baselines: balanced class weights), mean ± std over folds.",
        *(f"Skipped baseline {method}: {reason}." for method, reason in skipped.items()),
        f"AdaCoMed overrides: {list(context.overrides) or 'none'}.",
        f"Command: `{command or command_line()}`",
        clock.line(context),
    ]
    sections = [
        Section(
            "Metrics per training ratio and method",
            markdown_table(table, ["ratio", "method"], columns),
            tables={"table": table},
            figures={"radar": radar_panels(table, "ratio", "method")},
        )
    ]
    title = f"Data ratio: `{context.task}`, ratios {', '.join(f'{r:g}' for r in ratios)}"
    return write_suite_report(report, title, intro, sections, runs, ["ratio", "method"])
