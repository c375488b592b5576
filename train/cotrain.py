"""Stage (b): co-training of the collaborative model over the frozen small model's features.

Per epoch: one pass over the train split with Listing 1's loss (:func:`cotrain_epoch`), an evaluation of the
validation split under the epoch's deployed weights (:func:`evaluate`), the choice of the best epoch by
``selection`` (validation loss by default), and, per ``checkpoint_seconds`` and after the last epoch, a
commit of ``checkpoints/cotrain.json``: live model, optimizer, RNG, the best epoch's model and weights and the
history, all in one commit.

Deployed fusion weights: a patient's prediction must not depend on which other patients are scored with it, so
validation, test and any new patient use one frozen pair ``(w_L, w_S)`` per epoch: the mean over that epoch's
training steps of the per-batch weights the model trained with (for ``learnable``, the softmax of its fusion
parameters at the end of the epoch; for the fixed ablations, their constants).
``prob_fused = sigmoid(w_L * large_logits + w_S * small_logits)`` (the small logit alone without large inputs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..cache_schema.atomic import atomic_write_bytes
from .checkpoint import (
    commit_checkpoint,
    encode_tensors,
    load_checkpoint,
    restore_training_state,
    training_state,
)
from .collab import CollaborativeModel, CollabOutput
from .config import TrainConfig, focal_gamma_of, resolved_preset
from .data import TaskData
from .losses import task_loss
from .metrics import binary_metrics
from .presets import TaskPreset
from .runtime import STAGE_COTRAIN, RunContext, autocast, batches, epoch_generator, improved, lr_at

CHECKPOINT = "cotrain"
EpochHook = Callable[[int, dict[str, Any]], None]


@dataclass
class Outcome:
    """What co-training leaves for the finish: the history, the chosen epoch and its deployed weights."""

    history: list[dict[str, Any]]
    best_epoch: int
    deployed: tuple[float, float]


def build_model(run: RunContext, small_head: torch.nn.Linear, small_dim: int) -> CollaborativeModel:
    """The collaborative model, seeded independently of stage (a), with its large-embedding statistics fitted on
    the train split."""
    config, data = run.config, run.data
    torch.manual_seed(config.seed + 1)
    model = CollaborativeModel(
        data.large_dims,
        small_dim,
        resolved_preset(config),
        config.weighting,
        small_head=small_head,
        mome_heads=config.mome_heads,
        contrastive_symmetric=config.contrastive_symmetric,
        standardise_large=config.standardise_large,
    ).to(run.device)
    if model.standardise is not None:
        model.standardise.fit(data.large, data.present, data.index["train"])
    return model


@torch.no_grad()
def evaluate(
    model: CollaborativeModel,
    data: TaskData,
    idx: torch.Tensor,
    small_feat: torch.Tensor,
    config: TrainConfig,
    pos_weight: float | None,
    amp: bool,
    weights: tuple[float, float],
) -> dict[str, Any]:
    """Logits and fused probabilities on ``idx`` under the frozen deployed ``weights`` (w_large, w_small).

    Each sample's fused probability depends only on that sample and the weights, never on which samples are
    evaluated with it; so does ``task_loss`` (the mean BCE of the fused prediction). ``sim_mean`` and ``loss``
    (task + lambda * contrastive) are batch diagnostics (the contrastive term needs a batch).
    """
    model.eval()
    device = data.labels.device
    w_large, w_small = (torch.tensor(float(w), device=device) for w in weights)
    large, small, available = [], [], []
    sim_sum = torch.zeros((), device=device)
    contrastive_sum = torch.zeros((), device=device)
    for batch in batches(idx, config.batch_size):
        with autocast(device, amp):
            out = model(data.large_batch(batch), data.present[batch], small_feat[batch])
        out = CollabOutput(
            out.large_logits.float(),
            out.small_logits.float(),
            out.large_proj.float(),
            out.small_proj.float(),
            out.large_feat,
            out.large_available,
        )
        sim_mean, contrastive = model.contrastive(out)
        large.append(out.large_logits)
        small.append(out.small_logits)
        available.append(out.large_available)
        sim_sum += sim_mean * len(batch)
        contrastive_sum += contrastive * len(batch)
    large_logits, small_logits = torch.cat(large), torch.cat(small)
    empty = large_logits.new_empty(0)
    whole = CollabOutput(large_logits, small_logits, empty, empty, empty, torch.cat(available))
    fused = model.fuse(whole, w_large, w_small)
    count = max(len(idx), 1)
    fused_loss = float(task_loss(fused, data.labels[idx], pos_weight).mean()) if len(idx) else math.nan
    return {
        "large_logits": large_logits,
        "small_logits": small_logits,
        "prob_fused": torch.sigmoid(fused),
        "fused_logits": fused,
        "w_large": float(weights[0]),
        "w_small": float(weights[1]),
        "sim_mean": float(sim_sum) / count,
        "task_loss": fused_loss,
        "loss": fused_loss + model.preset.contrastive_weight * float(contrastive_sum) / count,
    }


def cotrain_epoch(
    model: CollaborativeModel,
    optimizer: torch.optim.Optimizer,
    data: TaskData,
    small_feat: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    steps_per_epoch: int,
    pos_weight: float | None,
    amp: bool,
) -> dict[str, float]:
    """One pass over the train split: the sample-weighted means of the losses and sim, and the deployed weights.

    ``w_large``/``w_small`` are the epoch's deployed weights (module docstring): the mean of the per-step
    weights (each step counts once), or, for ``learnable``, the softmax of the fusion parameters after the
    epoch. Sums stay on the device and are converted once per epoch (no host sync per step).
    """
    model.train()
    device = data.labels.device
    loss_keys = ("loss", "task_loss", "contrastive_loss", "sim_mean")
    sums = torch.zeros(len(loss_keys), device=device)
    weight_sums = torch.zeros(2, device=device)
    count, steps, lr = 0, 0, config.lr
    total_steps = steps_per_epoch * config.epochs
    generator = epoch_generator(config.seed, STAGE_COTRAIN, epoch)
    for step, idx in enumerate(batches(data.index["train"], config.batch_size, generator)):
        lr = lr_at((epoch - 1) * steps_per_epoch + step, total_steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp):
            out = model(data.large_batch(idx), data.present[idx], small_feat[idx])
            losses = model.loss(out, data.labels[idx], pos_weight, focal_gamma_of(config))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            sums += torch.stack([losses[key].detach().float() for key in loss_keys]) * len(idx)
            weight_sums += torch.stack([torch.as_tensor(losses[k]).detach().float() for k in ("w_large", "w_small")])
        count, steps = count + len(idx), steps + 1
    means = (sums / max(count, 1)).tolist()
    if config.weighting == "learnable":
        with torch.no_grad():
            deployed = [float(w) for w in model.weights(torch.zeros((), device=device))]
    else:
        deployed = (weight_sums / max(steps, 1)).tolist()
    return {"lr": lr, **dict(zip(loss_keys, means)), "w_large": deployed[0], "w_small": deployed[1]}


def log_line(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']:3d}  loss {record['loss']:.4f} (task {record['task_loss']:.4f}, "
        f"con {record['contrastive_loss']:.4f})  sim {record['sim_mean']:.3f}  "
        f"w_L/w_S {record['w_large']:.3f}/{record['w_small']:.3f}  val loss {record['val_task_loss']:.4f}  "
        f"AUROC {record['val_auroc']:.4f} AUPRC {record['val_auprc']:.4f}  lr {record['lr']:.2e}"
    )


def _epoch(run: RunContext, model, optimizer, small_feat, epoch: int, steps_per_epoch: int) -> dict[str, Any]:
    """Train one epoch, then score validation under the epoch's deployed weights: the history record."""
    started = time.perf_counter()
    config, data = run.config, run.data
    record = {
        "epoch": epoch,
        **cotrain_epoch(model, optimizer, data, small_feat, config, epoch, steps_per_epoch, run.pos_weight, run.amp),
    }
    val_idx = data.index["val"]
    val = evaluate(
        model, data, val_idx, small_feat, config, run.pos_weight, run.amp, (record["w_large"], record["w_small"])
    )
    scores = binary_metrics(data.labels[val_idx].cpu().numpy(), val["prob_fused"].cpu().numpy())
    record.update(
        val_auroc=scores["auroc"],
        val_auprc=scores["auprc"],
        val_task_loss=val["task_loss"],
        val_loss=val["loss"],
        val_sim=val["sim_mean"],
        seconds=time.perf_counter() - started,
    )
    return record


