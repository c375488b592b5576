"""AdaCoMed beside the baselines on the very same folds: per-fold runs, resumable, one comparison report.

Each fold becomes a copy of the manifest whose ``split`` column says train/val/test for that fold (rows in no
part of the fold keep their row but lose this task's label, so ``train_run`` skips them). Rows are never dropped
and pointers never change, so every fold manifest has the same ``input_hash`` per modality and reuses the large
embedding caches; only the small model's prepared inputs (keyed on the split) are prepared once per fold.

Layout under ``out``::

    folds/<fold>/manifest.parquet   the fold's manifest (relative roots rewritten to absolute paths)
    folds/<fold>/fold.json          the fold's sample ids, checked when a run is resumed
    folds/<fold>/run/               train_run's outputs; metrics.json there marks the fold done
    folds/<fold>/train.log          the run's console log
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import resource
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomllib
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...cache_schema import Manifest
from ...cache_schema.atomic import atomic_write_json, atomic_write_text
from ...train.config import TrainConfig, apply_overrides, resolved_dict, small_model_dict
from ...train.loop import run_warnings, train_run, train_small_model
from ...train.report import SELECTION_WORDS
from .evaluation import (
    BASELINES,
    Fold,
    applicable_baselines,
    official_split,
    repeated_stratified_kfold,
    run_baselines,
    write_report,
)

PROTOCOLS = ("cv", "official")
# metrics.json (train/metrics.py names) -> the evaluation module's names, so both kinds of rows share columns.
METRIC_KEYS = {"acc": "Acc", "auroc": "AUROC", "auprc": "AUPRC", "mAP": "mAP", "mAR": "mAR", "mF1": "mF1"}
THRESHOLDS = {"0.5": "at_0.5", "val": "at_val_threshold"}
# Settings that may differ between a finished fold run and a rerun request without invalidating the run.
IGNORED_ON_RESUME = ("resume", "device", "out", "manifest", "cache")


def method_name(weighting: str) -> str:
    return f"adacomed-{weighting}"


# ------------------------------------------------------------------------------------------- fold manifests
def _absolute_roots(manifest: Manifest) -> Any:
    """The manifest's declarations with every relative root made absolute, so a copy elsewhere still resolves."""
    info = manifest.info
    modalities = {
        name: dataclasses.replace(source, root=str(manifest.modality_root(name))) if source.kind == "path" else source
        for name, source in info.modalities.items()
    }
    small_inputs = {}
    for name, small in info.small_inputs.items():
        options = dict(small.options)
        if "root" in options:
            root = Path(str(options["root"]))
            options["root"] = str(root if root.is_absolute() else (manifest.base_dir / root).resolve())
        small_inputs[name] = dataclasses.replace(small, options=options)
    return dataclasses.replace(info, modalities=modalities, small_inputs=small_inputs)


def fold_manifest(manifest: Manifest, task: str, fold: Fold) -> Manifest:
    """The manifest with ``split`` set from ``fold``; rows outside the fold keep split 'train' and lose the label."""
    parts = {"train": fold.train, "val": fold.val, "test": fold.test}
    assignment: dict[str, str] = {}
    for split, ids in parts.items():
        for sample_id in ids:
            if sample_id in assignment:
                raise ValueError(
                    f"fold {fold.name}: sample {sample_id!r} is in both {assignment[sample_id]} and {split}"
                )
            assignment[sample_id] = split
    known = set(manifest.sample_ids)
    unknown = sorted(set(assignment) - known)
    if unknown:
        raise ValueError(f"fold {fold.name}: {len(unknown)} sample(s) are not in the manifest, e.g. {unknown[:3]}")
    table = manifest.table.copy()
    ids = table["sample_id"].astype(str)
    in_fold = ids.isin(assignment.keys())
    table["split"] = ids.map(assignment).where(in_fold, "train")
    label_column = manifest.info.tasks[task].column
    table[label_column] = pd.to_numeric(table[label_column], errors="coerce").where(in_fold, np.nan)
    return Manifest(table, _absolute_roots(manifest), base_dir=manifest.base_dir)


