"""Stage two's trainer, nanoGPT-style: plain loops over index batches of in-memory tensors, no framework.

A run is four steps, each one screen: :func:`setup` (check the config, load and check the data, the resume
facts), the small model (:mod:`adacomed.train.small_training`: stage a), co-training
(:mod:`adacomed.train.cotrain`: stage b) and :func:`finish` (score every split under the chosen epoch's
deployed weights, write the outputs). Both training stages commit checkpoints (:mod:`adacomed.train.checkpoint`),
so a run killed at any moment and started again with ``--resume`` ends where the unbroken run ends; one live
trainer per run folder (:mod:`adacomed.train.run_lock`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from ..cache_schema import Manifest
from ..cache_schema.atomic import atomic_write_bytes
from .checkpoint import ResumeError, check_resumable, encode_tensors, read_meta, split_digest
from .config import (
    TrainConfig,
    check_choices,
    fingerprint_dict,
    optimisation_dict,
    resolved_preset,
    small_model_dict,
    to_toml,
)
from .cotrain import CHECKPOINT as COTRAIN_CHECKPOINT
from .cotrain import MODEL_FILE, EpochHook, Outcome, build_model, cotrain_stage, evaluate, save_model
from .data import describe, load_task_data
from .diagnostics import attribution_columns
from .mome import check_heads
from .run_lock import RunLock
from .runtime import CommitClock, RunContext, deterministic, parse_pos_weight, resolve_device, seed_everything
from .small_model import SmallEnsemble
from .small_training import CHECKPOINT as SMALL_CHECKPOINT
from .small_training import (
    FILE_NAME,
    freeze,
    load_small_model,
    read_small_info,
    save_small_model,
    small_outputs,
    small_provenance,
    train_small_stage,
)
from .weighting import weighting_warnings


@dataclass
class RunResult:
    """What a finished run produced (all of it is also on disk in ``run_dir``)."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    predictions: pd.DataFrame


def setup(config: TrainConfig, console: Console, manifest: Manifest | None = None) -> RunContext:
    """Check the config and load the data (errors before anything is written); print what the run will do."""
    check_choices(config)
    device = resolve_device(config.device)
    console.print(f"[bold]adacomed-train[/] task={config.task} weighting={config.weighting} device={device}")
    for message in run_warnings(config):
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)
        warnings.warn(message, UserWarning, stacklevel=3)
    manifest = manifest or Manifest.read(config.manifest)
    data = load_task_data(
        manifest,
        config.cache,
        config.task,
        config.modalities,
        val_fraction=config.val_fraction,
        seed=config.seed,
        tokenizer=config.tokenizer or None,
    )
    if not config.small_checkpoint:  # a bad mome_heads fails now, not after the small model has trained
        check_heads(config.small_hidden_dim * config.small_ensemble, len(data.large), config.mome_heads)
    console.print(describe(data), markup=False, highlight=False)
    resume_meta = {
        "architecture": fingerprint_dict(config),
        "optimisation": optimisation_dict(config),
        "split_sha256": split_digest(data.sample_ids, data.splits),
        "cache_keys": data.cache_keys,
    }
    return RunContext(
        config=config,
        data=data,
        device=device,
        amp=config.amp and device.type == "cuda",
        pos_weight=parse_pos_weight(config.pos_weight, data.labels[data.index["train"]]),
        console=console,
        run_dir=Path(config.out),
        resume_meta=resume_meta,
        clock=CommitClock(config.checkpoint_seconds),
    )


def run_warnings(config: TrainConfig) -> list[str]:
    """Settings under which the run cannot do what their names say (printed at start and kept in the report)."""
    return weighting_warnings(config.weighting, resolved_preset(config))


