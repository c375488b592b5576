"""EHR time series: a per-sample ``.npz`` grid or a long table, cut to the sample's window on a regular grid.

Inputs, one pointer per sample:

* ``.npz`` as the cohort builders write it: ``values`` float (T, F) with NaN where nothing was charted, ``hours``
  (T,) since admission and ``variables`` (F,); an optional boolean ``observed`` (T, F) makes the mask explicit
  (then a NaN at an observed position is an error);
* a per-sample long table (``.csv``, ``.tsv``, ``.parquet``) with columns ``time`` (or ``hours``), ``variable``,
  ``value``;
* a sample key (a text pointer) when the reader is given ``table=<cohort long table>`` with columns ``sample``
  (or ``sample_id``), ``time``/``hours``, ``variable``, ``value``; the table is read once per process.

Times are hours since the sample's start (admission); a datetime column counts from the sample's first record.
Only times in ``[0, window_hours)`` are kept (the first 48 h by default, the paper's window) and binned onto a
grid of ``step_hours``: the mean of the values charted in each bin; a bin with none is unobserved.

Named per-sample errors: no observation in the window, a non-finite value (an infinite value anywhere; NaN
in a long table row or at an explicitly observed position), non-finite times, malformed arrays or columns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError, InputError
from .base import InputReader, ReaderSpec, register_reader

TIMESERIES_READER_VERSION = "1"
DEFAULT_WINDOW_HOURS = 48.0
DEFAULT_STEP_HOURS = 1.0
TIME_COLUMNS = ("time", "hours", "hour", "charttime")
SAMPLE_COLUMNS = ("sample", "sample_id")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".parquet", ".pq")


@dataclass
class TimeSeries:
    """A regular grid: ``values`` (T, F) float32 (0 where unobserved), ``observed`` (T, F) bool, bin starts."""

    values: np.ndarray
    observed: np.ndarray
    hours: np.ndarray
    variables: tuple[str, ...]
    step_hours: float


@dataclass(frozen=True)
class TimeSeriesOptions:
    """Reading parameters that change the grid (all land in the fingerprint)."""

    window_hours: float = DEFAULT_WINDOW_HOURS
    step_hours: float = DEFAULT_STEP_HOURS

    def __post_init__(self) -> None:
        for name in ("window_hours", "step_hours"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of hours, got {value!r}")
        if self.step_hours > self.window_hours:
            raise ValueError(f"step_hours {self.step_hours} is longer than window_hours {self.window_hours}")

    @property
    def rows(self) -> int:
        return int(np.ceil(self.window_hours / self.step_hours - 1e-9))


def read_timeseries(pointer: Any, options: TimeSeriesOptions, table: LongTable | None = None) -> TimeSeries:
    """One pointer -> the sample's window on the regular grid; raises :class:`InputError` naming the cause."""
    if table is not None:
        if isinstance(pointer, Path):
            pointer = pointer.name
        records = table.sample(str(pointer))
        return grid_from_records(*records, options, f"sample {pointer!s} of {table.path.name}")
    path = Path(pointer)
    if not path.is_file():
        raise InputError(f"time series {path.name} does not exist", "read")
    if path.suffix.lower() == ".npz":
        return grid_from_npz(path, options)
    if path.suffix.lower() in TABLE_SUFFIXES:
        frame = _read_frame(path)
        hours, variables, values = _long_records(frame, path.name)
        return grid_from_records(hours, variables, values, options, path.name)
    raise InputError(f"{path.name}: a time series is a .npz grid or a long table (.csv, .tsv, .parquet)", "read")


