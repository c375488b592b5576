"""Stage two's trainer, nanoGPT-style: plain loops over index batches of in-memory tensors, no framework.

Stage (a) trains the small model on the task alone (BCE, early stopping on validation AUROC), freezes it and
computes its features once for every sample. Stage (b) co-trains the collaborative model (MoME over the cached
large embeddings + projections + one shared head) with Listing 1's loss, validating every epoch and keeping the
best-validation checkpoint.

Deployed fusion weights: a patient's prediction must not depend on which other patients are scored with it, so
validation, test and any new patient use one frozen pair ``(w_L, w_S)`` per epoch: the mean over that epoch's
training steps of the per-batch weights the model trained with (for ``learnable``, the softmax of its fusion
parameters at the end of the epoch; for the fixed ablations, their constants). The pair is recorded in the
history, stored in the best checkpoint's JSON (``deployed_weights``) and used for every split, so the validation
threshold of report.py is chosen and applied to test under the same weights.
``prob_fused = sigmoid(w_L * large_logits + w_S * small_logits)`` (the small logit alone without large inputs).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import save_file

from ..cache_schema import Manifest
from ..cache_schema.atomic import atomic_write_bytes
from .checkpoint import (
    ResumeError,
    check_resumable,
    load_checkpoint,
    load_module_state,
    read_meta,
    save_checkpoint,
    save_module,
    split_digest,
)
from .collab import CollaborativeModel, CollabOutput
from .config import TrainConfig, fingerprint_dict, optimisation_dict, resolved_preset, to_toml
from .data import TaskData, describe, load_task_data
from .losses import task_loss
from .metrics import binary_metrics
from .mome import check_heads
from .small_model import SmallInputSpec, SmallModel, SmallModelConfig
from .weighting import WEIGHTINGS, weighting_warnings

EpochHook = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a finished run produced (all of it is also on disk in ``run_dir``)."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    predictions: pd.DataFrame


# ------------------------------------------------------------------------------------------------- utilities
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches (shuffled when a generator is given); a lone trailing sample joins the previous batch."""
    if generator is not None:
        indices = indices[torch.randperm(len(indices), generator=generator).to(indices.device)]
    chunks = list(indices.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < 2:  # InfoNCE needs negatives
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    """Batch order depends only on (seed, stage, epoch), so a resumed run shuffles exactly as an unbroken one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    if config.schedule == "constant":
        return config.lr
    if config.schedule != "cosine":
        raise ValueError(f"schedule {config.schedule!r} is not one of ['cosine', 'constant']")
    progress = min(step / max(total_steps, 1), 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def parse_pos_weight(spec: str, train_labels: torch.Tensor) -> float | None:
    """``none`` -> None; ``auto`` -> negatives / positives on the train split; else the float given."""
    spec = str(spec).strip().lower()
    if spec == "none":
        return None
    if spec == "auto":
        positives = float(train_labels.sum())
        return (len(train_labels) - positives) / max(positives, 1.0)
    try:
        value = float(spec)
    except ValueError:
        raise ValueError(f"pos_weight {spec!r} is not 'auto', 'none' or a number") from None
    if not value > 0:
        raise ValueError(f"pos_weight must be positive, got {value}")
    return value


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no grad scaler needed); a no-op on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def auroc(labels: torch.Tensor, prob: torch.Tensor) -> float:
    return binary_metrics(labels.cpu().numpy(), prob.float().cpu().numpy())["auroc"]


def small_config_from_dict(data: dict[str, Any]) -> SmallModelConfig:
    inputs = {name: SmallInputSpec(**spec) for name, spec in data["inputs"].items()}
    return SmallModelConfig(inputs=inputs, hidden_dim=int(data["hidden_dim"]), dropout=float(data["dropout"]))


def small_config_dict(config: SmallModelConfig) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                "inputs": {k: vars(v) for k, v in config.inputs.items()},
                "hidden_dim": config.hidden_dim,
                "dropout": config.dropout,
            }
        )
    )


# ------------------------------------------------------------------------------------------ stage (a): small
@torch.no_grad()
def small_outputs(
    model: SmallModel, data: TaskData, batch_size: int, amp: bool, idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features [., H]) of the small model in eval mode for ``idx`` (default: every sample, in order)."""
    model.eval()
    device = data.labels.device
    logits, feats = [], []
    rows = torch.arange(data.n, device=device) if idx is None else idx
    for idx in batches(rows, batch_size):
        with autocast(device, amp):
            feat = model.features(data.small_batch(idx))
            logit = model.head(feat).squeeze(-1)
        feats.append(feat.float())
        logits.append(logit.float())
    return torch.cat(logits), torch.cat(feats)


def train_small(
    data: TaskData, config: TrainConfig, device: torch.device, pos_weight: float | None, console: Console
) -> SmallModel:
    """Train the small model on the task alone; keep the state with the best validation AUROC."""
    small_config = replace(data.small_config, hidden_dim=config.small_hidden_dim, dropout=config.small_dropout)
    model = SmallModel(small_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.small_lr)
    amp = config.amp and device.type == "cuda"
    best_auroc, best_state, stale = -math.inf, None, 0
    for epoch in range(1, config.small_epochs + 1):
        model.train()
        total, count = 0.0, 0
        for idx in batches(data.index["train"], config.small_batch_size, epoch_generator(config.seed, 0, epoch)):
            with autocast(device, amp):
                loss = task_loss(model(data.small_batch(idx)).float(), data.labels[idx], pos_weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.detach() * len(idx), count + len(idx)
        val = data.index["val"]
        logits, _ = small_outputs(model, data, config.small_batch_size, amp, val)  # the val split only
        val_auroc = auroc(data.labels[val], torch.sigmoid(logits))
        console.print(f"small model: epoch {epoch:3d}  loss {float(total) / count:.4f}  val AUROC {val_auroc:.4f}")
        if val_auroc > best_auroc:
            best_auroc, stale = val_auroc, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.small_patience:
                console.print(f"small model: early stop: no val AUROC gain in {stale} epochs (best {best_auroc:.4f})")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


def small_provenance(task: str, data: TaskData) -> dict[str, Any]:
    """What a saved small model was trained for: the task and its sorted train sample ids."""
    return {"task": task, "train_ids": sorted(data.sample_ids[i] for i in data.index["train"].cpu().tolist())}


def load_small(path: Path, data: TaskData, device: torch.device, task: str | None = None) -> SmallModel:
    """A small model saved by :func:`save_module`; refuses one built for other inputs than this manifest's.

    With ``task`` (a small model trained elsewhere) it also refuses one trained for another task, one without
    its provenance, and one whose train samples include this run's validation or test samples (they would no
    longer be held out).
    """
    state, saved = load_module_state(path)
    saved_config = small_config_from_dict(saved)
    expected = small_config_dict(data.small_config)["inputs"]
    if small_config_dict(saved_config)["inputs"] != expected:
        raise ValueError(
            f"small checkpoint {path} was built for inputs {sorted(saved['inputs'])} with other shapes; this "
            f"manifest's small inputs are {sorted(expected)}"
        )
    if task is not None:
        if "task" not in saved or "train_ids" not in saved:
            raise ValueError(
                f"small checkpoint {path} does not record its task and train samples, so it cannot be shown not to "
                "have seen this run's validation or test patients; retrain it (adacomed-train saves both)"
            )
        if saved["task"] != task:
            raise ValueError(f"small checkpoint {path} was trained for task {saved['task']!r}, this run is {task!r}")
        trained_on = set(saved["train_ids"])
        for split in ("val", "test"):
            ids = (data.sample_ids[i] for i in data.index[split].cpu().tolist())
            seen = sorted(sid for sid in ids if sid in trained_on)
            if seen:
                raise ValueError(
                    f"small checkpoint {path} was trained on {len(seen)} samples of this run's {split} split "
                    f"(first: {seen[0]!r}); it would leak them into evaluation: train the small model here instead"
                )
    model = SmallModel(saved_config).to(device)
    model.load_state_dict(state)
    return model


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


# --------------------------------------------------------------------------------------- stage (b): co-train
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
    evaluated with it. ``sim_mean`` and ``loss`` are batch diagnostics (the contrastive term needs a batch).
    """
    model.eval()
    device = data.labels.device
    w_large, w_small = (torch.tensor(float(w), device=device) for w in weights)
    large, small, available = [], [], []
    sim_sum = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
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
        task = model.fuse(out, w_large, w_small)
        per_sample = task_loss(task, data.labels[batch], pos_weight)
        large.append(out.large_logits)
        small.append(out.small_logits)
        available.append(out.large_available)
        sim_sum += sim_mean * len(batch)
        loss_sum += (per_sample.mean() + model.preset.contrastive_weight * contrastive) * len(batch)
    large_logits, small_logits = torch.cat(large), torch.cat(small)
    empty = large_logits.new_empty(0)
    whole = CollabOutput(large_logits, small_logits, empty, empty, empty, torch.cat(available))
    fused = model.fuse(whole, w_large, w_small)
    return {
        "large_logits": large_logits,
        "small_logits": small_logits,
        "prob_fused": torch.sigmoid(fused),
        "w_large": float(weights[0]),
        "w_small": float(weights[1]),
        "sim_mean": float(sim_sum) / max(len(idx), 1),
        "loss": float(loss_sum) / max(len(idx), 1),
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
    generator = epoch_generator(config.seed, 1, epoch)
    for step, idx in enumerate(batches(data.index["train"], config.batch_size, generator)):
        lr = lr_at((epoch - 1) * steps_per_epoch + step, total_steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp):
            out = model(data.large_batch(idx), data.present[idx], small_feat[idx])
            losses = model.loss(out, data.labels[idx], pos_weight)
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
        f"w_L/w_S {record['w_large']:.3f}/{record['w_small']:.3f}  "
        f"val AUROC {record['val_auroc']:.4f} AUPRC {record['val_auprc']:.4f}  lr {record['lr']:.2e}"
    )


# --------------------------------------------------------------------------------------------------- the run
def _write_small_features(path: Path, features: torch.Tensor, sample_ids: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({"features": features.cpu().contiguous()}, str(tmp), metadata={"sample_ids": json.dumps(sample_ids)})
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()


def train_run(
    config: TrainConfig,
    on_epoch_end: EpochHook | None = None,
    console: Console | None = None,
    manifest: Manifest | None = None,
) -> RunResult:
    """Run both stages and write every output into ``config.out``; used by ``adacomed-train`` and pipelines."""
    from .report import write_outputs

    console = console or Console()
    if config.weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {config.weighting!r} is not one of {list(WEIGHTINGS)}")
    for name in ("task", "manifest", "cache", "out"):
        if not getattr(config, name):
            raise ValueError(f"config field {name!r} is required")
    run_dir, device = Path(config.out), resolve_device(config.device)
    ckpt_dir = run_dir / "checkpoints"
    last_meta = read_meta(ckpt_dir, "last")
    if config.resume and last_meta is None:
        raise ResumeError(f"--resume: {ckpt_dir} holds no checkpoint to continue from")
    if not config.resume and last_meta is not None:
        raise ResumeError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    preset = resolved_preset(config)
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
    architecture = fingerprint_dict(config)
    optimisation = optimisation_dict(config)
    split_sha256 = split_digest(data.sample_ids, data.splits)
    if last_meta is not None:
        check_resumable(last_meta, architecture, data.cache_keys, optimisation, split_sha256)
    console.print(f"[bold]adacomed-train[/] task={config.task} weighting={config.weighting} device={device}")
    for message in weighting_warnings(config.weighting, preset):
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)
        warnings.warn(message, UserWarning, stacklevel=2)
    if not config.small_checkpoint:  # a bad mome_heads fails now, not after the small model has trained
        check_heads(config.small_hidden_dim, len(data.large), config.mome_heads)
    console.print(describe(data))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.toml", to_toml(config).encode())

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        seed_everything(config.seed)
        data.to(device)
        amp = config.amp and device.type == "cuda"
        pos_weight = parse_pos_weight(config.pos_weight, data.labels[data.index["train"]].cpu())
        small_path = run_dir / "small_model.safetensors"
        # ---- stage (a): the small model, trained here unless resumed or given
        if last_meta is not None:
            small = load_small(small_path, data, device)
        elif config.small_checkpoint:
            small = load_small(Path(config.small_checkpoint), data, device, task=config.task)
        else:
            small = train_small(data, config, device, pos_weight, console)
        freeze(small)
        if not (last_meta is not None or config.small_checkpoint):
            save_module(small_path, small, {**small_config_dict(small.config), **small_provenance(config.task, data)})
        elif config.small_checkpoint:  # keep the given model's own provenance (its train ids, not ours)
            save_module(small_path, small, load_module_state(Path(config.small_checkpoint))[1])
        small_logits_all, small_feat = small_outputs(small, data, config.small_batch_size, amp)
        _write_small_features(run_dir / "small_features.safetensors", small_feat, data.sample_ids)

        # ---- stage (b): co-training
        torch.manual_seed(config.seed + 1)
        model = CollaborativeModel(
            data.large_dims,
            small_feat.shape[1],
            preset,
            config.weighting,
            small_head=small.head,
            mome_heads=config.mome_heads,
            contrastive_symmetric=config.contrastive_symmetric,
        ).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        history: list[dict[str, Any]] = []
        best_auroc, best_epoch, start = -math.inf, 0, 1
        if last_meta is not None:
            meta = load_checkpoint(ckpt_dir, "last", model, optimizer)
            history, best_auroc, best_epoch = meta["history"], meta["best_val_auroc"], meta["best_epoch"]
            start = meta["epoch"] + 1
            console.print(f"resuming after epoch {meta['epoch']} (best val AUROC {best_auroc:.4f})")
        steps_per_epoch = len(batches(data.index["train"], config.batch_size))
        meta_base = {
            "config": json.loads(json.dumps(config.to_dict())),
            "architecture": architecture,
            "optimisation": optimisation,
            "split_sha256": split_sha256,
            "cache_keys": data.cache_keys,
            "model_args": {
                "large_dims": data.large_dims,
                "small_dim": int(small_feat.shape[1]),
                "preset": architecture["preset"],
                "weighting": config.weighting,
            },
        }
        for epoch in range(start, config.epochs + 1):
            started = time.perf_counter()
            record = {
                "epoch": epoch,
                **cotrain_epoch(model, optimizer, data, small_feat, config, epoch, steps_per_epoch, pos_weight, amp),
            }
            deployed = (record["w_large"], record["w_small"])
            val = evaluate(model, data, data.index["val"], small_feat, config, pos_weight, amp, deployed)
            val_metrics = binary_metrics(data.labels[data.index["val"]].cpu().numpy(), val["prob_fused"].cpu().numpy())
            record.update(
                val_auroc=val_metrics["auroc"],
                val_auprc=val_metrics["auprc"],
                val_loss=val["loss"],
                val_sim=val["sim_mean"],
                seconds=time.perf_counter() - started,
            )
            history.append(record)
            console.print(log_line(record))
            if record["val_auroc"] > best_auroc:
                best_auroc, best_epoch = record["val_auroc"], epoch
                save_checkpoint(
                    ckpt_dir,
                    "best",
                    model,
                    {
                        **meta_base,
                        "epoch": epoch,
                        "best_val_auroc": best_auroc,
                        "deployed_weights": {"w_large": deployed[0], "w_small": deployed[1]},
                    },
                )
            save_checkpoint(
                ckpt_dir,
                "last",
                model,
                {
                    **meta_base,
                    "epoch": epoch,
                    "best_val_auroc": best_auroc,
                    "best_epoch": best_epoch,
                    "history": history,
                },
                optimizer,
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        if best_epoch > 0:
            deployed_weights = load_checkpoint(ckpt_dir, "best", model)["deployed_weights"]
        elif history:  # no epoch had a finite validation AUROC: the last epoch's model and weights
            deployed_weights = {"w_large": history[-1]["w_large"], "w_small": history[-1]["w_small"]}
        else:  # zero epochs: no training step to average over; the weights of full agreement (sim = 1)
            with torch.no_grad():
                pair = model.weights(torch.ones((), device=device))
            deployed_weights = {"w_large": float(pair[0]), "w_small": float(pair[1])}
        deployed = (float(deployed_weights["w_large"]), float(deployed_weights["w_small"]))
        outputs = {
            split: evaluate(model, data, data.index[split], small_feat, config, pos_weight, amp, deployed)
            for split in ("train", "val", "test")
        }
        metrics, predictions = write_outputs(
            run_dir, config, data, outputs, small_logits_all, history, best_epoch, console
        )
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
    return RunResult(run_dir=run_dir, metrics=metrics, history=history, best_epoch=best_epoch, predictions=predictions)