def start_or_resume(run: RunContext) -> None:
    """Decide, under the run lock, whether this run starts afresh or continues its checkpoints; refuse a mix."""
    metas = {name: read_meta(run.checkpoints, name) for name in (SMALL_CHECKPOINT, COTRAIN_CHECKPOINT)}
    held = {name: meta for name, meta in metas.items() if meta is not None}
    if held and not run.config.resume:
        raise ResumeError(f"{run.run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    if run.config.resume and not held:
        run.say(f"--resume: {run.run_dir} holds no checkpoint yet; starting afresh")
    meta = run.resume_meta
    for saved in held.values():
        check_resumable(saved, meta["architecture"], meta["cache_keys"], meta["optimisation"], meta["split_sha256"])
    atomic_write_bytes(run.run_dir / "config.toml", to_toml(run.config).encode())


def small_stage(run: RunContext) -> SmallEnsemble:
    """Stage (a): the given small model, or the one trained (or continued) here; saved beside the run."""
    config = run.config
    if config.small_checkpoint:
        small = load_small_model(config.small_checkpoint, run.data, run.device, task=config.task)
        provenance = {k: v for k, v in read_small_info(config.small_checkpoint).items() if k in ("task", "train_ids")}
    else:
        seed_everything(config.seed)
        small = train_small_stage(run)
        provenance = small_provenance(config.task, run.data)
    freeze(small)
    save_small_model(run.run_dir / FILE_NAME, small, provenance)
    return small


def train_run(
    config: TrainConfig,
    on_epoch_end: EpochHook | None = None,
    console: Console | None = None,
    manifest: Manifest | None = None,
) -> RunResult:
    """Run both stages and write every output into ``config.out``; used by ``adacomed-train`` and pipelines."""
    console = console or Console()
    check_choices(config)
    with RunLock(config.out):  # before anything is loaded: a second trainer refuses at once
        run = setup(config, console, manifest)
        return _train(run, on_epoch_end)


def _train(run: RunContext, on_epoch_end: EpochHook | None) -> RunResult:
    config = run.config
    with deterministic(run.device):
        start_or_resume(run)
        run.data.to(run.device)
        small = small_stage(run)
        small_logits, small_feat = small_outputs(small, run.data, config.small_batch_size, run.amp)
        feature_bytes = encode_tensors({"features": small_feat}, {"sample_ids": "\n".join(run.data.sample_ids)})
        atomic_write_bytes(run.run_dir / "small_features.safetensors", feature_bytes)
        model = build_model(run, small.head, small.feature_dim)
        outcome = cotrain_stage(run, model, small_feat, on_epoch_end)
        return finish(run, model, small_feat, small_logits, outcome)


def finish(run: RunContext, model, small_feat, small_logits, outcome: Outcome) -> RunResult:
    """Score train/val/test under the chosen epoch's deployed weights and write the run's outputs."""
    from .report import write_outputs

    config, data = run.config, run.data
    run.say(f"evaluating the chosen epoch ({outcome.best_epoch}, by {config.selection}) on every split")
    outputs = {
        split: evaluate(model, data, data.index[split], small_feat, config, run.pos_weight, run.amp, outcome.deployed)
        for split in ("train", "val", "test")
    }
    for split, out in outputs.items():  # reporting only: a separate pass, the predictions above are unchanged
        out["attribution"] = attribution_columns(model, data, data.index[split], small_feat, config.batch_size, run.amp)
    run.say("writing outputs")
    save_model(run.run_dir / MODEL_FILE, model, run, outcome)
    notes = {"selection": config.selection, "warnings": run_warnings(config)}
    metrics, predictions = write_outputs(
        run.run_dir, config, data, outputs, small_logits, outcome.history, outcome.best_epoch, run.console, notes
    )
    return RunResult(run.run_dir, metrics, outcome.history, outcome.best_epoch, predictions)


def train_small_model(config: TrainConfig, console: Console | None = None, manifest: Manifest | None = None) -> Path:
    """Stage (a) alone into ``config.out``, always resumable; returns the saved small model's path.

    A sweep over co-training settings (weightings, lambda, ...) trains it once per fold and passes it to each run
    as ``small_checkpoint``: the folder is checked only against what decides the small model.
    """
    console = console or Console()
    with RunLock(config.out):
        run = setup(replace(config, small_checkpoint="", resume=True), console, manifest)
        run.resume_meta = {
            "architecture": small_model_dict(run.config),
            "optimisation": {},
            "split_sha256": run.resume_meta["split_sha256"],
            "cache_keys": {},
        }
        return _train_small(run)


def _train_small(run: RunContext) -> Path:
    with deterministic(run.device):
        start_or_resume(run)
        run.data.to(run.device)
        small_stage(run)
        return run.run_dir / FILE_NAME
