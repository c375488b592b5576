"""What both training stages share: device, seeding, batch order, learning-rate schedule, autocast, pos_weight.

Batch order depends only on (seed, stage, epoch) and the RNG states are part of every checkpoint, so a run
resumed from any checkpoint draws exactly what the unbroken run would have drawn.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .config import TrainConfig
from .data import TaskData

STAGE_SMALL, STAGE_COTRAIN = 0, 1


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


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on the CPU for the duration (a CPU run is bit-for-bit repeatable and resumable)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


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


class CommitClock:
    """When to commit a checkpoint: every ``seconds`` of training (0 = every epoch) and whenever asked to."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds <= 0 or time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


def improved(value: float, best: float, criterion: str) -> bool:
    """Whether ``value`` of ``criterion`` (val_loss: lower is better; val_auroc: higher) beats ``best``; NaN never
    does."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if criterion == "val_loss" else value > best


@dataclass
class RunContext:
    """Everything the steps of one run share, made once by ``loop.setup``."""

    config: TrainConfig
    data: TaskData
    device: torch.device
    amp: bool
    pos_weight: float | None
    console: Console
    run_dir: Path
    resume_meta: dict[str, Any]  # architecture, optimisation, split and cache keys: checked on --resume
    clock: CommitClock

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def say(self, message: str, style: str | None = None) -> None:
        self.console.print(message, style=style, markup=False, highlight=False)
