"""CLAM / TRIDENT patch-feature files (``h5_files/<slide_id>.h5``: ``features`` (N, D), ``coords`` (N, 2)).

The import path for features computed elsewhere: the ``clam-h5`` encoder reads them into the cache as a bag plus
the mean slide vector, the same layout the ``uni`` encoder writes. HDF5 only: CLAM's ``pt_files`` are pickles and
are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...cache_schema.clam_h5 import read_clam_features, write_clam_features
from ...cache_schema.errors import CacheError
from ..errors import InputError
from .base import InputReader, ReaderSpec, register_reader


@register_reader
class ClamFeaturesReader(InputReader):
    spec = ReaderSpec("clam-h5", version="1", description="CLAM / TRIDENT feature files (h5_files/<slide>.h5)")

    def read(self, pointer: Any) -> tuple[np.ndarray, np.ndarray]:
        path = Path(pointer)
        if path.suffix.lower() == ".pt":
            raise InputError(f"{path.name}: .pt files are pickles and are not read; use CLAM's h5_files", "read")
        if not path.is_file():
            raise InputError(f"feature file not found: {path.name}", "read")
        try:
            features, coords = read_clam_features(path)
        except CacheError as exc:
            raise InputError(str(exc), "decode") from None
        if len(features) == 0:
            raise InputError(f"{path.name}: no patch features", "preprocess")
        if not np.isfinite(features).all():
            raise InputError(f"{path.name}: features hold NaN or infinite values", "preprocess")
        return features, coords

    def parameters(self) -> dict[str, Any]:
        return {"reader": f"{self.spec.name}/{self.spec.version}", "datasets": ["features", "coords"]}

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, rows in enumerate((5, 9)):
            coords = rng.integers(0, 50, (rows, 2)) * 256
            paths.append(write_clam_features(folder / f"slide-{index}.h5", rng.standard_normal((rows, 1024)), coords))
        return paths
