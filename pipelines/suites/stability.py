"""Stability (the supplement's Table 5 protocol): the same settings run with several seeds on the same folds;
mean ± standard deviation of Acc, AUROC, AUPRC, mAP, mAR and mF1 over the seeds, in that table's layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...cache_schema import Manifest
from ...train.loop import run_warnings
from .compare import cohort_lines, make_folds
from .evaluation import METRICS
from .figures import seed_spread
from .report import Section, write_suite_report
from .runs import Clock, RunSpec, SuiteContext, command_line, markdown_table, run_table, summary_table


def stability(
    context: SuiteContext,
    seeds: int = 5,
    protocol: str = "official",
    n_splits: int = 5,
    n_repeats: int = 1,
    report: Path | None = None,
    command: str | None = None,
) -> Path:
    """``seeds`` runs (seeds 0..seeds-1; the folds fixed by seed 0) of one setting; writes the report.

    With ``cv`` each seed's metrics are first averaged over its folds, so the spread is over seeds only.
    """
    if seeds < 2:
        raise ValueError(f"stability needs at least 2 seeds, got {seeds}")
    clock = Clock()
    manifest = Manifest.read(context.manifest_path)
    folds = make_folds(manifest, context.task, protocol, n_splits, n_repeats, seed=0)
    base = context.base_config()
    specs = [
        RunSpec(f"seed-{seed}", fold, dataclasses.replace(base, seed=seed), {"seed": seed})
        for seed in range(seeds)
        for fold in folds
    ]
    runs = run_table(context, specs, "stability")
    per_seed = runs.groupby("seed", sort=False)[list(METRICS) + ["BalAcc", "ECE"]].mean().reset_index()
    table = summary_table(per_seed.assign(task=context.task), ["task"])
    table_md = markdown_table(table, ["task"])
    report = Path(report) if report is not None else context.out / "report.md"
    intro = [
        *cohort_lines(manifest, context.task, folds, protocol),
        f"Settings: weighting `{base.weighting}`, overrides {list(context.overrides) or 'none'}, seeds 0-{seeds - 1} "
        f"(model initialisation, batch order and validation carve; the folds stay those of seed 0). Test metrics at "
        "threshold 0.5; std is the sample standard deviation (ddof 1) over seeds"
        + (f", each seed's value the mean over its {len(folds)} folds." if len(folds) > 1 else "."),
        *(f"Warning (preset): {message}." for message in run_warnings(base)),
        f"Command: `{command or command_line()}`",
        clock.line(context),
    ]
    sections = [
        Section(
            f"Stability over {seeds} seeds (Table 5 layout, plus balanced accuracy and ECE)",
            table_md,
            tables={"table": table},
            figures={"seeds": seed_spread(per_seed, "seed", title=f"{context.task}: {seeds} seeds")},
        ),
    ]
    return write_suite_report(report, f"Stability: `{context.task}`, {seeds} seeds", intro, sections, runs, ["seed"])
