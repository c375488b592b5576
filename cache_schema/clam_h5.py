"""CLAM's HDF5 layouts, so CLAM and TRIDENT users can reuse what AdaCoMed writes and the other way round.

* ``patches/<slide_id>.h5``: dataset ``coords`` (N, 2) int64, level-0 top-left (x, y), with CLAM's attributes on
  it (``patch_size``, ``patch_level``, ``downsample``, ``downsampled_level_dim``, ``level_dim``, ``name``,
  ``save_path``); written by ``adacomed-extract --patch-only``.
* ``h5_files/<slide_id>.h5``: ``features`` (N, D) float32 and ``coords`` (N, 2) int32, as CLAM's
  ``extract_features_fp.py`` writes them; written by ``adacomed-cache export-clam`` from a cache's bags and read
  back by the ``clam-h5`` import path. CLAM's ``pt_files/*.pt`` are pickles and are never written or read here.

Every file is written to a temporary name in its folder and renamed into place, so a crash leaves the old file
or the new one, never a half-written one (CLAM writes in place).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import fsync_dir, temp_name
from .errors import CacheError


def _atomic_h5(path: Path, fill: Any) -> Path:
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with h5py.File(tmp, "w") as fh:
            fill(fh)
        with open(tmp, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def _chunk_rows(n: int, width: int) -> tuple[int, int]:
    # ~1 MB chunks (CLAM's one-row chunks make reading a bag thousands of tiny reads).
    return max(1, min(n, (1 << 20) // max(1, 4 * width))), width


def write_patch_coords(path: str | os.PathLike, coords: np.ndarray, attrs: dict[str, Any]) -> Path:
    """CLAM's ``patches/<slide_id>.h5``; ``attrs`` are stored on the ``coords`` dataset as CLAM does."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)

    def fill(fh: Any) -> None:
        dataset = fh.create_dataset(
            "coords", data=coords, maxshape=(None, 2), chunks=_chunk_rows(len(coords), 2) if len(coords) else None
        )
        for key, value in attrs.items():
            dataset.attrs[key] = np.asarray(value) if isinstance(value, (list, tuple)) else value

    return _atomic_h5(Path(path), fill)


def read_patch_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``coords`` (int64) and its attributes from a CLAM or AdaCoMed ``patches/<slide_id>.h5``."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            dataset = fh["coords"]
            coords = np.asarray(dataset[:], dtype=np.int64).reshape(-1, 2)
            attrs = {k: _plain(v) for k, v in dataset.attrs.items()}
    except (OSError, KeyError) as exc:
        raise CacheError(f"{Path(path).name}: not a CLAM patch file with a 'coords' dataset ({exc})") from None
    return coords, attrs


def write_clam_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray) -> Path:
    """CLAM's ``h5_files/<slide_id>.h5``: ``features`` float32 (N, D), ``coords`` int32 (N, 2)."""
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(coords):
        raise CacheError(f"features {features.shape} and coords {coords.shape} do not pair up row by row")
    if len(coords) and (coords.min() < np.iinfo(np.int32).min or coords.max() > np.iinfo(np.int32).max):
        raise CacheError("coordinates do not fit CLAM's int32 coords")

    def fill(fh: Any) -> None:
        rows = len(features)
        fh.create_dataset(
            "features",
            data=features,
            maxshape=(None, features.shape[1]),
            chunks=_chunk_rows(rows, features.shape[1]) if rows else None,
        )
        fh.create_dataset(
            "coords", data=coords.astype(np.int32), maxshape=(None, 2), chunks=_chunk_rows(rows, 2) if rows else None
        )

    return _atomic_h5(Path(path), fill)


def read_clam_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``features`` float32 (N, D) and ``coords`` int64 (N, 2) from a CLAM / TRIDENT feature h5."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            features = np.asarray(fh["features"][:], dtype=np.float32)
            coords = np.asarray(fh["coords"][:], dtype=np.int64) if "coords" in fh else None
    except (OSError, KeyError) as exc:
        raise CacheError(f"{Path(path).name}: not a CLAM feature file with 'features' ({exc})") from None
    if features.ndim == 3 and features.shape[0] == 1:  # some tools store (1, N, D)
        features = features[0]
    if features.ndim != 2:
        raise CacheError(f"{Path(path).name}: 'features' has shape {features.shape}, expected (N, D)")
    if coords is None:
        coords = np.zeros((len(features), 2), dtype=np.int64) - 1
    coords = coords.reshape(-1, 2)
    if len(coords) != len(features):
        raise CacheError(f"{Path(path).name}: {len(features)} feature rows but {len(coords)} coordinates")
    return features, coords


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