def selection_value(record: dict[str, Any], criterion: str) -> float:
    return record["val_task_loss"] if criterion == "val_loss" else record["val_auroc"]


def cotrain_stage(
    run: RunContext, model: CollaborativeModel, small_feat: torch.Tensor, on_epoch_end: EpochHook | None = None
) -> Outcome:
    """Co-train from the start or from ``cotrain.json``; leaves ``model`` holding the chosen epoch's weights."""
    config, data = run.config, run.data
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    best_state, best_value, best_epoch, best_weights, start = None, math.nan, 0, None, 1
    checkpoint = load_checkpoint(run.checkpoints, CHECKPOINT)
    if checkpoint is not None:
        restore_training_state(checkpoint, model, optimizer)
        meta = checkpoint.meta
        history, best_epoch, start = meta["history"], meta["best_epoch"], meta["epoch"] + 1
        best_value = math.nan if meta["best_value"] is None else meta["best_value"]
        best_state, best_weights = checkpoint.tensors.get("best"), meta["best_weights"]
        run.say(f"co-training: resuming after epoch {meta['epoch']} (best epoch so far {best_epoch})")
    steps_per_epoch = len(batches(data.index["train"], config.batch_size))
    for epoch in range(start, config.epochs + 1):
        record = _epoch(run, model, optimizer, small_feat, epoch, steps_per_epoch)
        history.append(record)
        run.say(log_line(record))
        if improved(selection_value(record, config.selection), best_value, config.selection):
            best_value, best_epoch = selection_value(record, config.selection), epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_weights = [record["w_large"], record["w_small"]]
        if epoch == config.epochs or run.clock.due():
            state, param_groups = training_state(model, optimizer)
            if best_state is not None:
                state["best"] = best_state
            meta = {
                **run.resume_meta,
                "stage": "cotrain",
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_value": None if math.isnan(best_value) else best_value,
                "best_weights": best_weights,
                "selection": config.selection,
                "history": history,
                "param_groups": param_groups,
            }
            commit_checkpoint(run.checkpoints, CHECKPOINT, state, meta)
            run.clock.reset()
            run.say(f"checkpoint committed: co-training epoch {epoch}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return _choose(run, model, history, best_state, best_epoch, best_weights)


def _choose(run: RunContext, model, history, best_state, best_epoch: int, best_weights) -> Outcome:
    """Load the chosen epoch's weights into ``model``; without a scored epoch, keep the last model (or, after zero
    epochs, the weights of full agreement, sim = 1)."""
    if best_state is not None:
        model.load_state_dict(best_state)
        return Outcome(history, best_epoch, (float(best_weights[0]), float(best_weights[1])))
    if history:
        return Outcome(history, 0, (history[-1]["w_large"], history[-1]["w_small"]))
    with torch.no_grad():
        pair = model.weights(torch.ones((), device=run.device))
    return Outcome(history, 0, (float(pair[0]), float(pair[1])))


# ------------------------------------------------------------------------------------------ the saved model
MODEL_FILE = "model.safetensors"
MODEL_METADATA_KEY = "adacomed_model"


def save_model(path: Path, model: CollaborativeModel, run: RunContext, outcome: Outcome) -> None:
    """The chosen co-training model as one file: its tensors (large-embedding statistics included) and, in the
    metadata, what rebuilds it and the deployed weights every prediction uses."""
    config = run.config
    info = {
        "large_dims": run.data.large_dims,
        "small_dim": int(model.head.in_features),
        "preset": dataclasses.asdict(model.preset),
        "weighting": config.weighting,
        "mome_heads": config.mome_heads,
        "contrastive_symmetric": config.contrastive_symmetric,
        "standardise_large": config.standardise_large,
        "epoch": outcome.best_epoch,
        "selection": config.selection,
        "deployed_weights": {"w_large": outcome.deployed[0], "w_small": outcome.deployed[1]},
        "cache_keys": run.data.cache_keys,
    }
    data = encode_tensors(dict(model.state_dict()), {MODEL_METADATA_KEY: json.dumps(info)})
    atomic_write_bytes(path, data)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[CollaborativeModel, dict[str, Any]]:
    """A model saved by :func:`save_model` and its metadata (``deployed_weights``, ``epoch``, ...)."""
    with safe_open(str(path), framework="pt") as handle:
        info = json.loads((handle.metadata() or {})[MODEL_METADATA_KEY])
    model = CollaborativeModel(
        info["large_dims"],
        info["small_dim"],
        TaskPreset(**info["preset"]),
        info["weighting"],
        mome_heads=info["mome_heads"],
        contrastive_symmetric=info["contrastive_symmetric"],
        standardise_large=info["standardise_large"],
    )
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), info