# ----------------------------------------------------------------------------------------------- .npz grids
def grid_from_npz(path: Path, options: TimeSeriesOptions) -> TimeSeries:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {path.name} ({type(exc).__name__})", "read") from None
    name = path.name
    if "values" not in arrays or "hours" not in arrays:
        raise InputError(f"{name} needs arrays 'values' (T, F) and 'hours' (T,); it has {sorted(arrays)}", "read")
    values = np.asarray(arrays["values"])
    hours = np.asarray(arrays["hours"])
    if values.ndim != 2 or hours.shape != (values.shape[0],) or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{name}: values {values.shape} and hours {hours.shape} are not (T, F) and (T,)", "read")
    values = values.astype(np.float64)
    variables = _variable_names(arrays.get("variables"), values.shape[1], name)
    if "observed" in arrays:
        observed = np.asarray(arrays["observed"])
        if observed.shape != values.shape or observed.dtype != np.bool_:
            raise InputError(f"{name}: 'observed' must be a boolean array shaped like 'values'", "read")
        bad = observed & ~np.isfinite(values)
    else:
        observed = ~np.isnan(values)
        bad = np.isinf(values)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(
            f"{name}: variable {variables[column]!r} has a non-finite value at {float(hours[row]):g} h "
            f"({int(bad.sum())} such values)",
            "read",
        )
    rows, columns = np.nonzero(observed)
    return grid_from_records(
        hours[rows].astype(np.float64), np.asarray(variables, dtype=object)[columns], values[rows, columns], options,
        name, variables,
    )  # fmt: skip


def _variable_names(raw: Any, count: int, name: str) -> tuple[str, ...]:
    if raw is None:
        return tuple(f"variable_{i}" for i in range(count))
    names = tuple(str(v) for v in np.asarray(raw).reshape(-1))
    if len(names) != count:
        raise InputError(f"{name}: {len(names)} variable names for {count} value columns", "read")
    return names


# ---------------------------------------------------------------------------------------------- long tables
def _read_frame(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path.name} ({type(exc).__name__})", "read") from None


def _pick(frame: Any, names: tuple[str, ...], what: str, where: str) -> str:
    for name in names:
        if name in frame.columns:
            return name
    raise InputError(f"{where}: no {what} column (one of {list(names)}); columns: {list(frame.columns)}", "read")


def _long_records(frame: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hours, variable names, values) of a long table's rows."""
    import pandas as pd

    time_column = _pick(frame, TIME_COLUMNS, "time", where)
    _pick(frame, ("variable",), "variable", where)
    _pick(frame, ("value",), "value", where)
    times = frame[time_column]
    if not pd.api.types.is_datetime64_any_dtype(times) and not pd.api.types.is_numeric_dtype(times):
        parsed = pd.to_datetime(times, errors="coerce")  # text timestamps (a CSV): dates if they all parse
        if parsed.notna().all():
            times = parsed
    if pd.api.types.is_datetime64_any_dtype(times):
        hours = ((times - times.min()).dt.total_seconds() / 3600.0).to_numpy(dtype=np.float64)
    else:
        hours = pd.to_numeric(times, errors="coerce").to_numpy(dtype=np.float64)
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
    variables = frame["variable"].astype(str).to_numpy(dtype=object)
    bad_time = ~np.isfinite(hours)
    if bad_time.any():
        raise InputError(f"{where}: {int(bad_time.sum())} row(s) have no valid time", "read")
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: variable {variables[row]!r} has a missing or non-finite value at {hours[row]:g} h "
            f"({int(bad.sum())} such rows); drop unobserved rows instead of writing NaN",
            "read",
        )
    return hours, variables, values


