"""What every suite shares: a plan of independent runs, executed resumably in processes or dask tasks.

A suite is a list of :class:`RunSpec` (a variant: its label and config; on one fold). Each run is
``train_run`` in its own folder, the way ``compare`` runs a fold (:func:`..compare._run_fold`: fold manifest,
fold record, settings checked on reuse), so a run whose ``metrics.json`` exists is read and never redone, and an
interrupted run resumes from its checkpoints. Small models (stage a) are trained first, one per distinct
(fold, small-model settings), then shared read-only by every run that needs them: runs can then go in any order
and in parallel without two trainers ever holding one folder.

Layout under ``out``::

    runs/<variant>/<fold>/run/      train_run's outputs (metrics.json marks the run done)
    runs/<variant>/<fold>/...       the fold's manifest, fold.json, train.log
    small-models/<fold>/<key>/      the shared small models

Executors: ``local`` (``jobs`` = 1: in this process; more: a pool of spawned worker processes) or ``dask``
(a LocalCluster of ``jobs`` single-threaded worker processes, or an existing scheduler's address). Every run uses
one torch thread, so its numbers do not depend on the executor or on ``jobs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ...cache_schema import Manifest
from ...cache_schema.splits import split_subjects
from ...train.config import TrainConfig, small_model_dict
from ...train.loop import train_small_model
from .compare import _base_config, _fold_record, _run_fold, fold_manifest
from .evaluation import EXTRA_KEYS, METRIC_KEYS, METRICS, Fold

EXECUTORS = ("local", "dask")
# Columns of a suite's per-run table beside the paper's six: balanced accuracy and the test ECE.
EXTRA_COLUMNS = ("BalAcc", "ECE")


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite: ``variant`` (a folder-safe label, e.g. ``seed-3``) trained with ``config`` on ``fold``.

    ``labels`` are the variant's coordinates for the tables (``{"seed": 3}``, ``{"ratio": 0.3, "method": ...}``).
    """

    variant: str
    fold: Fold
    config: TrainConfig
    labels: dict[str, Any] = field(default_factory=dict)

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.variant / self.fold.name


@dataclass
class SuiteContext:
    """The inputs every suite reads: the cohort, the cache, the task, and how its runs are executed."""

    manifest_path: Path
    cache: Path
    task: str
    out: Path
    modalities: Sequence[str] = ()
    overrides: Sequence[str] = ()
    jobs: int = 1
    executor: str = "local"
    scheduler_address: str | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))

    def base_config(self, weighting: str | None = None, seed: int = 0) -> TrainConfig:
        """Defaults (no plots per run) < ``--set`` overrides < this suite's task, cohort and seed."""
        config = _base_config(
            self.manifest_path, self.cache, self.task, self.modalities, self.overrides, "inverse", seed
        )
        return dataclasses.replace(config, weighting=weighting or _overridden_weighting(self.overrides) or "inverse")


def _overridden_weighting(overrides: Sequence[str]) -> str | None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "weighting":
            return value.strip()
    return None


def subsample_train(manifest: Manifest, task: str, fold: Fold, ratio: float, seed: int = 0) -> Fold:
    """``fold`` with its train part cut to ``ratio`` of its subjects, stratified on the label (same val and test).

    Whole subjects (the project's one subject-level split); at least one subject of each class is kept.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"training ratio {ratio} must be in (0, 1]")
    if ratio == 1:
        return fold
    labels = manifest.labels(task)
    subjects = manifest.table.set_index(manifest.table["sample_id"].astype(str))["subject_id"].astype(str)
    parts = split_subjects(
        subjects[fold.train].tolist(),
        {"keep": ratio, "drop": 1.0 - ratio},
        seed=seed,
        strata=labels[fold.train].astype(int).tolist(),
        at_least_one=True,
    )
    kept = [sample for sample, part in zip(fold.train, parts) if part == "keep"]
    return dataclasses.replace(fold, train=kept)


# ------------------------------------------------------------------------------------------------- execution
def _small_model_key(spec: RunSpec) -> str:
    identity = json.dumps(
        {"fold": _fold_record(spec.fold), "small_model": small_model_dict(spec.config)}, sort_keys=True
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _small_task(manifest_path: Path, task: str, spec: RunSpec, small_dir: Path) -> str:
    """Stage (a) of one fold and small-model setting into ``small_dir`` (resumable); returns its path."""
    with _quiet_single_thread():
        manifest = fold_manifest(Manifest.read(manifest_path), task, spec.fold)
        config = dataclasses.replace(spec.config, out=str(small_dir), manifest=str(manifest_path), small_checkpoint="")
        small_dir.mkdir(parents=True, exist_ok=True)
        with open(small_dir / "train.log", "a", encoding="utf-8") as log:
            return str(train_small_model(config, console=Console(file=log, width=160), manifest=manifest))


def _run_task(manifest_path: Path, task: str, spec: RunSpec, folder: Path, small_models: Path) -> dict[str, Any]:
    """One run (in this process, a worker process or a dask worker): its metrics."""
    with _quiet_single_thread():
        return _run_fold(Manifest.read(manifest_path), spec.config, task, spec.fold, folder, small_models)


class _quiet_single_thread:
    """One torch thread (tiny models: more only contend) and no repeated preset warnings (the report says them)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc: object) -> None:
        self.warnings.__exit__(*exc)
        torch.set_num_threads(self.threads)