def _fold_record(fold: Fold) -> dict[str, Any]:
    return dataclasses.asdict(fold)


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (as ``config.toml`` holds it), JSON-normalised, without the fields a rerun may change."""
    return {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in IGNORED_ON_RESUME}


# ----------------------------------------------------------------------------------------------- fold runs
def _fold_row(metrics: dict[str, Any], fold: Fold, weighting: str, threshold: str) -> dict[str, Any]:
    test = metrics["test"][THRESHOLDS[threshold]]
    per_path = metrics["auroc"]
    row: dict[str, Any] = {
        "method": method_name(weighting),
        "fold": fold.name,
        "repeat": fold.repeat,
        "index": fold.index,
        "n_test": metrics["n"]["test"],
        "n_test_neg": metrics["n"]["test"] - metrics["n_positive"]["test"],
    }
    for key, name in METRIC_KEYS.items():
        value = test[key]
        row[name] = float("nan") if value is None else float(value)
    # Diagnostics (not in METRICS, so the report's summary ignores them; they land in the CSV).
    for path in ("large", "small", "small_model_stage_a"):
        value = per_path["test"][path]
        row[f"test_AUROC_{path}"] = float("nan") if value is None else float(value)
    value = per_path["val"]["fused"]
    row["val_AUROC"] = float("nan") if value is None else float(value)
    row["best_epoch"] = metrics["best_epoch"]
    row["w_large"] = metrics["weights"]["test"]["w_large"]
    row["w_small"] = metrics["weights"]["test"]["w_small"]
    return row


def _run_fold(
    manifest: Manifest,
    config: TrainConfig,
    task: str,
    fold: Fold,
    fold_dir: Path,
    small_models: Path | None = None,
) -> dict[str, Any]:
    """Train one fold unless its run finished; an interrupted run continues from its last checkpoint."""
    run_dir = fold_dir / "run"
    record = _fold_record(fold)
    record_path = fold_dir / "fold.json"
    if record_path.exists() and json.loads(record_path.read_text()) != record:
        raise ValueError(
            f"{fold_dir} holds fold {fold.name!r} with other samples (another manifest, task or seed); "
            "choose another output folder"
        )
    config = dataclasses.replace(config, out=str(run_dir), manifest=str(fold_dir / "manifest.parquet"))
    shared = small_models is not None and not config.small_checkpoint
    if shared:
        identity = json.dumps({"fold": _fold_record(fold), "small_model": small_model_dict(config)}, sort_keys=True)
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        config = dataclasses.replace(
            config, small_checkpoint=str(small_models / fold.name / key / "small_model.safetensors")
        )
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        previous = _comparable(tomllib.loads((run_dir / "config.toml").read_text()))
        wanted = _comparable(resolved_dict(config))
        # A field added to the config after the run finished counts as its default (what that run did).
        defaults = _comparable(resolved_dict(TrainConfig()))
        changed = sorted(
            k for k in set(previous) | set(wanted) if previous.get(k, defaults.get(k)) != wanted.get(k, defaults.get(k))
        )
        if changed:
            raise ValueError(
                f"{run_dir} finished with other settings ({', '.join(changed)} differ); choose another output folder"
            )
        return json.loads(metrics_path.read_text())
    fold_dir.mkdir(parents=True, exist_ok=True)
    copy = fold_manifest(manifest, task, fold)
    copy.write(fold_dir / "manifest.parquet")
    atomic_write_json(record_path, record)
    with open(fold_dir / "train.log", "a", encoding="utf-8") as log:
        console = Console(file=log, width=160)
        # Stage (a) once per fold, shared by every variant (it does not depend on co-training settings); a finished
        # one is only read, so runs sharing it may run at once (a suite trains its small models first).
        if shared and not Path(config.small_checkpoint).exists():
            small_dir = Path(config.small_checkpoint).parent
            train_small_model(dataclasses.replace(config, out=str(small_dir)), console=console, manifest=copy)
        result = train_run(dataclasses.replace(config, resume=True), console=console, manifest=copy)
    return result.metrics


def _base_config(
    manifest_path: Path,
    cache: Path,
    task: str,
    modalities: Sequence[str],
    overrides: Sequence[str],
    weighting: str,
    seed: int,
) -> TrainConfig:
    """Defaults (no plots per fold) < ``--set`` overrides < the arguments of this experiment."""
    config = apply_overrides(TrainConfig(plots=False), list(overrides))
    return dataclasses.replace(
        config,
        task=task,
        manifest=str(manifest_path),
        cache=str(cache),
        weighting=weighting,
        seed=seed,
        modalities=tuple(modalities) or config.modalities,
    )


def run_adacomed_folds(
    manifest_path: str | Path,
    cache: str | Path,
    task: str,
    folds: Sequence[Fold],
    out: str | Path,
    modalities: Sequence[str] = (),
    overrides: Sequence[str] = (),
    weighting: str = "inverse",
    seed: int = 0,
    threshold: str = "0.5",
    console: Console | None = None,
    small_models: str | Path | None = None,
    jobs: int = 1,
) -> pd.DataFrame:
    """Train AdaCoMed on every fold; per-fold test metrics in :func:`run_baselines`' columns (plus diagnostics).

    ``threshold`` picks the test operating point for Acc/mAP/mAR/mF1: ``0.5`` (like the baselines) or ``val``
    (the macro-F1 threshold chosen on the fold's validation set). A fold whose ``run/metrics.json`` exists is
    read, not rerun (after checking it was trained with the same fold and settings). Each fold's small model is
    trained once under ``small_models`` (default: ``small-models`` beside ``out``) and shared by every variant
    run there with the same small-model settings: stage (a) does not depend on the co-training settings.
    """
    out = Path(out)
    shared = Path(small_models) if small_models is not None else out.parent / "small-models"
    frames = run_variants(
        manifest_path,
        cache,
        task,
        folds,
        {weighting: out},
        modalities,
        overrides,
        seed,
        threshold,
        console,
        shared,
        jobs,
    )
    return frames[weighting]


def run_variants(
    manifest_path: str | Path,
    cache: str | Path,
    task: str,
    folds: Sequence[Fold],
    outs: dict[str, Path],
    modalities: Sequence[str],
    overrides: Sequence[str],
    seed: int,
    threshold: str,
    console: Console | None,
    small_models: Path,
    jobs: int = 1,
) -> dict[str, pd.DataFrame]:
    """Every weighting of ``outs`` (weighting -> its folder) on every fold, fold by fold: the fold's small model,
    then each variant. ``jobs`` > 1 runs that many folds at once in worker processes. Every fold run uses one
    torch thread (tiny models: more threads only contend), so results do not depend on ``jobs``."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold {threshold!r} is not one of {list(THRESHOLDS)}")
    if not folds:
        raise ValueError("no folds to run")
    names = [f.name for f in folds]
    if len(set(names)) != len(names):
        raise ValueError(f"fold names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    console = console or Console(stderr=True)
    manifest_path, cache = Path(manifest_path), Path(cache)
    manifest = Manifest.read(manifest_path)
    if task not in manifest.info.tasks:
        raise ValueError(f"task {task!r} is not declared in {manifest_path}; declared: {sorted(manifest.info.tasks)}")
    variants = [
        (weighting, _base_config(manifest_path, cache, task, modalities, overrides, weighting, seed), Path(out))
        for weighting, out in outs.items()
    ]
    jobs_of = {fold.name: (manifest_path, task, fold, variants, small_models) for fold in folds}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    label = ", ".join(method_name(w) for w in outs)
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{label}: folds", total=len(folds))
        if jobs <= 1:
            for fold in folds:
                progress.update(bar, description=f"{label}: fold {fold.name}")
                results[fold.name] = _fold_job(*jobs_of[fold.name])
                progress.advance(bar)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                pending = {pool.submit(_fold_job, *job): name for name, job in jobs_of.items()}
                for done in as_completed(pending):
                    results[pending[done]] = done.result()
                    progress.advance(bar)
    return {
        weighting: pd.DataFrame([_fold_row(results[f.name][weighting], f, weighting, threshold) for f in folds])
        for weighting in outs
    }


def _fold_job(
    manifest_path: Path, task: str, fold: Fold, variants: list[tuple[str, TrainConfig, Path]], small_models: Path
) -> dict[str, dict[str, Any]]:
    """One fold, every variant (in this process or a worker): weighting -> the run's metrics."""
    manifest = Manifest.read(manifest_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a degenerate preset is said once, in the report
            return {
                weighting: _run_fold(manifest, config, task, fold, out / "folds" / fold.name, small_models)
                for weighting, config, out in variants
            }
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------ comparison
def make_folds(
    manifest: Manifest, task: str, protocol: str = "cv", n_splits: int = 5, n_repeats: int = 5, seed: int = 0
) -> list[Fold]:
    """The folds of a protocol: ``cv`` (repeated stratified k-fold by subject) or ``official`` (one fold)."""
    if protocol == "cv":
        return repeated_stratified_kfold(manifest, task, n_splits=n_splits, n_repeats=n_repeats, seed=seed)
    if protocol == "official":
        return official_split(manifest, task, seed=seed)
    raise ValueError(f"protocol {protocol!r} is not one of {list(PROTOCOLS)}")


def _negative_word(task: str) -> str:
    return "deaths" if task == "vital12" else "negatives (label 0)"


def cohort_lines(manifest: Manifest, task: str, folds: Sequence[Fold], protocol: str) -> list[str]:
    """Class balance of the task, the official test split's negatives, and the protocol's fold sizes."""
    labels = manifest.labels(task).dropna()
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    word = _negative_word(task)
    split = manifest.split_of().reindex(labels.index)
    official_test_neg = int(((split == "test") & (labels == 0)).sum())
    official_test = int((split == "test").sum())
    test_sizes = [len(f.test) for f in folds]
    lines = [
        f"Task `{task}`: label 1 = {manifest.info.tasks[task].positive}. {len(labels)} labelled samples, "
        f"{positives} positive and {negatives} negative ({negatives / max(len(labels), 1):.1%} {word}; "
        f"{positives / max(negatives, 1):.1f}:1)."
    ]
    if official_test:
        lines.append(
            f"The official test split holds {official_test} samples with only {official_test_neg} {word}, so one "
            "patient moves its AUROC by several points; the repeated k-fold protocol is the one to trust."
        )
    if protocol == "cv":
        repeats = len({f.repeat for f in folds})
        lines.append(
            f"Protocol: {len(folds) // max(repeats, 1)}-fold x {repeats}-repeat stratified cross-validation by "
            f"subject ({len(folds)} folds, {min(test_sizes)}-{max(test_sizes)} test samples each); every method "
            "is trained and scored on the same folds, validation carved from each fold's train part."
        )
    else:
        lines.append(f"Protocol: the official split ({test_sizes[0]} test samples), validation carved from train.")
    return lines


def verdict_lines(frames: dict[str, pd.DataFrame], primary: str = "AUROC") -> list[str]:
    """Plain statement of the best method and whether the best AdaCoMed variant beats the best baseline."""
    combined = pd.concat(frames.values(), ignore_index=True)
    shared = set.intersection(*(set(f["fold"]) for f in frames.values()))
    combined = combined[combined["fold"].isin(shared)]
    means = combined.groupby("method")[primary].agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
    best = str(means.index[0])
    ours = [m for m in means.index if str(m).startswith("adacomed-")]
    theirs = [m for m in means.index if not str(m).startswith("adacomed-")]

    def fmt(method: str) -> str:
        row = means.loc[method]
        spread = 0.0 if math.isnan(row["std"]) else row["std"]
        return f"{method} {row['mean']:.3f} ± {spread:.3f} ({int(row['count'])} folds)"

    lines = [f"**Best by mean {primary}: {fmt(best)}.**"]
    if ours and theirs:
        top_ours, top_theirs = str(ours[0]), str(theirs[0])
        pivot = combined.pivot_table(index="fold", columns="method", values=primary, aggfunc="first")
        diff = (pivot[top_ours] - pivot[top_theirs]).dropna()
        wins = int((diff > 0).sum())
        sem = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        beats = diff.mean() > 0
        lines.append(
            f"**AdaCoMed {'beats' if beats else 'does NOT beat'} the baselines**: its best variant {fmt(top_ours)} "
            f"vs the best baseline {fmt(top_theirs)}: paired difference {diff.mean():+.3f} "
            f"(standard error {sem:.3f}; folds of repeated CV overlap, so this understates the uncertainty), "
            f"AdaCoMed better on {wins} of {len(diff)} folds."
        )
    return lines


def _insert_after_title(report: Path, lines: list[str]) -> None:
    text = report.read_text(encoding="utf-8").split("\n")
    body = text[:2] + ["## Cohort and verdict", ""] + [f"{line}\n" for line in lines] + text[2:]
    atomic_write_text(report, "\n".join(body))


def compare(
    manifest_path: str | Path,
    cache: str | Path,
    task: str,
    protocol: str = "cv",
    n_splits: int = 5,
    n_repeats: int = 5,
    *,
    out: str | Path,
    modalities: Sequence[str] = (),
    overrides: Sequence[str] = (),
    weightings: Sequence[str] = ("inverse",),
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
    threshold: str = "0.5",
    report: str | Path | None = None,
    console: Console | None = None,
    command: str | None = None,
    jobs: int = 1,
) -> tuple[Path, pd.DataFrame]:
    """Baselines and AdaCoMed (one run per weighting) on the same folds; writes the report and returns it.

    AdaCoMed runs go to ``out/adacomed-<weighting>/folds/<fold>/`` and share one small model per fold
    (``out/small-models/``); the report (default ``out/report.md``, its per-fold CSV beside it) ranks every method
    by AUROC, says whether AdaCoMed beats the baselines, and how long the comparison took. Baselines that do not
    apply to the cohort (no vector small inputs: no imaging baselines) are skipped with a line that says so.
    ``command`` (how this comparison was started) is printed in the report; ``jobs`` folds run at once.
    """
    if not weightings and not baselines:
        raise ValueError("nothing to compare: no weighting and no baseline")
    started_wall, started_cpu = time.perf_counter(), _cpu_seconds()
    console = console or Console(stderr=True)
    out = Path(out)
    manifest = Manifest.read(manifest_path)
    folds = make_folds(manifest, task, protocol, n_splits, n_repeats, seed)
    frames: dict[str, pd.DataFrame] = {}
    runnable, skipped = applicable_baselines(manifest, baselines)
    notes = [f"Skipped baseline {method}: {reason}." for method, reason in skipped.items()]
    for line in notes:
        console.print(line, markup=False, highlight=False)
    if runnable:
        console.print(f"baselines {runnable} on {len(folds)} folds")
        scored = run_baselines(manifest, task, folds, methods=runnable)
        frames.update({method: scored[scored["method"] == method] for method in runnable})
    if weightings:
        outs = {weighting: out / method_name(weighting) for weighting in dict.fromkeys(weightings)}
        ours = run_variants(
            manifest_path,
            cache,
            task,
            folds,
            outs,
            modalities,
            overrides,
            seed,
            threshold,
            console,
            out / "small-models",
            jobs,
        )
        frames.update({method_name(weighting): frame for weighting, frame in ours.items()})
    if not frames:
        raise ValueError("nothing to compare: every baseline was skipped and no weighting was given")
    report_path = Path(report) if report is not None else out / "report.md"
    title = f"AdaCoMed vs baselines: {manifest.info.cohort} `{task}`, {protocol} protocol"
    write_report(frames, report_path, primary="AUROC", title=title)
    config = _base_config(Path(manifest_path), Path(cache), task, modalities, overrides, "inverse", seed)
    settings = [
        f"AdaCoMed settings: modalities {list(modalities) or 'all cached'}, overrides {list(overrides) or 'none'}, "
        f"seed {seed}; co-training epoch chosen by {SELECTION_WORDS[config.selection]}; Acc/mAP/mAR/mF1 at "
        "threshold "
        + ("0.5 (baselines: 0.5 with balanced class weights)." if threshold == "0.5" else "chosen on validation."),
        *notes,
        *(
            f"Warning (preset of `{method_name(w)}`): {message}."
            for w in dict.fromkeys(weightings)
            for message in run_warnings(dataclasses.replace(config, weighting=w))
        ),
        f"Time: {time.perf_counter() - started_wall:.0f} s wall, {_cpu_seconds() - started_cpu:.0f} s CPU "
        f"(this process and its {jobs if jobs > 1 else 'no'} worker processes; {os.cpu_count()} cores)."
        + (f" Command: `{command}`." if command else ""),
    ]
    _insert_after_title(report_path, cohort_lines(manifest, task, folds, protocol) + verdict_lines(frames) + settings)
    return report_path, pd.concat(frames.values(), ignore_index=True)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
