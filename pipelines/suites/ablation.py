"""Ablation (the supplement's section 1.3 and Table 3): the four adaptive weightings with the fixed ensemble,
small-only and large-only under the task's Table 2 preset; then lambda and the projection dim d swept with
Table 3's other values fixed. A table and a figure each."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ...cache_schema import Manifest
from ...train.loop import run_warnings
from ...train.presets import ablation_preset
from ...train.weighting import WEIGHTINGS
from .compare import cohort_lines, make_folds, method_name
from .figures import method_bars, sweep_lines
from .report import Section, write_suite_report
from .runs import Clock, RunSpec, SuiteContext, command_line, markdown_table, run_table, summary_table

LAMBDAS = (0.1, 0.3, 0.5, 0.7, 0.9)
DIMS = (32, 64, 128, 256, 512)


def ablation(
    context: SuiteContext,
    weightings: Sequence[str] = WEIGHTINGS,
    lambdas: Sequence[float] = LAMBDAS,
    dims: Sequence[int] = DIMS,
    sweep_weighting: str | None = None,
    protocol: str = "official",
    n_splits: int = 5,
    n_repeats: int = 1,
    report: Path | None = None,
    command: str | None = None,
) -> Path:
    """Every weighting, then the lambda and d sweeps (``sweep_weighting``, default the config's weighting, with
    Table 3's preset); every run on the same folds and seed. Writes the report."""
    clock = Clock()
    manifest = Manifest.read(context.manifest_path)
    folds = make_folds(manifest, context.task, protocol, n_splits, n_repeats, seed=0)
    specs: list[RunSpec] = []
    for weighting in dict.fromkeys(weightings):
        config = context.base_config(weighting)
        specs += [
            RunSpec(f"weighting-{weighting}", f, config, {"part": "weighting", "value": method_name(weighting)})
            for f in folds
        ]
    sweep_config = context.base_config(sweep_weighting)
    sweeps = {"lambda": lambdas, "d": dims}
    for kind, values in sweeps.items():
        for value in dict.fromkeys(values):
            preset = dataclasses.asdict(ablation_preset(kind, value))
            config = dataclasses.replace(sweep_config, preset=preset)
            specs += [RunSpec(f"{kind}-{value:g}", f, config, {"part": kind, "value": value}) for f in folds]
    runs = run_table(context, specs, "ablation")
    report = Path(report) if report is not None else context.out / "report.md"
    sections = []
    parts = runs[runs.part == "weighting"]
    if len(parts):
        table = summary_table(parts.rename(columns={"value": "method"}), ["method"])
        sections.append(
            Section(
                "Weightings (Table 2 preset of the task)",
                markdown_table(table, ["method"]),
                tables={"weightings": table},
                figures={"weightings": method_bars(table, "method", title=f"{context.task}: weightings")},
            )
        )
    for kind, symbol in (("lambda", "lambda"), ("d", "d")):
        part = runs[runs.part == kind]
        if not len(part):
            continue
        table = summary_table(
            part.rename(columns={"value": symbol}).astype({symbol: int if kind == "d" else float}), [symbol]
        )
        fixed = dataclasses.asdict(ablation_preset(kind, 0))
        fixed.pop("contrastive_weight" if kind == "lambda" else "proj_dim")
        sections.append(
            Section(
                f"{symbol} sweep (weighting `{sweep_config.weighting}`; Table 3 fixes {fixed})",
                markdown_table(table, [symbol]),
                tables={f"{kind}_sweep": table},
                figures={
                    f"{kind}_sweep": sweep_lines(table, symbol, log2=kind == "d", title=f"{context.task}: {symbol}")
                },
            )
        )
    warnings = [
        f"Warning (`{method_name(w)}`, Table 2 preset): {m}."
        for w in dict.fromkeys(weightings)
        for m in run_warnings(context.base_config(w))
    ]
    sweep_preset = dataclasses.replace(sweep_config, preset=dataclasses.asdict(ablation_preset("lambda", 0.5)))
    warnings += [f"Warning (sweeps, Table 3 preset): {m}." for m in run_warnings(sweep_preset)]
    intro = [
        *cohort_lines(manifest, context.task, folds, protocol),
        f"Every run on the same folds with seed 0; overrides {list(context.overrides) or 'none'}; test metrics at "
        "threshold 0.5, mean ± std over folds (std 0 with one fold).",
        *warnings,
        f"Command: `{command or command_line()}`",
        clock.line(context),
    ]
    return write_suite_report(report, f"Ablation: `{context.task}`", intro, sections, runs, ["part", "value"])
