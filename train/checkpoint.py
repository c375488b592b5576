"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, each file written atomically.

A checkpoint ``<dir>/<name>`` is three files: ``<name>.safetensors`` (model state), ``<name>.optim.safetensors``
(optimizer state flattened to ``state.<param index>.<key>`` plus RNG states) and ``<name>.json`` (config, epoch,
best metric, model arguments, the cache keys trained on, and the optimizer's param-group hyper-parameters).
The JSON is written last, so a checkpoint whose JSON exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..cache_schema.atomic import atomic_write_json, fsync_dir, temp_name

RNG_PREFIX = "rng."


class ResumeError(RuntimeError):
    """``--resume`` cannot continue this run: the checkpoint is missing or was made for another model or cache."""


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def save_module(path: str | Path, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """A standalone module (the small model): ``path`` (.safetensors) plus its config as ``path`` .json."""
    path = Path(path)
    _save_tensors(path, dict(module.state_dict()))
    atomic_write_json(path.with_suffix(".json"), config)


def load_module_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and config json written by :func:`save_module` (no pickle involved)."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    if not path.exists() or not config_path.exists():
        raise FileNotFoundError(f"checkpoint {path} needs both {path.name} and {config_path.name}")
    return load_file(str(path)), json.loads(config_path.read_text())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer's state to named tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The CPU (and CUDA) generator states, so a resumed run draws the same dropout masks."""
    tensors = {f"{RNG_PREFIX}cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG_PREFIX}cuda.{i}"] = st
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if f"{RNG_PREFIX}cpu" in tensors:
        torch.set_rng_state(tensors[f"{RNG_PREFIX}cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(f"{RNG_PREFIX}cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    folder: str | Path,
    name: str,
    model: torch.nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write model (and optimizer + RNG) tensors, then the JSON ``meta`` last; returns the JSON path."""
    folder = Path(folder)
    _save_tensors(folder / f"{name}.safetensors", dict(model.state_dict()))
    payload = dict(meta)
    if optimizer is not None:
        tensors, groups = optimizer_tensors(optimizer)
        tensors.update(rng_tensors())
        _save_tensors(folder / f"{name}.optim.safetensors", tensors)
        payload["param_groups"] = groups
    json_path = folder / f"{name}.json"
    atomic_write_json(json_path, payload)
    return json_path


def read_meta(folder: str | Path, name: str) -> dict[str, Any] | None:
    path = Path(folder) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_checkpoint(
    folder: str | Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load tensors into ``model`` (strict) and ``optimizer``, restore RNG states; returns the JSON meta."""
    folder = Path(folder)
    meta = read_meta(folder, name)
    if meta is None:
        raise ResumeError(f"no checkpoint {name!r} in {folder}")
    model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    if optimizer is not None:
        tensors = load_file(str(folder / f"{name}.optim.safetensors"))
        restore_optimizer(optimizer, tensors, meta["param_groups"])
        restore_rng(tensors)
    return meta


def split_digest(sample_ids: list[str], splits: Any) -> str:
    """sha256 of the sorted (sample_id, split) pairs: the carve a run trained and validated on."""
    pairs = sorted(zip((str(s) for s in sample_ids), (str(s) for s in splits)))
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def check_resumable(
    meta: dict[str, Any],
    architecture: dict[str, Any],
    cache_keys: dict[str, str],
    optimisation: dict[str, Any] | None = None,
    split_sha256: str | None = None,
) -> None:
    """Refuse (:class:`ResumeError`) when the checkpoint's architecture, optimisation settings, split or cache
    keys differ from now."""
    problems = []
    saved_arch = meta.get("architecture", {})
    for name in sorted(set(saved_arch) | set(architecture)):
        if saved_arch.get(name) != architecture.get(name):
            problems.append(
                f"architecture field {name!r}: checkpoint {saved_arch.get(name)!r}, now {architecture.get(name)!r}"
            )
    if optimisation is not None:
        saved_opt = meta.get("optimisation", {})
        for name in sorted(set(saved_opt) | set(optimisation)):
            if saved_opt.get(name) != optimisation.get(name):
                problems.append(
                    f"optimisation field {name!r} changes the optimisation: checkpoint {saved_opt.get(name)!r}, "
                    f"now {optimisation.get(name)!r}"
                )
    if split_sha256 is not None and meta.get("split_sha256") != split_sha256:
        problems.append(
            "the train/val/test assignment differs from the checkpoint's (sha256 of the sorted (sample_id, split) "
            f"pairs: checkpoint {str(meta.get('split_sha256'))[:12]}, now {split_sha256[:12]}); a changed seed, "
            "val_fraction or manifest split moves samples between train and validation"
        )
    saved_keys = meta.get("cache_keys", {})
    for name in sorted(set(saved_keys) | set(cache_keys)):
        if saved_keys.get(name) != cache_keys.get(name):
            problems.append(
                f"cache of {name!r}: checkpoint trained on {saved_keys.get(name)!r}, now {cache_keys.get(name)!r}"
            )
    if problems:
        raise ResumeError(
            "cannot resume: this run differs from its checkpoint (start a new --out, or restore the old inputs):\n  "
            + "\n  ".join(problems)
        )
