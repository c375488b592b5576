"""The MIMIC-IV-MM EHR time series: events of the first hours, streamed and binned onto an hourly grid.

Row ``h`` of the grid holds what was charted in ``[admittime + h hours, admittime + h + 1 hours)``, for
``h = 0 .. ceil(window_hours) - 1``; events before ``admittime`` (e.g. emergency-department labs) or at or
after ``admittime + window_hours`` are ignored. Per channel:

* numerical: the mean of the values charted in that hour (after unit conversion and range checks);
* categorical: the code of the last value charted in that hour (codes are ordinal, a mean would invent one);
* procedure indicator: 1 for every hour the procedure runs (``starttime`` inside the window, until ``endtime``
  or the window's end), 0 otherwise; never NaN, since procedureevents is a complete record;
* ``age_bin`` (index into the age levels) and ``gender_male`` (1 male, 0 female): constant demographic rows,
  the paper's binned demographic features.

NaN means not observed, so ``~isnan(values)`` is the observation mask. Each admission gets
``timeseries/<hadm_id>.npz`` with ``values`` float32 (T, F), ``hours`` float32 (T,) and ``variables`` (F,).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from ....cache_schema.atomic import atomic_write_bytes
from .cohort import AGE_LEVELS
from .sources import MimicIVTables, parse_mimic_times, read_csv_chunks
from .variables import EventItem, VariableSet

DEMOGRAPHIC_CHANNELS = ("age_bin", "gender_male")
EVENT_COLUMNS = ["hadm_id", "itemid", "charttime", "value", "valuenum"]
PROCEDURE_COLUMNS = ["hadm_id", "itemid", "starttime", "endtime"]
KEY = ["hadm_id", "row", "channel"]


@dataclass
class EventStats:
    """Counts of what streaming kept and dropped, per source table (no values, no patient text)."""

    rows_read: dict[str, int] = field(default_factory=dict)
    rows_in_window: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    unmapped_categorical: dict[str, int] = field(default_factory=dict)


def grid_rows(window_hours: float) -> int:
    return int(math.ceil(window_hours))


def channel_names(variables: VariableSet) -> tuple[str, ...]:
    return (*DEMOGRAPHIC_CHANNELS, *variables.channels)


def _window_hours(times: pd.Series, hadm: pd.Series, admit: pd.Series) -> np.ndarray:
    """Hours since admission of each event (float)."""
    start = hadm.map(admit)
    return ((times - start).dt.total_seconds() / 3600.0).to_numpy()


def _cohort_chunks(
    path: Path,
    table: str,
    columns: list[str],
    dtype: dict[str, str],
    chunksize: int,
    wanted_items: np.ndarray,
    cohort: np.ndarray,
    stats: EventStats,
) -> Iterator[tuple[pd.DataFrame, pd.Series]]:
    """Stream a large event table: count its rows, keep listed items of cohort admissions; (chunk, hadm_id)."""
    stream = read_csv_chunks(path, columns, chunksize, dtype=dtype, description=f"reading {table}")
    with closing(stream) as chunks:  # a failure inside the loop must end the progress display at once
        for chunk in chunks:
            stats.rows_read[table] = stats.rows_read.get(table, 0) + len(chunk)
            chunk = chunk[chunk["itemid"].isin(wanted_items) & chunk["hadm_id"].isin(cohort)]
            if not chunk.empty:
                yield chunk, chunk["hadm_id"].astype("int64")


def _stream_events(
    path: Path,
    table: str,
    items: dict[int, EventItem],
    admit: pd.Series,
    window_hours: float,
    chunksize: int,
    channel_index: dict[str, int],
    stats: EventStats,
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Numerical partial sums/counts and categorical last values, per (hadm, row, channel), chunk by chunk."""
    numeric_parts: list[pd.DataFrame] = []
    categorical_parts: list[pd.DataFrame] = []
    wanted_items = np.fromiter(items, dtype=np.int64)
    cohort = admit.index.to_numpy()
    item_channel = {i: channel_index[item.name] for i, item in items.items()}
    numeric_items = np.array([i for i, item in items.items() if item.kind == "numerical"], dtype=np.int64)
    params = pd.DataFrame(
        [(i, it.multiply, it.add, it.low, it.high) for i, it in items.items()],
        columns=["itemid", "multiply", "add", "low", "high"],
    ).set_index("itemid")
    dtype = {"hadm_id": "float64", "itemid": "float64", "charttime": "str", "value": "str", "valuenum": "float64"}
    for chunk, hadm in _cohort_chunks(path, table, EVENT_COLUMNS, dtype, chunksize, wanted_items, cohort, stats):
        hours = _window_hours(parse_mimic_times(chunk["charttime"], table, "charttime"), hadm, admit)
        inside = (hours >= 0) & (hours < window_hours)
        chunk, hadm, hours = chunk[inside], hadm[inside], hours[inside]
        stats.rows_in_window[table] = stats.rows_in_window.get(table, 0) + len(chunk)
        if chunk.empty:
            continue
        itemid = chunk["itemid"].astype("int64").to_numpy()
        frame = pd.DataFrame(
            {
                "hadm_id": hadm.to_numpy(),
                "row": np.floor(hours).astype(np.int64),
                "channel": pd.Series(itemid).map(item_channel).to_numpy(),
                "time": hours,
            }
        )
        numeric = np.isin(itemid, numeric_items)
        if numeric.any():
            mult, add, low, high = params.loc[itemid[numeric]].to_numpy().T
            values = chunk["valuenum"].to_numpy()[numeric] * mult + add
            ok = np.isfinite(values) & (values >= low) & (values <= high)
            dropped = int((np.isfinite(values) & ~ok).sum())
            stats.out_of_range[table] = stats.out_of_range.get(table, 0) + dropped
            part = frame[numeric][ok].assign(value=values[ok])
            numeric_parts.append(part.groupby(KEY, sort=False)["value"].agg(["sum", "count"]).reset_index())
        if (~numeric).any():
            texts = chunk["value"].to_numpy()[~numeric]
            codes = np.array(
                [
                    items[i].mapping.get(str(t).strip().casefold(), np.nan) if isinstance(t, str) else np.nan
                    for i, t in zip(itemid[~numeric], texts, strict=True)
                ],
                dtype=float,
            )
            mapped = np.isfinite(codes)
            unmapped = int((~mapped & pd.notna(texts)).sum())
            stats.unmapped_categorical[table] = stats.unmapped_categorical.get(table, 0) + unmapped
            part = frame[~numeric][mapped].assign(value=codes[mapped])
            categorical_parts.append(_last_per_key(part))
    return numeric_parts, categorical_parts