def _execute(
    context: SuiteContext,
    label: str,
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
    done: int,
    progress: Progress,
) -> list[Any]:
    """Run ``calls`` with the context's executor; a bar shows runs done / total (``done`` finished before) and the
    time left. Results come back in the order of ``calls``."""
    bar = progress.add_task(label, total=len(calls) + done, completed=done)
    results: list[Any] = [None] * len(calls)
    if not calls:
        return results
    if context.executor == "dask":
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed

        cluster = None
        if context.scheduler_address:
            client = Client(context.scheduler_address)
        else:
            cluster = LocalCluster(
                n_workers=max(context.jobs, 1),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            client = Client(cluster)
        try:
            futures = {client.submit(fn, *args, pure=False): i for i, (fn, args) in enumerate(calls)}
            for future in dask_completed(list(futures)):
                results[futures[future]] = future.result()
                progress.advance(bar)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif context.jobs <= 1:
        for i, (fn, args) in enumerate(calls):
            results[i] = fn(*args)
            progress.advance(bar)
    else:
        with ProcessPoolExecutor(max_workers=context.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = {pool.submit(fn, *args): i for i, (fn, args) in enumerate(calls)}
            for future in as_completed(pending):
                results[pending[future]] = future.result()
                progress.advance(bar)
    return results


def run_plan(context: SuiteContext, specs: Sequence[RunSpec], name: str) -> dict[str, dict[str, Any]]:
    """Every run of ``specs`` (finished ones read, not redone): run folder -> its metrics."""
    if context.executor not in EXECUTORS:
        raise ValueError(f"executor {context.executor!r} is not one of {list(EXECUTORS)}")
    folders = [spec.folder(context.out) for spec in specs]
    if len(set(folders)) != len(folders):
        raise ValueError(f"{name}: two runs share a folder; variant labels must be distinct per fold")
    small_models = context.out / "small-models"
    finished = [(f / "run" / "metrics.json").exists() for f in folders]
    todo = [(spec, folder) for spec, folder, done in zip(specs, folders, finished) if not done]
    small_jobs: dict[Path, RunSpec] = {}
    for spec, _ in todo:
        if spec.config.small_checkpoint:
            continue
        small_dir = small_models / spec.fold.name / _small_model_key(spec)
        if not (small_dir / "small_model.safetensors").exists():
            small_jobs.setdefault(small_dir, spec)
    context.console.print(
        f"{name}: {len(specs)} runs, {sum(finished)} finished before (read, not redone); "
        f"{len(small_jobs)} small model(s) to train first; executor {context.executor}, jobs {context.jobs}"
    )
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=context.console, transient=False) as progress:
        _execute(
            context,
            f"{name}: small models",
            [(_small_task, (context.manifest_path, context.task, spec, d)) for d, spec in small_jobs.items()],
            0,
            progress,
        )
        results = _execute(
            context,
            f"{name}: runs",
            [(_run_task, (context.manifest_path, context.task, spec, f, small_models)) for spec, f in todo],
            sum(finished),
            progress,
        )
    metrics = dict(zip([str(f) for _, f in todo], results))
    for folder, done in zip(folders, finished):
        if done:
            metrics[str(folder)] = json.loads((folder / "run" / "metrics.json").read_text())
    return metrics


# ------------------------------------------------------------------------------------------------- tables
def run_row(spec: RunSpec, metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One row of a suite's per-run table: the variant's labels, the fold, the test metrics at 0.5 (the paper's
    six, balanced accuracy), the test ECE and the run folder."""
    test = metrics["test"]["at_0.5"]
    row: dict[str, Any] = {**spec.labels, "fold": spec.fold.name}
    for key, name in {**METRIC_KEYS, **EXTRA_KEYS}.items():
        value = test.get(key)
        row[name] = float("nan") if value is None else float(value)
    ece = (metrics.get("calibration") or {}).get("ece", {}).get("test")
    row["ECE"] = float("nan") if ece is None else float(ece)
    row["best_epoch"] = metrics["best_epoch"]
    row["w_large"] = metrics["weights"]["test"]["w_large"]
    row["run"] = str(folder / "run")
    return row


def run_table(context: SuiteContext, specs: Sequence[RunSpec], name: str) -> pd.DataFrame:
    """Execute the plan and return its per-run table (one row per run, in plan order)."""
    metrics = run_plan(context, specs, name)
    rows = []
    for spec in specs:
        folder = spec.folder(context.out)
        rows.append(run_row(spec, metrics[str(folder)], folder))
    return pd.DataFrame(rows)


def summary_table(
    runs: pd.DataFrame, by: Sequence[str], columns: Sequence[str] = METRICS + EXTRA_COLUMNS
) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; 0 for one run) of ``columns`` per group of ``by``, in the order
    the groups first appear: columns ``<metric>_mean``, ``<metric>_std`` and ``n_runs``."""
    grouped = runs.groupby(list(by), sort=False)
    means = grouped[list(columns)].mean().add_suffix("_mean")
    stds = grouped[list(columns)].std(ddof=1).fillna(0.0).add_suffix("_std")
    table = pd.concat([means, stds], axis=1)
    table = table[[f"{c}_{s}" for c in columns for s in ("mean", "std")]]
    table["n_runs"] = grouped.size()
    return table.reset_index()


def markdown_table(table: pd.DataFrame, by: Sequence[str], columns: Sequence[str] = METRICS + EXTRA_COLUMNS) -> str:
    """``mean ± std`` cells (4 decimals, Table 5's layout) under the group columns ``by``."""
    head = [*by, *columns, "runs"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for _, row in table.iterrows():
        cells = [str(row[b]) for b in by]
        cells += [f"{row[f'{c}_mean']:.4f} ± {row[f'{c}_std']:.4f}" for c in columns]
        lines.append("| " + " | ".join(cells + [str(int(row["n_runs"]))]) + " |")
    return "\n".join(lines)


def runs_markdown(runs: pd.DataFrame, report_dir: Path, by: Sequence[str]) -> str:
    """The per-run table: labels, fold, AUROC, the chosen epoch and a link to each run's folder and report."""
    head = [*by, "fold", "AUROC", "Acc", "mF1", "best epoch", "run"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for _, row in runs.iterrows():
        link = Path(os.path.relpath(row["run"], report_dir)).as_posix()
        cells = [str(row[b]) for b in by] + [row["fold"], f"{row['AUROC']:.4f}", f"{row['Acc']:.4f}"]
        cells += [f"{row['mF1']:.4f}", str(row["best_epoch"]), f"[{link}]({link}/report.md)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def command_line() -> str:
    """How this process was started, as ``adacomed-eval ...`` (printed in reports)."""
    return " ".join(["adacomed-eval", *(shlex.quote(arg) for arg in sys.argv[1:])])


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU time of a suite (this process and its worker processes; dask workers are not counted)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def line(self, context: SuiteContext) -> str:
        if context.executor == "dask":
            whose = "this process only: dask workers are not counted"
        elif context.jobs > 1:
            whose = f"this process and its {context.jobs} worker processes"
        else:
            whose = "one process"
        return (
            f"Time: {time.perf_counter() - self.wall:.0f} s wall, {cpu_seconds() - self.cpu:.0f} s CPU ({whose}; "
            f"executor {context.executor}, jobs {context.jobs}; {os.cpu_count()} cores). Runs finished before this "
            "command were read, and their time is not in these figures."
        )
