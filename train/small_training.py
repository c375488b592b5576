"""Stage (a): the task-driven small model, trained on the task alone, its checkpoints and its saved file.

One or more members (``small_ensemble``; member k is initialised with its own seed) are trained in turn with
BCE, AdamW (or Adam), early stopping on ``small_selection`` (validation loss by default: steadier than AUROC over
a dozen validation positives) and the best epoch's weights kept. The members form one
:class:`~adacomed.train.small_model.SmallEnsemble` (logit = the members' mean), which is frozen and whose
features the co-training reads.

Checkpoint ``checkpoints/small.json`` (committed per ``checkpoint_seconds`` and at each member's end): the
finished members, the live member's model, optimizer, RNG and best state, its epoch, best value, patience
counter and the history. A resumed run continues the live member at the next epoch; ``done`` marks the stage
finished. The trained small model is also saved as ``small_model.safetensors`` (one file: tensors plus its
config and provenance in the safetensors metadata), reusable with ``--small-checkpoint``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..cache_schema.atomic import atomic_write_bytes, atomic_write_json
from .checkpoint import commit_checkpoint, encode_tensors, load_checkpoint, restore_training_state, training_state
from .config import focal_gamma_of
from .data import TaskData
from .losses import task_loss
from .metrics import binary_metrics
from .runtime import STAGE_SMALL, RunContext, autocast, batches, epoch_generator, improved
from .small_model import SmallEnsemble, SmallInputSpec, SmallModel, SmallModelConfig

CHECKPOINT = "small"
METADATA_KEY = "adacomed_small_model"
FILE_NAME = "small_model.safetensors"


# ------------------------------------------------------------------------------------------ config <-> JSON
def small_config_dict(config: SmallModelConfig) -> dict[str, Any]:
    """JSON-able config; ``input_order`` keeps the inputs' order (JSON writers may sort keys, and the order of
    the inputs is the order of their features in the fusion layer)."""
    return json.loads(
        json.dumps(
            {
                "inputs": {k: vars(v) for k, v in config.inputs.items()},
                "input_order": list(config.inputs),
                "hidden_dim": config.hidden_dim,
                "dropout": config.dropout,
            }
        )
    )


def small_config_from_dict(data: dict[str, Any]) -> SmallModelConfig:
    order = data.get("input_order") or list(data["inputs"])
    inputs = {name: SmallInputSpec(**data["inputs"][name]) for name in order}
    return SmallModelConfig(inputs=inputs, hidden_dim=int(data["hidden_dim"]), dropout=float(data["dropout"]))


def member_seed(seed: int, member: int) -> int:
    return seed + 7919 * member


# ---------------------------------------------------------------------------------------------- outputs
@torch.no_grad()
def small_outputs(
    model: torch.nn.Module, data: TaskData, batch_size: int, amp: bool, idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of a small model in eval mode for ``idx`` (default: every sample, in order)."""
    model.eval()
    device = data.labels.device
    logits, feats = [], []
    rows = torch.arange(data.n, device=device) if idx is None else idx
    for chunk in batches(rows, batch_size):
        with autocast(device, amp):
            feat = model.features(data.small_batch(chunk))
            logit = model.head(feat).squeeze(-1)
        feats.append(feat.float())
        logits.append(logit.float())
    return torch.cat(logits), torch.cat(feats)


def validation_scores(run: RunContext, model: torch.nn.Module) -> tuple[float, float]:
    """(BCE loss, AUROC) of a small model on the validation split."""
    val = run.data.index["val"]
    logits, _ = small_outputs(model, run.data, run.config.small_batch_size, run.amp, val)
    labels = run.data.labels[val]
    loss = float(task_loss(logits, labels, run.pos_weight).mean())
    auroc = binary_metrics(labels.cpu().numpy(), torch.sigmoid(logits).cpu().numpy())["auroc"]
    return loss, auroc


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


# --------------------------------------------------------------------------------------------- training
def _optimizer(run: RunContext, model: torch.nn.Module) -> torch.optim.Optimizer:
    config = run.config
    kind = torch.optim.AdamW if config.small_optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.small_lr, weight_decay=config.small_weight_decay)