def _last_per_key(part: pd.DataFrame) -> pd.DataFrame:
    """The latest value per (hadm, row, channel); ties keep the later row in file order (stable sort)."""
    ordered = part.sort_values("time", kind="stable")
    return ordered.groupby(KEY, sort=False).tail(1)[[*KEY, "time", "value"]]


def _stream_procedures(
    path: Path,
    items: dict[int, EventItem],
    admit: pd.Series,
    window_hours: float,
    chunksize: int,
    channel_index: dict[str, int],
    stats: EventStats,
) -> list[pd.DataFrame]:
    """(hadm, row, channel) of every hour a listed procedure runs, for procedures started inside the window."""
    parts: list[pd.DataFrame] = []
    wanted_items = np.fromiter(items, dtype=np.int64)
    cohort = admit.index.to_numpy()
    rows = grid_rows(window_hours)
    item_channel = {i: channel_index[it.name] for i, it in items.items()}
    dtype = {"hadm_id": "float64", "itemid": "float64", "starttime": "str", "endtime": "str"}
    table = "procedureevents"
    for chunk, hadm in _cohort_chunks(path, table, PROCEDURE_COLUMNS, dtype, chunksize, wanted_items, cohort, stats):
        start = _window_hours(parse_mimic_times(chunk["starttime"], table, "starttime"), hadm, admit)
        end = _window_hours(parse_mimic_times(chunk["endtime"], table, "endtime"), hadm, admit)
        inside = (start >= 0) & (start < window_hours)
        stats.rows_in_window[table] = stats.rows_in_window.get(table, 0) + int(inside.sum())
        if not inside.any():
            continue
        first = np.floor(start[inside]).astype(np.int64)
        end = np.where(np.isnan(end[inside]), start[inside], end[inside])
        # Last hour touched: the hour holding endtime (an end exactly on an hour boundary does not touch it).
        last = np.maximum(first, np.minimum(np.ceil(end).astype(np.int64) - 1, rows - 1))
        span = last - first + 1
        channel = chunk["itemid"].astype("int64")[inside].map(item_channel)
        offsets = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        parts.append(
            pd.DataFrame(
                {
                    "hadm_id": np.repeat(hadm.to_numpy()[inside], span),
                    "row": np.repeat(first, span) + offsets,
                    "channel": np.repeat(channel.to_numpy(), span),
                }
            ).drop_duplicates()
        )
    return parts


