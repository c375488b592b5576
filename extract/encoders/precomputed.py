"""Precomputed features as an encoder: shipped vectors (MMIST CT (1,1,512,1), WSI (1,1024)) or your own.

The "model" is the identity; the ``features`` reader reads ``.npy``/``.npz`` files (never pickles) or inline
values and flattens them to float32; the encoder checks every sample has the same size, so they enter the same
cache as any embedding. Without a ``dim`` option the first sample read fixes it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import ExtractError, InputError
from .base import TINY_RANDOM, Encoder, EncoderSpec, register_encoder

PRECOMPUTED_SPEC = EncoderSpec(
    "precomputed",
    "features",
    0,
    "none",
    reader="features",
    options=("dim",),
    default_weights="",
    version="1",
    description="pre-extracted feature files (.npy/.npz) or inline vectors, flattened (no model)",
)


class PrecomputedEncoder(Encoder):
    """Identity encoder over stored feature arrays (read by the ``features`` reader)."""

    def __init__(
        self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto", dim: int | None = None
    ):
        if weights not in (None, "", TINY_RANDOM):
            raise ExtractError(f"{spec.name} has no weights; got --weights {weights!r}")
        super().__init__(spec, "", device, "float32" if dtype == "auto" else dtype)
        if dim is not None and int(dim) <= 0:
            raise ExtractError(f"{spec.name}: dim must be positive, got {dim}")
        self.embed_dim = int(dim) if dim is not None else 0
        self._dim_lock = threading.Lock()

    def build_model(self) -> Any:
        import torch

        return torch.nn.Identity()

    def prepare(self, vector: np.ndarray) -> np.ndarray:
        with self._dim_lock:
            if self.embed_dim == 0:
                self.embed_dim = int(vector.size)
        if vector.size != self.embed_dim:
            raise InputError(f"expected {self.embed_dim} feature values, found {vector.size}", "preprocess")
        return vector

    def forward(self, batch: Any) -> Any:
        return self.model(batch)

    def preprocessing(self) -> dict[str, Any]:
        return {}

    def weights_identity(self) -> str:
        return "none"


@register_encoder(PRECOMPUTED_SPEC)
def build_precomputed(
    weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any
) -> PrecomputedEncoder:
    return PrecomputedEncoder(PRECOMPUTED_SPEC, weights, device, dtype, **options)