def _train_epoch(run: RunContext, model: SmallModel, optimizer: torch.optim.Optimizer, epoch: int, seed: int) -> float:
    data, config = run.data, run.config
    model.train()
    total, count = torch.zeros((), device=run.device), 0
    for idx in batches(data.index["train"], config.small_batch_size, epoch_generator(seed, STAGE_SMALL, epoch)):
        with autocast(run.device, run.amp):
            logits = model(data.small_batch(idx)).float()
            loss = task_loss(logits, data.labels[idx], run.pos_weight, focal_gamma_of(run.config)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.detach() * len(idx), count + len(idx)
    return float(total) / max(count, 1)


def _clone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finished_tensors(finished: list[SmallModel]) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, member in enumerate(finished) for k, v in member.state_dict().items()}


def _commit(run: RunContext, finished: list[SmallModel], progress: dict[str, Any], live: dict | None) -> None:
    """Commit stage (a)'s state: finished members, and the live member's training state when given."""
    groups: dict[str, dict[str, torch.Tensor]] = {"finished": _finished_tensors(finished)}
    meta = {**run.resume_meta, "stage": "small", **progress, "n_finished": len(finished)}
    if live is not None:
        state, param_groups = training_state(live["model"], live["optimizer"])
        groups.update(state)
        if live["best_state"] is not None:
            groups["best"] = live["best_state"]
        meta["param_groups"] = param_groups
    commit_checkpoint(run.checkpoints, CHECKPOINT, groups, meta)
    run.clock.reset()
    what = "small model done" if progress["done"] else f"small model {progress['member'] + 1}/"
    if not progress["done"]:
        what += f"{run.config.small_ensemble} epoch {progress['epoch']}"
    run.say(f"checkpoint committed: {what}")


def train_member(
    run: RunContext, k: int, finished: list[SmallModel], history: list[dict], resume: Any = None
) -> SmallModel:
    """Train member ``k`` (continuing ``resume``, a checkpoint of it, when given); returns its best state."""
    config, small_config = run.config, _member_config(run)
    seed = member_seed(config.seed, k)
    torch.manual_seed(seed)
    model = SmallModel(small_config).to(run.device)
    optimizer = _optimizer(run, model)
    best_state, best_value, best_epoch, stale, start = None, math.nan, 0, 0, 1
    if resume is not None:
        restore_training_state(resume, model, optimizer)
        best_state = resume.tensors.get("best")
        meta = resume.meta
        best_value = math.nan if meta["best_value"] is None else meta["best_value"]
        best_epoch, stale, start = meta["best_epoch"], meta["stale"], meta["epoch"] + 1
    criterion = config.small_selection
    label = f"small model {k + 1}/{config.small_ensemble}" if config.small_ensemble > 1 else "small model"
    for epoch in range(start, config.small_epochs + 1):
        train_loss = _train_epoch(run, model, optimizer, epoch, seed)
        val_loss, val_auroc = validation_scores(run, model)
        value = val_loss if criterion == "val_loss" else val_auroc
        history.append({"member": k, "epoch": epoch, "loss": train_loss, "val_loss": val_loss, "val_auroc": val_auroc})
        run.say(f"{label}: epoch {epoch:3d}  loss {train_loss:.4f}  val loss {val_loss:.4f}  val AUROC {val_auroc:.4f}")
        if improved(value, best_value, criterion):
            best_state, best_value, best_epoch, stale = _clone(model), value, epoch, 0
        else:
            stale += 1
        if stale >= config.small_patience or epoch == config.small_epochs:
            if stale >= config.small_patience:
                run.say(f"{label}: early stop after {stale} epochs without a better {criterion}")
            break
        if run.clock.due():
            progress = {
                "done": False,
                "member": k,
                "epoch": epoch,
                "best_value": None if math.isnan(best_value) else best_value,
                "best_epoch": best_epoch,
                "stale": stale,
                "history": history,
            }
            _commit(run, finished, progress, {"model": model, "optimizer": optimizer, "best_state": best_state})
    if best_state is not None:
        model.load_state_dict(best_state)
    run.say(f"{label}: kept epoch {best_epoch} ({criterion} {best_value:.4f})")
    return model


