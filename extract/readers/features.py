"""Precomputed feature vectors: ``.npy`` / ``.npz`` files (never unpickled) or inline values in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import InputReader, ReaderSpec, register_reader


@register_reader
class FeaturesReader(InputReader):
    """A stored array, flattened to float32: MMIST's shipped CT (1, 1, 512, 1) and WSI (1, 1024) vectors, or yours.

    Options: ``key`` names the array of an ``.npz`` holding several (default ``arr_0``, or its only array).
    """

    spec = ReaderSpec(
        "features", version="1", description="feature files (.npy/.npz, no pickle) or inline vectors", options=("key",)
    )

    def __init__(self, key: str | None = None):
        super().__init__(**({} if key is None else {"key": key}))
        self.key = key

    def read(self, pointer: Any) -> np.ndarray:
        if isinstance(pointer, (np.ndarray, list, tuple)):
            values, source = np.asarray(pointer), "inline values"
        else:
            path = Path(pointer)
            values, source = self._read_file(path), path.name
        try:
            vector = np.asarray(values, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}: features are not numeric ({exc})", "decode") from None
        if vector.size == 0:
            raise InputError(f"{source}: features are empty", "preprocess")
        if not np.all(np.isfinite(vector)):
            raise InputError(f"{source}: features hold NaN or infinite values", "preprocess")
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

    def parameters(self) -> dict[str, Any]:
        return {"reader": "npy/npz/values", "key": self.key or "arr_0|only", "flatten": "C", "dtype": "float32"}

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "ct.npz", rng.standard_normal((1, 1, 512, 1)).astype(np.float32))
        np.save(folder / "ct.npy", rng.standard_normal((1, 1, 512, 1)).astype(np.float32))
        return [folder / "ct.npz", folder / "ct.npy", rng.standard_normal(512).astype(np.float32)]