class LongTable:
    """A cohort-wide long table, read once and split by sample (thread-safe, lazy)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"time-series table {self.path} does not exist")
        self._groups: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        with self._lock:
            if self._groups is None:
                frame = _read_frame(self.path)
                column = _pick(frame, SAMPLE_COLUMNS, "sample", self.path.name)
                self._groups = {str(key): rows for key, rows in frame.groupby(frame[column].astype(str), sort=False)}
            return self._groups

    def sample(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        groups = self._load()
        if key not in groups:
            raise InputError(f"sample {key!r} has no rows in {self.path.name}", "read")
        return _long_records(groups[key], f"sample {key!r} of {self.path.name}")


# ------------------------------------------------------------------------------------------------- gridding
def grid_from_records(
    hours: np.ndarray,
    variables: np.ndarray,
    values: np.ndarray,
    options: TimeSeriesOptions,
    where: str,
    order: tuple[str, ...] | None = None,
) -> TimeSeries:
    """Bin observations onto the window's grid (mean per bin and variable); empty windows are errors."""
    names = order if order is not None else tuple(dict.fromkeys(str(v) for v in variables))
    inside = (hours >= 0) & (hours < options.window_hours)
    if not inside.any():
        raise InputError(f"{where}: no observation in the first {options.window_hours:g} h", "read")
    hours, values = hours[inside], values[inside]
    column_of = {name: i for i, name in enumerate(names)}
    columns = np.array([column_of[str(v)] for v in np.asarray(variables)[inside]], dtype=np.int64)
    rows = np.minimum((hours / options.step_hours).astype(np.int64), options.rows - 1)
    shape = (options.rows, len(names))
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int64)
    np.add.at(total, (rows, columns), values)
    np.add.at(count, (rows, columns), 1)
    observed = count > 0
    mean = np.divide(total, count, out=np.zeros(shape), where=observed)
    if not np.isfinite(mean).all():
        raise InputError(f"{where}: values overflow when averaged per {options.step_hours:g} h bin", "read")
    grid_hours = np.arange(options.rows, dtype=np.float64) * options.step_hours
    return TimeSeries(mean.astype(np.float32), observed, grid_hours, names, float(options.step_hours))


# ------------------------------------------------------------------------------------------------ the reader
@register_reader
class TimeSeriesReader(InputReader):
    """EHR time series -> :class:`TimeSeries` on the window's regular grid.

    Options: ``window_hours`` (48), ``step_hours`` (1), ``table`` (a cohort-wide long table; pointers are then
    sample keys in it).
    """

    spec = ReaderSpec(
        "timeseries",
        version=TIMESERIES_READER_VERSION,
        description="EHR time series: per-sample .npz grids or long tables, first 48 h on an hourly grid",
        options=("window_hours", "step_hours", "table"),
    )

    def __init__(
        self,
        window_hours: float = DEFAULT_WINDOW_HOURS,
        step_hours: float = DEFAULT_STEP_HOURS,
        table: str | Path | None = None,
    ):
        super().__init__()
        try:
            self.grid = TimeSeriesOptions(float(window_hours), float(step_hours))
        except (TypeError, ValueError) as exc:
            raise ExtractError(f"reader 'timeseries': {exc}") from None
        try:
            self.table = LongTable(Path(table)) if table else None
        except FileNotFoundError as exc:
            raise ExtractError(f"reader 'timeseries': {exc}") from None

    def read(self, pointer: Any) -> TimeSeries:
        return read_timeseries(pointer, self.grid, self.table)

    def parameters(self) -> dict[str, Any]:
        table = ""
        if self.table is not None:
            from ...cache_schema.shards import file_checksum

            table = f"{self.table.path.name}:xxh3:{file_checksum(self.table.path)}"
        return {
            "reader": f"timeseries/{TIMESERIES_READER_VERSION}",
            "window_hours": self.grid.window_hours,
            "step_hours": self.grid.step_hours,
            "binning": "mean per bin and variable",
            "table": table,
        }

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        hours = np.arange(48, dtype=np.float32)
        values = np.stack([80 + 5 * np.sin(hours / 5) + rng.normal(0, 2, 48), 37 + rng.normal(0, 0.2, 48)], axis=1)
        values[rng.random((48, 2)) < 0.3] = np.nan
        np.savez(folder / "grid.npz", values=values.astype(np.float32), hours=hours, variables=np.array(["hr", "temp"]))
        rows = [(h, "sbp", 120 - 0.5 * h + rng.normal(0, 3)) for h in np.arange(0, 60, 2.5)]
        rows += [(h, "lactate", 1.5 + 0.05 * h) for h in (3.0, 20.0, 41.0)]
        table = "time,variable,value\n" + "".join(f"{h:g},{name},{v:.3f}\n" for h, name, v in rows)
        (folder / "long.csv").write_text(table)
        return [folder / "grid.npz", folder / "long.csv"]
