"""`adacomed-eval`: AdaCoMed beside simple baselines on the same folds, with one markdown report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console

from ...cache_schema import CacheError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Compare methods on shared evaluation folds."""


@app.command()
def compare(
    manifest: Path = typer.Option(..., "--manifest", help="The cohort's manifest (.parquet)."),
    cache: Path = typer.Option(..., "--cache", help="Cache folder written by adacomed-extract."),
    task: str = typer.Option(..., "--task", help="Task to predict (e.g. vital12)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for fold manifests, runs and the report (resumable)."),
    protocol: str = typer.Option("cv", "--protocol", help="cv: repeated stratified k-fold; official: the own split."),
    folds: int = typer.Option(5, "--folds", help="Folds per repeat (cv)."),
    repeats: int = typer.Option(5, "--repeats", help="Repeats with different shuffles (cv)."),
    modalities: str = typer.Option("", "--modalities", help="Comma list of large embeddings (default: all cached)."),
    weighting: list[str] = typer.Option(
        ["inverse"], "--weighting", help="AdaCoMed weighting to run (repeatable): inverse, small-only, large-only, ..."
    ),
    baseline: list[str] = typer.Option(
        None,
        "--baseline",
        help="Baselines to run (repeatable; default all that apply: clinical_lr needs tabular small inputs, "
        "imaging_lr and imaging_clinical_lr vector ones; the others are skipped with a line saying so).",
    ),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Run AdaCoMed only."),
    set_: list[str] = typer.Option([], "--set", help="Training config override key=value (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds and of every run."),
    threshold: str = typer.Option("0.5", "--threshold", help="AdaCoMed's test operating point: 0.5 or val."),
    report: Path = typer.Option(None, "--report", help="Report path (default OUT/report.md; a CSV goes beside it)."),
    jobs: int = typer.Option(1, "--jobs", help="Folds trained at once, in worker processes (results do not change)."),
) -> None:
    """Run the baselines and AdaCoMed on the same folds and write a report naming the best method."""
    from ...train.checkpoint import ResumeError
    from ...train.config import ConfigError
    from ...train.data import DataError
    from .compare import compare as run_compare
    from .evaluation import BASELINES

    chosen = () if no_baselines else tuple(baseline or BASELINES)
    try:
        path, _ = run_compare(
            manifest,
            cache,
            task,
            protocol=protocol,
            out=out,
            n_splits=folds,
            n_repeats=repeats,
            modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
            overrides=tuple(set_),
            weightings=tuple(weighting),
            baselines=chosen,
            seed=seed,
            threshold=threshold,
            report=report,
            console=console,
            command=" ".join(["adacomed-eval", *(shlex.quote(arg) for arg in sys.argv[1:])]),
            jobs=jobs,
        )
    except (ConfigError, DataError, ResumeError, CacheError, ValueError, FileNotFoundError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[green]report written:[/green] {path}")
