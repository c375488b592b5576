"""How each kind of small-model input becomes fixed-shape arrays (one group per cache).

A group is fitted on the TRAIN split only (tokenizer corpus, time-series and numerical statistics, category
vocabularies, ordinal levels); what it learned goes into ``preprocessing``, which is part of the cache's
fingerprint, so a changed split or parameter gives a different cache. ``encode`` turns manifest rows into
arrays; a sample whose input cannot be read gets an error record ``(sample_id, stage, reason)`` and the input is
marked missing. Reasons never quote note text or field values.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cache_schema import Manifest, SmallInput
from .image_io import IMAGE_SIZE, ImageReadError, load_xray
from .small_model import SmallInputSpec

TABULAR_KINDS = ("categorical", "ordinal", "numerical")
Encoded = tuple[dict[str, np.ndarray], list[dict[str, str]]]


class InputError(ValueError):
    """One sample's input is unusable; the message is the recorded reason."""


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0:
        return True
    return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class InputGroup:
    """Base: the rows of one manifest this group reads, its train mask and its error bookkeeping."""

    model_kind = ""
    learns_from_rows = True  # False for a group whose arrays do not depend on which rows it is fitted on

    def __init__(self, name: str, manifest: Manifest, inputs: dict[str, SmallInput]):
        self.name = name
        self.manifest = manifest
        self.inputs = inputs
        self.table = manifest.table
        self.sample_ids = self.table["sample_id"].astype(str).tolist()
        self.splits = self.table["split"].astype(str).tolist()
        self.train_rows = [i for i, split in enumerate(self.splits) if split == "train"]
        self.roles = list(self.splits)  # what the input hash records per row (see use_fit_rows)

    def use_fit_rows(self, rows: list[int]) -> None:
        """Fit on these rows (manifest train rows, e.g. minus a carved validation set) instead of all train rows.

        A manifest train row left out is recorded as ``train-heldout`` in the input hash of a group that learns
        from its rows, so another carve gives another cache; with every train row kept the hash is unchanged.
        """
        outside = [r for r in rows if self.splits[r] != "train"]
        if outside:
            first = outside[0]
            raise ValueError(
                f"fit rows must be manifest train rows; {len(outside)} are not (first: sample "
                f"{self.sample_ids[first]!r} in split {self.splits[first]!r})"
            )
        self.train_rows = sorted(rows)
        if self.learns_from_rows:
            kept = set(rows)
            self.roles = [
                "train-heldout" if split == "train" and i not in kept else split for i, split in enumerate(self.splits)
            ]

    @property
    def stage(self) -> str:
        return f"prepare.{self.model_kind}"

    def root(self, small: SmallInput) -> Path:
        root = Path(str(small.options.get("root", ".")))
        return (root if root.is_absolute() else self.manifest.base_dir / root).resolve()

    def column(self, small: SmallInput) -> list[Any]:
        return self.table[small.column].tolist()

    def pointer(self, value: Any) -> str:
        """What identifies one row's input in the input hash (a path as written, a digest of text or values)."""
        if is_missing(value):
            return "missing"
        if isinstance(value, str):
            return "str:" + _sha256(value.encode())
        if isinstance(value, (list, tuple, np.ndarray)):
            return "values:" + _sha256(np.asarray(value, dtype=np.float64).tobytes())
        return "scalar:" + repr(value)

    def input_rows(self) -> list[tuple[str, str]]:
        """(sample id, split + pointers of every field): a different split or pointer gives a new cache."""
        columns = [self.column(small) for small in self.inputs.values()]
        return [
            (sid, self.roles[i] + "|" + "|".join(self.pointer(col[i]) for col in columns))
            for i, sid in enumerate(self.sample_ids)
        ]

    def fit(self) -> None:
        """Learn whatever this group needs from the train split (cheap; re-run on every call)."""

    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def weights(self) -> str:
        return "none"

    def prepare_build(self, cache_path: Path) -> None:
        """Expensive fitting that only a build needs (e.g. training the tokenizer); saved inside the cache."""

    def encode(self, rows: list[int]) -> Encoded:
        raise NotImplementedError

    def spec(self, cache_path: Path) -> SmallInputSpec:
        return SmallInputSpec(kind=self.model_kind)

    def error(self, row: int, reason: str) -> dict[str, str]:
        return {"sample_id": self.sample_ids[row], "stage": self.stage, "reason": reason}


class PathGroup(InputGroup):
    """A single path-valued input (image, time series, vector file)."""

    def __init__(self, name: str, manifest: Manifest, small: SmallInput):
        super().__init__(name, manifest, {name: small})
        self.small = small
        self.values = self.column(small)
        self.base = self.root(small)

    def pointer(self, value: Any) -> str:
        return "path:" + value if isinstance(value, str) and value.strip() else super().pointer(value)

    def path_of(self, row: int) -> Path | None:
        value = self.values[row]
        return None if is_missing(value) else self.base / str(value)


