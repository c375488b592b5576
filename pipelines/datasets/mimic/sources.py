"""Where the MIMIC releases keep their tables, and chunked reading of them with a progress bar.

The credentialed releases are read in their own layouts: MIMIC-IV (``hosp/`` and ``icu/``, possibly under a
versioned folder such as ``mimiciv/3.1/``), MIMIC-CXR-JPG (``mimic-cxr-2.0.0-metadata.csv(.gz)`` beside
``files/``) and MIMIC-IV-Note (``note/discharge.csv(.gz)``, ``note/radiology.csv(.gz)``). Every table is
read in chunks so that chartevents (hundreds of millions of rows) never sits in memory.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

MIMIC_IV_TABLES = {
    "patients": "hosp",
    "admissions": "hosp",
    "labevents": "hosp",
    "d_labitems": "hosp",
    "icustays": "icu",
    "chartevents": "icu",
    "procedureevents": "icu",
    "d_items": "icu",
}
CXR_METADATA = "mimic-cxr-2.0.0-metadata.csv"
NOTE_TABLES = ("discharge", "radiology")
SEARCH_DEPTH = 3
MIMIC_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class MimicError(ValueError):
    """A MIMIC release is missing a file or holds a value we cannot use; the message names the file and fix."""


@dataclass(frozen=True)
class MimicIVTables:
    """Resolved paths of the MIMIC-IV tables the cohort builder reads (``.csv`` or ``.csv.gz``)."""

    root: Path
    paths: dict[str, Path]

    def __getitem__(self, table: str) -> Path:
        return self.paths[table]


def _table_file(folder: Path, name: str) -> Path | None:
    for suffix in (".csv.gz", ".csv"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _version_key(path: Path) -> tuple:
    """Sort key preferring the newest versioned folder (``3.1`` after ``2.2``), then the shortest path."""
    numbers = [int(n) for part in path.parts for n in re.findall(r"\d+", part)]
    return (numbers, -len(path.parts))


def _candidate_folders(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """``root`` and its subfolders up to ``depth`` levels down, in a stable order."""
    folders = [root]
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                nxt.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        folders.extend(nxt)
        frontier = nxt
    return folders


def locate_mimic_iv(root: Path) -> MimicIVTables:
    """Find ``hosp/`` and ``icu/`` under ``root`` (itself, or a versioned folder below it) and their tables.

    Raises:
        MimicError: no folder holds ``hosp/admissions.csv(.gz)``, or a required table is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise MimicError(f"MIMIC-IV folder {root} does not exist")
    homes = [f for f in _candidate_folders(root) if _table_file(f / "hosp", "admissions") is not None]
    if not homes:
        raise MimicError(
            f"no MIMIC-IV release under {root}: expected hosp/admissions.csv(.gz) in it or in a versioned "
            "subfolder (e.g. mimiciv/3.1/hosp/admissions.csv.gz)"
        )
    home = max(homes, key=_version_key)
    paths: dict[str, Path] = {}
    missing = []
    for table, module in MIMIC_IV_TABLES.items():
        found = _table_file(home / module, table)
        if found is None:
            missing.append(f"{module}/{table}.csv(.gz)")
        else:
            paths[table] = found
    if missing:
        raise MimicError(f"MIMIC-IV release {home} lacks {', '.join(missing)}")
    return MimicIVTables(root=home, paths=paths)


