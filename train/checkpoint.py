"""Checkpoints as commits, the way the cache commits a shard; no pickle anywhere.

A checkpoint ``<run>/checkpoints/<name>.json`` names its tensor files, ``checkpoints/tensors/<digest>.safetensors``,
each named by the sha256 of its bytes, written atomically and never changed afterwards. The atomic rename of the
JSON is the single commit point: a kill before it leaves the previous checkpoint in force (plus, at most, tensor
files nothing references, collected at the next commit); a kill after it leaves the new one. A checkpoint is
therefore never a mix of two epochs, and a file whose bytes do not match the digest its JSON records is refused,
never loaded.

The JSON also holds what a resume checks (architecture, optimisation settings, split and cache keys) and
whatever the stage needs to continue (epoch, best metric, history, the optimizer's param groups).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save as tensor_bytes

from ..cache_schema.atomic import atomic_write_bytes, atomic_write_json, remove_dead_temps

TENSOR_DIR = "tensors"
DIGEST_CHARS = 24  # of the sha256 hex digest, in file names (the JSON keeps the whole digest)
RNG_PREFIX = "rng."


class ResumeError(RuntimeError):
    """``--resume`` cannot continue this run: the checkpoint is damaged or was made for another model or cache."""


@dataclass
class Checkpoint:
    """A committed checkpoint: its JSON (``meta``) and its tensor groups, each checked against its digest."""

    meta: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]


def encode_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU copies (the same tensors always give the same bytes)."""
    return tensor_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def commit_checkpoint(
    folder: str | Path, name: str, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> Path:
    """Write each tensor group as a content-named file, then commit ``<name>.json`` naming them; returns its path."""
    folder = Path(folder)
    tensor_dir = folder / TENSOR_DIR
    files: dict[str, dict[str, str]] = {}
    for group, tensors in groups.items():
        data = encode_tensors(tensors)
        digest = hashlib.sha256(data).hexdigest()
        path = tensor_dir / f"{digest[:DIGEST_CHARS]}.safetensors"
        if not path.exists() or path.stat().st_size != len(data):
            atomic_write_bytes(path, data)
        files[group] = {"file": f"{TENSOR_DIR}/{path.name}", "sha256": digest}
    json_path = folder / f"{name}.json"
    atomic_write_json(json_path, {**meta, "files": files})
    collect_garbage(folder)
    return json_path


def read_meta(folder: str | Path, name: str) -> dict[str, Any] | None:
    """The committed JSON of checkpoint ``name`` (None when there is none)."""
    path = Path(folder) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:  # cannot happen through commit_checkpoint; a hand-edited file can
        raise ResumeError(
            f"checkpoint {path} is not valid JSON ({exc}); move it away to start the run afresh"
        ) from None


def load_checkpoint(folder: str | Path, name: str) -> Checkpoint | None:
    """The committed checkpoint ``name`` with every tensor file verified; None when nothing was committed."""
    folder = Path(folder)
    meta = read_meta(folder, name)
    if meta is None:
        return None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for group, entry in meta.get("files", {}).items():
        path = folder / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ResumeError(f"checkpoint {folder / name}.json names {entry['file']}, which is missing") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ResumeError(f"checkpoint file {path} does not match the digest its checkpoint records: damaged")
        tensors[group] = load_tensor_bytes(data)
    return Checkpoint(meta=meta, tensors=tensors)


def collect_garbage(folder: str | Path) -> int:
    """Remove tensor files no committed checkpoint names, and temp files of dead writers; returns the count."""
    folder = Path(folder)
    tensor_dir = folder / TENSOR_DIR
    if not tensor_dir.is_dir():
        return 0
    referenced = set()
    for json_path in folder.glob("*.json"):
        try:
            meta = json.loads(json_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return 0  # never delete on a partial view
        referenced |= {Path(entry["file"]).name for entry in meta.get("files", {}).values()}
    removed = remove_dead_temps(tensor_dir) + remove_dead_temps(folder)
    for path in tensor_dir.glob("*.safetensors"):
        if path.name not in referenced:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------- optimizer and RNG
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer's state to named tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, json.loads(json.dumps(state["param_groups"]))


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The CPU (and CUDA) generator states, so a resumed run draws the same dropout masks and crops."""
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


def training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """The tensor groups of a live training state (model, optimizer + RNG) and the optimizer's param groups."""
    optim, groups = optimizer_tensors(optimizer)
    return {"model": dict(model.state_dict()), "optimizer": {**optim, **rng_tensors()}}, groups


def restore_training_state(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Inverse of :func:`training_state`: model (strict), optimizer and RNG states."""
    model.load_state_dict(checkpoint.tensors["model"])
    restore_optimizer(optimizer, checkpoint.tensors["optimizer"], checkpoint.meta["param_groups"])
    restore_rng(checkpoint.tensors["optimizer"])


# -------------------------------------------------------------------------------------------- resume checks
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