class ImageGroup(PathGroup):
    """X-ray files -> letterboxed uint8 [256, 256] (crop and normalisation live in the model)."""

    model_kind = "image"
    learns_from_rows = False  # nothing is fitted: a validation carve never re-decodes the X-rays

    def preprocessing(self) -> dict[str, Any]:
        return {
            "size": IMAGE_SIZE,
            "resize": "longer-side, bilinear",
            "pad": "zero, centred",
            "grey": "uint8",
            "dicom": "modality+voi lut, monochrome1 inverted, min-max",
        }

    def encode(self, rows: list[int]) -> Encoded:
        images = np.zeros((len(rows), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        present = np.zeros(len(rows), dtype=bool)
        errors = []
        for out, row in enumerate(rows):
            path = self.path_of(row)
            if path is None:
                continue
            try:
                images[out] = load_xray(path)
                present[out] = True
            except ImageReadError as exc:
                errors.append(self.error(row, f"{self.small.column} file {self.values[row]!s}: {exc}"))
        return {f"{self.name}.image": images, f"{self.name}.present": present}, errors


class TimeSeriesGroup(PathGroup):
    """``.npz`` (values [T, F], hours [T], variables [F]) -> standardised fixed grid [T_grid, F_train] + mask.

    Only rows with ``0 <= hours < window_hours`` are kept (default 48: nothing after the prediction window ever
    reaches the model, whatever grid or length a file has); they are binned into ``time_steps`` equal bins over the
    window (1 h each by default), a bin holding the mean of its observed values per variable; empty bins are
    masked as unobserved. Variables are the sorted union seen in the train files (others are ignored); each is
    standardised with its train mean/std over the observed bins.
    """

    model_kind = "timeseries"

    def __init__(self, name: str, manifest: Manifest, small: SmallInput, time_steps: int, window_hours: float = 48.0):
        super().__init__(name, manifest, small)
        self.time_steps = int(small.options.get("time_steps", time_steps))
        self.window_hours = float(small.options.get("window_hours", window_hours))
        if self.time_steps < 1 or not self.window_hours > 0:
            raise ValueError(
                f"small input {name!r}: time_steps ({self.time_steps}) and window_hours ({self.window_hours}) "
                "must be positive"
            )
        self.variables: list[str] = []
        self.mean: np.ndarray = np.zeros(0)
        self.std: np.ndarray = np.ones(0)

    def load(self, row: int) -> tuple[np.ndarray, list[str]]:
        """The file binned to [time_steps, F] (NaN = no observation in that bin) and its variable names."""
        path = self.path_of(row)
        assert path is not None
        try:
            with np.load(path, allow_pickle=False) as data:
                values = np.asarray(data["values"], dtype=np.float32)
                hours = np.asarray(data["hours"], dtype=np.float32)
                variables = [str(v) for v in data["variables"]]
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(
                f"{self.small.column} file {self.values[row]!s}: unreadable ({type(exc).__name__}: {exc})"
            ) from None
        if values.ndim != 2 or hours.shape != (values.shape[0],) or len(variables) != values.shape[1]:
            raise InputError(
                f"{self.small.column} file {self.values[row]!s}: values {values.shape}, hours {hours.shape} and "
                f"{len(variables)} variables do not agree (expected values [T, F], hours [T], variables [F])"
            )
        keep = np.isfinite(hours) & (hours >= 0) & (hours < self.window_hours)
        values, hours = values[keep], hours[keep]
        bins = np.minimum((hours * (self.time_steps / self.window_hours)).astype(np.int64), self.time_steps - 1)
        observed = np.isfinite(values)
        sums = np.zeros((self.time_steps, values.shape[1]), dtype=np.float64)
        counts = np.zeros((self.time_steps, values.shape[1]), dtype=np.int64)
        np.add.at(sums, bins, np.where(observed, values, 0.0))
        np.add.at(counts, bins, observed)
        with np.errstate(invalid="ignore", divide="ignore"):
            binned = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return binned.astype(np.float32), variables

    def fit(self) -> None:
        sums: dict[str, list[float]] = {}
        for row in self.train_rows:
            if self.path_of(row) is None:
                continue
            try:
                values, variables = self.load(row)
            except InputError:
                continue  # recorded when the row is encoded
            for column, variable in enumerate(variables):
                observed = values[:, column][np.isfinite(values[:, column])].astype(np.float64)
                acc = sums.setdefault(variable, [0.0, 0.0, 0.0])
                acc[0] += observed.size
                acc[1] += float(observed.sum())
                acc[2] += float((observed**2).sum())
        self.variables = sorted(sums)
        if not self.variables:
            raise ValueError(f"small input {self.name!r}: no readable time series in the train split")
        counts = np.array([sums[v][0] for v in self.variables])
        mean = np.divide([sums[v][1] for v in self.variables], counts, out=np.zeros(len(counts)), where=counts > 0)
        second = np.divide([sums[v][2] for v in self.variables], counts, out=np.ones(len(counts)), where=counts > 0)
        std = np.sqrt(np.maximum(second - mean**2, 0.0))
        self.mean = mean
        self.std = np.where(std > 1e-8, std, 1.0)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "time_steps": self.time_steps,
            "window_hours": self.window_hours,
            "grid": "0 <= hours < window_hours, equal bins, mean of the observed values per bin",
            "variables": self.variables,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }

    def encode(self, rows: list[int]) -> Encoded:
        n_vars = len(self.variables)
        column_of = {v: i for i, v in enumerate(self.variables)}
        grid = np.zeros((len(rows), self.time_steps, n_vars), dtype=np.float32)
        mask = np.zeros((len(rows), self.time_steps, n_vars), dtype=bool)
        errors = []
        for out, row in enumerate(rows):
            if self.path_of(row) is None:
                continue
            try:
                values, variables = self.load(row)
            except InputError as exc:
                errors.append(self.error(row, str(exc)))
                continue
            for source, variable in enumerate(variables):
                target = column_of.get(variable)
                if target is None:
                    continue
                column = values[:, source]
                observed = np.isfinite(column)
                standardised = (column - self.mean[target]) / self.std[target]
                grid[out, :, target] = np.where(observed, standardised, 0.0)
                mask[out, :, target] = observed
        present = mask.any(axis=(1, 2))
        return {f"{self.name}.values": grid, f"{self.name}.mask": mask, f"{self.name}.present": present}, errors

    def spec(self, cache_path: Path) -> SmallInputSpec:
        return SmallInputSpec(kind="timeseries", n_variables=len(self.variables))


class VectorGroup(PathGroup):
    """Precomputed features: a ``.npy``/``.npz`` path (key ``arr_0``) or an inline list -> float32 [D].

    Singleton axes are squeezed (MMIST CT ``(1, 1, 512, 1)`` -> 512); a file holding several rows [n, D] is
    averaged over its rows. D is fixed by the first readable train sample; other sizes are recorded as errors.
    """

    model_kind = "vector"

    def __init__(self, name: str, manifest: Manifest, small: SmallInput):
        super().__init__(name, manifest, small)
        self.dim = 0

    def load(self, row: int) -> np.ndarray:
        value = self.values[row]
        label = f"{self.small.column} of {self.sample_ids[row]!r}"
        if isinstance(value, str):
            path = self.base / value
            label = f"{self.small.column} file {value}"
            try:
                loaded = np.load(path, allow_pickle=False)
                if isinstance(loaded, np.lib.npyio.NpzFile):
                    with loaded:
                        names = loaded.files
                        key = "arr_0" if "arr_0" in names else (names[0] if len(names) == 1 else None)
                        if key is None:
                            raise InputError(f"{label}: npz has keys {loaded.files}, none is 'arr_0'")
                        array = np.asarray(loaded[key])
                else:
                    array = np.asarray(loaded)
            except (OSError, ValueError) as exc:
                raise InputError(f"{label}: unreadable ({type(exc).__name__}: {exc})") from None
        else:
            array = np.asarray(value)
        try:
            array = np.squeeze(array.astype(np.float32))
        except (TypeError, ValueError):
            raise InputError(f"{label}: not numeric") from None
        if array.ndim == 2:
            array = array.mean(axis=0)
        if array.ndim != 1:
            raise InputError(f"{label}: shape {array.shape} is not a vector or a stack of vectors")
        if not np.isfinite(array).all():
            raise InputError(f"{label}: contains NaN or inf")
        return array

    def fit(self) -> None:
        order = self.train_rows + [r for r in range(len(self.sample_ids)) if self.splits[r] != "train"]
        for row in order:
            if is_missing(self.values[row]):
                continue
            try:
                self.dim = int(self.load(row).shape[0])
                return
            except InputError:
                continue
        raise ValueError(f"small input {self.name!r}: no readable vector in the manifest")

    def preprocessing(self) -> dict[str, Any]:
        return {"dim": self.dim, "squeeze": True, "stack": "mean over rows"}

    def encode(self, rows: list[int]) -> Encoded:
        values = np.zeros((len(rows), self.dim), dtype=np.float32)
        present = np.zeros(len(rows), dtype=bool)
        errors = []
        for out, row in enumerate(rows):
            if is_missing(self.values[row]):
                continue
            try:
                vector = self.load(row)
                if vector.shape[0] != self.dim:
                    raise InputError(f"{self.small.column}: dimension {vector.shape[0]}, expected {self.dim}")
            except InputError as exc:
                errors.append(self.error(row, str(exc)))
                continue
            values[out] = vector
            present[out] = True
        return {f"{self.name}.values": values, f"{self.name}.present": present}, errors

    def spec(self, cache_path: Path) -> SmallInputSpec:
        return SmallInputSpec(kind="vector", dim=self.dim)