def _member_config(run: RunContext) -> SmallModelConfig:
    return replace(run.data.small_config, hidden_dim=run.config.small_hidden_dim, dropout=run.config.small_dropout)


def _members_from(tensors: dict[str, torch.Tensor], count: int, config: SmallModelConfig, device) -> list[SmallModel]:
    members = []
    for i in range(count):
        prefix = f"{i}."
        member = SmallModel(config).to(device)
        member.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        members.append(member)
    return members


def train_small_stage(run: RunContext) -> SmallEnsemble:
    """Train (or continue) every member of the small model; commits ``small.json`` as it goes."""
    config = run.config
    checkpoint = load_checkpoint(run.checkpoints, CHECKPOINT)
    finished: list[SmallModel] = []
    history: list[dict] = []
    start = 0
    if checkpoint is not None:
        meta = checkpoint.meta
        finished = _members_from(checkpoint.tensors["finished"], meta["n_finished"], _member_config(run), run.device)
        history, start = list(meta["history"]), meta["member"]
        if meta["done"]:
            run.say(f"small model: finished in the checkpoint ({len(finished)} member(s)); not retrained")
            return SmallEnsemble(finished)
        run.say(f"small model: resuming member {start + 1} after epoch {meta['epoch']}")
    for k in range(start, config.small_ensemble):
        resume = checkpoint if checkpoint is not None and k == start and "model" in checkpoint.tensors else None
        finished.append(train_member(run, k, finished, history, resume))
        done = k + 1 == config.small_ensemble
        _commit(run, finished, {"done": done, "member": k + 1, "epoch": 0, "history": history}, None)
    return SmallEnsemble(finished)


# ----------------------------------------------------------------------------------------- the saved file
def save_small_model(path: str | Path, model: SmallEnsemble, provenance: dict[str, Any]) -> None:
    """One safetensors file: the ensemble's tensors, its config and provenance in the metadata (one atomic
    write); a readable copy of the metadata goes to ``<path>.json``."""
    path = Path(path)
    info = {
        **small_config_dict(model.config),
        "members": len(model.members),
        **provenance,
    }
    atomic_write_bytes(path, encode_tensors(dict(model.state_dict()), {METADATA_KEY: json.dumps(info)}))
    atomic_write_json(path.with_suffix(".json"), info)


def read_small_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"small model {path} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"small model {path} carries no config in its metadata (written by an older adacomed-train); retrain it"
        )
    return json.loads(metadata[METADATA_KEY])


def small_provenance(task: str, data: TaskData) -> dict[str, Any]:
    """What a saved small model was trained for: the task and its sorted train sample ids."""
    return {"task": task, "train_ids": sorted(data.sample_ids[i] for i in data.index["train"].cpu().tolist())}


def load_small_model(path: str | Path, data: TaskData, device: torch.device, task: str | None = None) -> SmallEnsemble:
    """A small model saved by :func:`save_small_model`; refuses one built for other inputs than this manifest's.

    With ``task`` (a small model trained elsewhere) it also refuses one trained for another task and one whose
    train samples include this run's validation or test samples (they would no longer be held out).
    """
    info = read_small_info(path)
    saved = small_config_from_dict(info)
    expected = small_config_dict(data.small_config)
    if small_config_dict(saved)["inputs"] != expected["inputs"]:
        raise ValueError(
            f"small model {path} was built for inputs {sorted(info['inputs'])} with other shapes; this "
            f"manifest's small inputs are {sorted(expected['inputs'])}"
        )
    if task is not None:
        if info.get("task") != task:
            raise ValueError(f"small model {path} was trained for task {info.get('task')!r}, this run is {task!r}")
        trained_on = set(info.get("train_ids", []))
        for split in ("val", "test"):
            ids = (data.sample_ids[i] for i in data.index[split].cpu().tolist())
            seen = sorted(sid for sid in ids if sid in trained_on)
            if seen:
                raise ValueError(
                    f"small model {path} was trained on {len(seen)} samples of this run's {split} split "
                    f"(first: {seen[0]!r}); it would leak them into evaluation: train the small model here instead"
                )
    members = [SmallModel(saved).to(device) for _ in range(int(info["members"]))]
    model = SmallEnsemble(members).to(device)
    model.load_state_dict(load_file(str(path)))
    return model