def _combine(
    numeric: list[pd.DataFrame], categorical: list[pd.DataFrame], procedures: list[pd.DataFrame]
) -> pd.DataFrame:
    """One long table (hadm_id, row, channel, value) from the per-chunk partials."""
    frames = []
    if numeric:
        sums = pd.concat(numeric, ignore_index=True).groupby(KEY)[["sum", "count"]].sum().reset_index()
        frames.append(sums.assign(value=sums["sum"] / sums["count"])[[*KEY, "value"]])
    if categorical:
        frames.append(_last_per_key(pd.concat(categorical, ignore_index=True))[[*KEY, "value"]])
    if procedures:
        frames.append(pd.concat(procedures, ignore_index=True).drop_duplicates().assign(value=1.0))
    if not frames:
        return pd.DataFrame({"hadm_id": [], "row": [], "channel": [], "value": []})
    return pd.concat(frames, ignore_index=True).sort_values(KEY, kind="stable").reset_index(drop=True)


def collect_events(
    tables: MimicIVTables,
    variables: VariableSet,
    admit: pd.Series,
    window_hours: float,
    chunksize: int,
) -> tuple[pd.DataFrame, EventStats]:
    """Stream chartevents, labevents and procedureevents once each; ``admit`` maps hadm_id -> admittime."""
    index = {name: i + len(DEMOGRAPHIC_CHANNELS) for i, name in enumerate(variables.channels)}
    stats = EventStats()
    chart_num, chart_cat = _stream_events(
        tables["chartevents"], "chartevents", variables.chart, admit, window_hours, chunksize, index, stats
    )
    lab_num, lab_cat = _stream_events(
        tables["labevents"], "labevents", variables.lab, admit, window_hours, chunksize, index, stats
    )
    procedures = _stream_procedures(
        tables["procedureevents"], variables.procedure, admit, window_hours, chunksize, index, stats
    )
    return _combine(chart_num + lab_num, chart_cat + lab_cat, procedures), stats


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    """Temp file + rename (cache_schema.atomic), so a crash never leaves a half grid; no fsync per file (tens of
    thousands of them), the manifest written last with fsync is what marks the build complete."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), durable=False)


def write_grids(
    cohort: pd.DataFrame,
    events: pd.DataFrame,
    variables: VariableSet,
    window_hours: float,
    folder: Path,
) -> pd.Series:
    """Write ``folder/<hadm_id>.npz`` for every cohort admission; returns observed event cells per hadm_id.

    The count leaves out the demographic rows and procedure zeros, so 0 means "no charted data in the window".
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = channel_names(variables)
    rows = grid_rows(window_hours)
    hours = np.arange(rows, dtype=np.float32)
    procedure_channels = [i for i, n in enumerate(names) if variables.channel_kinds.get(n) == "indicator"]
    age_code = {level: float(i) for i, level in enumerate(AGE_LEVELS)}
    gender_code = {"M": 1.0, "F": 0.0}
    hadm_sorted = events["hadm_id"].to_numpy(dtype=np.int64)
    row_idx = events["row"].to_numpy(dtype=np.int64)
    chan_idx = events["channel"].to_numpy(dtype=np.int64)
    vals = events["value"].to_numpy(dtype=np.float64)
    observed: dict[int, int] = {}
    variable_array = np.asarray(names, dtype=np.str_)
    with Progress(transient=True) as progress:
        task = progress.add_task("writing time series", total=len(cohort))
        for hadm, age_bin, gender in zip(cohort["hadm_id"], cohort["age_bin"], cohort["gender"], strict=True):
            grid = np.full((rows, len(names)), np.nan, dtype=np.float32)
            grid[:, 0] = age_code.get(age_bin, np.nan)
            grid[:, 1] = gender_code.get(str(gender).strip().upper(), np.nan)
            grid[:, procedure_channels] = 0.0
            lo, hi = np.searchsorted(hadm_sorted, [hadm, hadm + 1])
            grid[row_idx[lo:hi], chan_idx[lo:hi]] = vals[lo:hi]
            observed[int(hadm)] = int(hi - lo)
            _atomic_npz(folder / f"{int(hadm)}.npz", values=grid, hours=hours, variables=variable_array)
            progress.advance(task)
    return pd.Series(observed, name="timeseries_observations")
