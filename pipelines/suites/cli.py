"""`adacomed-eval`: AdaCoMed beside baselines on the same folds, and the paper's experiment suites, each with one
markdown report (tables as Markdown and CSV, PNG figures, a link to every run)."""

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
    """Compare methods on shared folds, and the paper's stability, data-ratio and ablation suites."""


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


# ------------------------------------------------------------------------------------------------ the suites
def _context(manifest, cache, task, out, modalities, set_, jobs, executor, scheduler_address):
    from .runs import SuiteContext

    return SuiteContext(
        manifest_path=manifest,
        cache=cache,
        task=task,
        out=out,
        modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
        overrides=tuple(set_),
        jobs=jobs,
        executor=executor,
        scheduler_address=scheduler_address,
        console=console,
    )


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be a comma list of numbers, got {text!r}") from None


def _run_suite(run) -> None:
    from ...train.checkpoint import ResumeError
    from ...train.config import ConfigError
    from ...train.data import DataError

    try:
        path = run()
    except (ConfigError, DataError, ResumeError, CacheError, ValueError, FileNotFoundError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[green]report written:[/green] {path}")


MANIFEST = typer.Option(..., "--manifest", help="The cohort's manifest (.parquet).")
CACHE = typer.Option(..., "--cache", help="Cache folder written by adacomed-extract.")
TASK = typer.Option(..., "--task", help="Task to predict (e.g. vital12).")
OUT = typer.Option(..., "--out", "-o", help="Folder for the runs (resumable: finished runs are not redone).")
PROTOCOL = typer.Option("official", "--protocol", help="official: the cohort's own split; cv: repeated k-fold.")
FOLDS = typer.Option(5, "--folds", help="Folds per repeat (cv).")
REPEATS = typer.Option(1, "--repeats", help="Repeats of the k-fold (cv).")
MODALITIES = typer.Option("", "--modalities", help="Comma list of large embeddings (default: all cached).")
SET = typer.Option([], "--set", help="Training config override key=value (repeatable), for every run.")
JOBS = typer.Option(1, "--jobs", help="Runs at once (worker processes or dask workers); results do not change.")
EXECUTOR = typer.Option("local", "--executor", help="local (this process / a process pool) or dask.")
SCHEDULER = typer.Option(
    None, "--scheduler-address", help="An existing dask scheduler (tcp://...) for --executor dask."
)
REPORT = typer.Option(None, "--report", help="Report path (default OUT/report.md); its CSVs and PNGs go beside it.")


@app.command()
def stability(
    manifest: Path = MANIFEST,
    cache: Path = CACHE,
    task: str = TASK,
    out: Path = OUT,
    seeds: int = typer.Option(5, "--seeds", help="Runs with identical settings, seeds 0..N-1."),
    protocol: str = PROTOCOL,
    folds: int = FOLDS,
    repeats: int = REPEATS,
    modalities: str = MODALITIES,
    set_: list[str] = SET,
    jobs: int = JOBS,
    executor: str = EXECUTOR,
    scheduler_address: str = SCHEDULER,
    report: Path = REPORT,
) -> None:
    """Table 5's protocol: the same settings with N seeds; mean ± std of the six metrics.
    Finished runs are read, not redone."""
    from .stability import stability as run

    context = _context(manifest, cache, task, out, modalities, set_, jobs, executor, scheduler_address)
    _run_suite(lambda: run(context, seeds, protocol, folds, repeats, report))


@app.command("data-ratio")
def data_ratio(
    manifest: Path = MANIFEST,
    cache: Path = CACHE,
    task: str = TASK,
    out: Path = OUT,
    ratios: str = typer.Option("0.1,0.3,0.5,0.7", "--ratios", help="Fractions of the training subjects to keep."),
    weighting: list[str] = typer.Option(["inverse"], "--weighting", help="AdaCoMed weighting to run (repeatable)."),
    baseline: list[str] = typer.Option(None, "--baseline", help="Baselines (repeatable; default all that apply)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="AdaCoMed only."),
    protocol: str = PROTOCOL,
    folds: int = FOLDS,
    repeats: int = REPEATS,
    modalities: str = MODALITIES,
    set_: list[str] = SET,
    jobs: int = JOBS,
    executor: str = EXECUTOR,
    scheduler_address: str = SCHEDULER,
    report: Path = REPORT,
) -> None:
    """Figures 1-2: every method on stratified fractions of the training split; radar panels.
    Finished runs are read, not redone."""
    from .data_ratio import data_ratio as run
    from .evaluation import BASELINES

    chosen = () if no_baselines else tuple(baseline or BASELINES)
    context = _context(manifest, cache, task, out, modalities, set_, jobs, executor, scheduler_address)
    values = _floats(ratios, "--ratios")
    _run_suite(lambda: run(context, values, tuple(weighting), chosen, protocol, folds, repeats, report))


@app.command()
def ablation(
    manifest: Path = MANIFEST,
    cache: Path = CACHE,
    task: str = TASK,
    out: Path = OUT,
    weighting: list[str] = typer.Option(None, "--weighting", help="Weightings to compare (default all seven)."),
    lambdas: str = typer.Option("0.1,0.3,0.5,0.7,0.9", "--lambdas", help="Lambda values (Table 3's other values)."),
    dims: str = typer.Option("32,64,128,256,512", "--dims", help="Projection dims d (Table 3's other values)."),
    sweep_weighting: str = typer.Option(None, "--sweep-weighting", help="Weighting of the sweeps (default inverse)."),
    protocol: str = PROTOCOL,
    folds: int = FOLDS,
    repeats: int = REPEATS,
    modalities: str = MODALITIES,
    set_: list[str] = SET,
    jobs: int = JOBS,
    executor: str = EXECUTOR,
    scheduler_address: str = SCHEDULER,
    report: Path = REPORT,
) -> None:
    """Weightings (+ ensemble, small-only, large-only), lambda and d sweeps: tables and plots.
    Finished runs are read, not redone."""
    from ...train.weighting import WEIGHTINGS
    from .ablation import ablation as run

    context = _context(manifest, cache, task, out, modalities, set_, jobs, executor, scheduler_address)
    lambda_values, dim_values = _floats(lambdas, "--lambdas"), [int(v) for v in _floats(dims, "--dims")]
    chosen = tuple(weighting or WEIGHTINGS)
    _run_suite(
        lambda: run(context, chosen, lambda_values, dim_values, sweep_weighting, protocol, folds, repeats, report)
    )
