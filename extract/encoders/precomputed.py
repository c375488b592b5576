"""Precomputed features as an encoder: shipped vectors (MMIST CT (1,1,512,1), WSI (1,1024)) or your own.

The "model" is the identity; the wrapper only reads ``.npy``/``.npz`` files (never pickles) or inline values,
flattens them to float32 and checks every sample has the same size, so they enter the same cache as any
embedding. Without a ``dim`` option the first sample read fixes it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError, InputError
from .base import TINY_RANDOM, Encoder, EncoderSpec, register_encoder

PRECOMPUTED_SPEC = EncoderSpec(
    "precomputed",
    "features",
    0,
    "none",
    default_weights="",
    version="1",
    description="pre-extracted feature files (.npy/.npz) or inline vectors, flattened (no model)",
)


class PrecomputedEncoder(Encoder):
    """Identity encoder over stored feature arrays."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: str | None,
        device: str = "cpu",
        dtype: str = "auto",
        dim: int | None = None,
        key: str | None = None,
    ):
        if weights not in (None, "", TINY_RANDOM):
            raise ExtractError(f"{spec.name} has no weights; got --weights {weights!r}")
        super().__init__(spec, "", device, "float32" if dtype == "auto" else dtype)
        if dim is not None and int(dim) <= 0:
            raise ExtractError(f"{spec.name}: dim must be positive, got {dim}")
        self.embed_dim = int(dim) if dim is not None else 0
        self.key = key
        self._dim_lock = threading.Lock()

    def build_model(self) -> Any:
        import torch

        return torch.nn.Identity()

    def load_input(self, pointer: Any) -> np.ndarray:
        if isinstance(pointer, np.ndarray):
            values, source = pointer, "inline values"
        elif isinstance(pointer, (list, tuple)):
            values, source = np.asarray(pointer), "inline values"
        else:
            path = Path(pointer)
            values, source = self._read_file(path), path.name
        try:
            vector = np.asarray(values, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}: features are not numeric ({exc})", "decode") from None
        if not np.all(np.isfinite(vector)):
            raise InputError(f"{source}: features hold NaN or infinite values", "preprocess")
        with self._dim_lock:
            if self.embed_dim == 0:
                if vector.size == 0:
                    raise InputError(f"{source}: features are empty", "preprocess")
                self.embed_dim = int(vector.size)
        if vector.size != self.embed_dim:
            raise InputError(
                f"{source}: expected {self.embed_dim} feature values, found {vector.size} "
                f"(array shape {np.shape(values)})",
                "preprocess",
            )
        return vector

    def _read_file(self, path: Path) -> np.ndarray:
        suffix = path.suffix.lower()
        if suffix not in (".npy", ".npz"):
            raise InputError(f"{path.name}: precomputed features must be .npy or .npz", "read")
        try:
            loaded = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"feature file not found: {path.name}", "read") from None
        except (ValueError, OSError, EOFError) as exc:
            # allow_pickle=False turns object arrays into ValueError: untrusted pickles are refused here.
            raise InputError(f"cannot decode feature file {path.name}: {exc}", "decode") from None
        if suffix == ".npy":
            return loaded
        with loaded as archive:
            key = self._npz_key(archive.files, path)
            try:
                return archive[key]
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(f"cannot decode array {key!r} in {path.name}: {exc}", "decode") from None

    def _npz_key(self, keys: list[str], path: Path) -> str:
        if self.key is not None:
            if self.key not in keys:
                raise InputError(f"{path.name} has no array {self.key!r} (arrays: {sorted(keys)})", "decode")
            return self.key
        if "arr_0" in keys:
            return "arr_0"
        if len(keys) == 1:
            return keys[0]
        raise InputError(f"{path.name} holds several arrays {sorted(keys)}; pass the key option", "decode")

    def collate(self, samples: list[np.ndarray]) -> Any:
        import torch

        return torch.from_numpy(np.stack(samples))

    def forward(self, batch: Any) -> Any:
        return self.model(batch)

    def preprocessing(self) -> dict[str, Any]:
        return {"reader": "npy/npz/values", "key": self.key or "arr_0|only", "flatten": "C", "dtype": "float32"}

    def weights_identity(self) -> str:
        return "none"


@register_encoder(PRECOMPUTED_SPEC)
def build_precomputed(
    weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any
) -> PrecomputedEncoder:
    unknown = set(options) - {"dim", "key"}
    if unknown:
        raise ExtractError(f"precomputed: unknown options {sorted(unknown)}; known: dim, key")
    return PrecomputedEncoder(PRECOMPUTED_SPEC, weights, device, dtype, **options)