def locate_mimic_cxr(root: Path) -> tuple[Path, Path]:
    """The MIMIC-CXR-JPG root (the folder holding ``files/``) and its metadata table.

    Raises:
        MimicError: no ``mimic-cxr-2.0.0-metadata.csv(.gz)`` under ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise MimicError(f"MIMIC-CXR-JPG folder {root} does not exist")
    homes = [f for f in _candidate_folders(root) if _table_file(f, CXR_METADATA[: -len(".csv")]) is not None]
    if not homes:
        raise MimicError(
            f"no MIMIC-CXR-JPG release under {root}: expected {CXR_METADATA}(.gz) beside the files/ folder "
            "(e.g. mimic-cxr-jpg/2.1.0/mimic-cxr-2.0.0-metadata.csv.gz)"
        )
    home = max(homes, key=_version_key)
    return home, _table_file(home, CXR_METADATA[: -len(".csv")])  # type: ignore[return-value]


def locate_mimic_note(root: Path, note_types: Sequence[str]) -> dict[str, Path]:
    """Paths of the MIMIC-IV-Note tables asked for (``discharge``, ``radiology``), under ``note/`` or directly.

    Raises:
        MimicError: an unknown note type, or a table that is not found.
    """
    unknown = [t for t in note_types if t not in NOTE_TABLES]
    if unknown:
        raise MimicError(f"unknown note type(s) {unknown}; MIMIC-IV-Note has {list(NOTE_TABLES)}")
    root = Path(root)
    if not root.is_dir():
        raise MimicError(f"MIMIC-IV-Note folder {root} does not exist")
    folders = _candidate_folders(root)
    found: dict[str, Path] = {}
    for note_type in note_types:
        hits = [f for f in folders if _table_file(f, note_type) is not None]
        if not hits:
            raise MimicError(
                f"no {note_type}.csv(.gz) under {root}: expected note/{note_type}.csv.gz of MIMIC-IV-Note "
                "(e.g. mimic-iv-note/2.2/note/radiology.csv.gz)"
            )
        found[note_type] = _table_file(max(hits, key=_version_key), note_type)  # type: ignore[assignment]
    return found


class _CountingReader(io.RawIOBase):
    """A raw file that counts the bytes read from disk, so a progress bar can follow a gzip stream."""

    def __init__(self, path: Path):
        self._fh = open(path, "rb")  # closed in close()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._fh.readinto(buffer)
        self.bytes_read += n or 0
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def read_csv_chunks(
    path: Path,
    columns: Sequence[str],
    chunksize: int,
    dtype: dict[str, str] | None = None,
    description: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield ``columns`` of a (gzipped) CSV in chunks of ``chunksize`` rows, with a rich progress bar on bytes.

    Raises:
        MimicError: the file lacks one of ``columns`` (named with the file).
    """
    path = Path(path)
    if chunksize < 1:
        raise MimicError(f"chunksize must be >= 1, got {chunksize}")
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise MimicError(f"{path} lacks column(s) {missing}; its columns are {list(header)}")
    raw = _CountingReader(path)
    try:
        binary = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else io.BufferedReader(raw)
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        reader = pd.read_csv(text, usecols=list(columns), dtype=dtype, chunksize=chunksize)
        total = path.stat().st_size
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task(description or path.name, total=total)
            for chunk in reader:
                progress.update(task, completed=raw.bytes_read)
                yield chunk
    finally:
        raw.close()


def read_csv_table(path: Path, columns: Sequence[str], dtype: dict[str, str] | None = None) -> pd.DataFrame:
    """A small table (admissions, patients, dictionaries) read whole, with the same column checks."""
    chunks = list(read_csv_chunks(path, columns, chunksize=1_000_000, dtype=dtype))
    if not chunks:
        return pd.DataFrame({c: pd.Series(dtype=(dtype or {}).get(c, "object")) for c in columns})
    return pd.concat(chunks, ignore_index=True)


def parse_mimic_times(values: pd.Series, table: str, column: str) -> pd.Series:
    """``YYYY-MM-DD HH:MM:SS`` strings -> datetimes (empty stays NaT); a malformed value is a clear error."""
    parsed = pd.to_datetime(values, format=MIMIC_TIME_FORMAT, errors="coerce")
    bad = values.notna() & (values.astype(str).str.len() > 0) & parsed.isna()
    if bad.any():
        # Retry date-only values (MIMIC-IV-Note sometimes charts at day resolution) before giving up.
        retry = pd.to_datetime(values[bad], format="ISO8601", errors="coerce")
        parsed.loc[bad] = retry
        still = bad & parsed.isna()
        if still.any():
            example = values[still].iloc[0]
            raise MimicError(f"{table}.{column} holds {example!r}, not a 'YYYY-MM-DD HH:MM:SS' time")
    return parsed
