"""The manifest: the one table of a cohort.

A manifest is a Parquet file with one row per sample (``sample_id`` unique, ``subject_id``, ``split``), one
label column per task, and pointer columns for each modality: a file path relative to that modality's root,
inline text, or inline values. Which column feeds what is declared in the file itself (Parquet schema metadata
under the key ``adacomed``), so a bring-your-own cohort is just a manifest and nothing downstream guesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write_bytes
from .errors import ManifestError
from .fingerprint import hash_rows
from .shards import file_checksum

MANIFEST_SCHEMA_VERSION = 1
METADATA_KEY = b"adacomed"
REQUIRED_COLUMNS = ("sample_id", "subject_id", "split")
SPLITS = ("train", "val", "test")

PointerKind = Literal["path", "text", "values"]
SmallKind = Literal["image", "text", "timeseries", "categorical", "ordinal", "numerical", "vector"]
POINTER_KINDS: tuple[str, ...] = ("path", "text", "values")
SMALL_KINDS: tuple[str, ...] = ("image", "text", "timeseries", "categorical", "ordinal", "numerical", "vector")


@dataclass
class ModalitySource:
    """Where a large encoder finds one modality's raw input.

    Args:
        column: manifest column holding the pointer.
        kind: ``path`` (file relative to ``root``), ``text`` (inline string) or ``values`` (inline list of floats).
        root: folder the paths are relative to; itself relative to the manifest's folder unless absolute.
    """

    column: str
    kind: PointerKind = "path"
    root: str = "."


@dataclass
class TaskSpec:
    """A binary task: its label column (1 positive, 0 negative, empty = excluded) and what positive means."""

    column: str
    positive: str = ""


@dataclass
class SmallInput:
    """One input of the small, task-driven model and what kind of encoder it gets.

    ``options`` carries kind-specific facts (ordered levels for ``ordinal``, a file root for ``image``).
    """

    column: str
    kind: SmallKind
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ManifestInfo:
    """The declared part of a manifest, stored beside the table."""

    cohort: str = "custom"
    modalities: dict[str, ModalitySource] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    small_inputs: dict[str, SmallInput] = field(default_factory=dict)
    notes: str = ""
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestInfo:
        return cls(
            cohort=data.get("cohort", "custom"),
            modalities={k: ModalitySource(**v) for k, v in data.get("modalities", {}).items()},
            tasks={k: TaskSpec(**v) for k, v in data.get("tasks", {}).items()},
            small_inputs={k: SmallInput(**v) for k, v in data.get("small_inputs", {}).items()},
            notes=data.get("notes", ""),
            schema_version=int(data.get("schema_version", MANIFEST_SCHEMA_VERSION)),
        )


class Manifest:
    """A validated cohort table plus its declarations.

    Build one from a DataFrame and a :class:`ManifestInfo`, or :meth:`read` it from Parquet.
    ``base_dir`` is the folder relative roots are resolved against (the manifest file's folder once written).
    """

    def __init__(self, table: pd.DataFrame, info: ManifestInfo, base_dir: str | os.PathLike | None = None):
        self.table = table.reset_index(drop=True)
        self.info = info
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        self.validate()

    # ------------------------------------------------------------------ I/O
    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"manifest {path} does not exist")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
        meta = (table.schema.metadata or {}).get(METADATA_KEY)
        if meta is None:
            raise ManifestError(
                f"manifest {path} has no '{METADATA_KEY.decode()}' metadata: write it with Manifest.write "
                "or build it with `adacomed-data from-table`"
            )
        info = ManifestInfo.from_dict(json.loads(meta))
        return cls(table.to_pandas(), info, base_dir=path.parent)

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename); relative roots then resolve against the file's folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.table, preserve_index=False)
        metadata = dict(table.schema.metadata or {})
        metadata[METADATA_KEY] = json.dumps(self.info.to_dict(), sort_keys=True).encode()
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        self.base_dir = path.parent.resolve()
        return path

    # ------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`ManifestError` naming the first offending row/column (all duplicates are listed)."""
        df = self.table
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ManifestError(f"manifest is missing required column(s) {missing}; it has {list(df.columns)}")
        ids = df["sample_id"]
        if ids.isna().any():
            row = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise ManifestError(f"row {row}: column 'sample_id' is empty")
        dup = ids[ids.duplicated(keep=False)]
        if len(dup):
            shown = sorted(set(dup.astype(str)))[:10]
            raise ManifestError(f"column 'sample_id' has duplicates: {shown} ({dup.nunique()} ids repeated)")
        for sid, split in zip(ids, df["split"]):
            if split not in SPLITS:
                raise ManifestError(f"sample {sid!r}: column 'split' is {split!r}; expected one of {list(SPLITS)}")
        for name, task in self.info.tasks.items():
            if task.column not in df.columns:
                raise ManifestError(f"task {name!r} declares label column {task.column!r}, which is not in the table")
            values = pd.to_numeric(df[task.column], errors="coerce")
            bad = df[task.column].notna() & ~values.isin([0, 1])
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ManifestError(
                    f"sample {df['sample_id'].iloc[row]!r}: column {task.column!r} is {df[task.column].iloc[row]!r}; "
                    "labels must be 0, 1 or empty"
                )
        for name, source in self.info.modalities.items():
            if source.kind not in POINTER_KINDS:
                raise ManifestError(f"modality {name!r}: kind {source.kind!r} is not one of {list(POINTER_KINDS)}")
            if source.column not in df.columns:
                raise ManifestError(f"modality {name!r} declares column {source.column!r}, which is not in the table")
            if source.kind == "path":
                for sid, value in zip(ids, df[source.column]):
                    if _is_missing(value):
                        continue
                    self._check_inside(name, source, str(sid), str(value))
        for name, small in self.info.small_inputs.items():
            if small.kind not in SMALL_KINDS:
                raise ManifestError(f"small input {name!r}: kind {small.kind!r} is not one of {list(SMALL_KINDS)}")
            if small.column not in df.columns:
                raise ManifestError(f"small input {name!r} declares column {small.column!r}, which is not in the table")

    def _check_inside(self, modality: str, source: ModalitySource, sample_id: str, value: str) -> None:
        if os.path.isabs(value):
            raise ManifestError(
                f"sample {sample_id!r}: column {source.column!r} holds an absolute path; paths are relative to the "
                f"modality root ({source.root!r})"
            )
        root = self.modality_root(modality)
        resolved = (root / value).resolve()
        if resolved != root and root not in resolved.parents:
            raise ManifestError(
                f"sample {sample_id!r}: column {source.column!r} path {value!r} escapes the modality root {root}"
            )

    # ----------------------------------------------------------- queries
    @property
    def sample_ids(self) -> list[str]:
        return self.table["sample_id"].astype(str).tolist()

    def modality_root(self, modality: str) -> Path:
        source = self._source(modality)
        root = Path(source.root)
        return (root if root.is_absolute() else self.base_dir / root).resolve()

    def _source(self, modality: str) -> ModalitySource:
        try:
            return self.info.modalities[modality]
        except KeyError:
            raise ManifestError(
                f"modality {modality!r} is not declared in this manifest; declared: {sorted(self.info.modalities)}"
            ) from None

    def modality_items(self, modality: str) -> list[tuple[str, Any]]:
        """(sample_id, pointer) for every row that has this modality: a resolved Path, a str, or a float array."""
        source = self._source(modality)
        root = self.modality_root(modality) if source.kind == "path" else None
        items: list[tuple[str, Any]] = []
        for sid, value in zip(self.table["sample_id"].astype(str), self.table[source.column]):
            if _is_missing(value):
                continue
            if source.kind == "path":
                items.append((sid, root / str(value)))
            elif source.kind == "text":
                items.append((sid, str(value)))
            else:
                items.append((sid, np.asarray(value, dtype=np.float32)))
        return items

    def input_hash(self, modality: str) -> str:
        """Hash of this modality's (sample id, pointer) rows; text and values are hashed, never stored."""
        source = self._source(modality)
        rows = []
        for sid, value in zip(self.table["sample_id"].astype(str), self.table[source.column]):
            if _is_missing(value):
                continue
            if source.kind == "path":
                pointer = f"path:{value}"
            elif source.kind == "text":
                pointer = "text:" + hashlib.sha256(str(value).encode()).hexdigest()
            else:
                pointer = "values:" + hashlib.sha256(np.asarray(value, dtype=np.float32).tobytes()).hexdigest()
            rows.append((sid, pointer))
        return hash_rows(rows)

    def input_files_hash(self, modality: str, mode: str = "stat") -> str:
        """Hash of the files a path modality points to: ``stat`` (size, mtime) or ``content`` (xxh3 of bytes).

        A pointer to a folder (a DICOM series) stands for every file under it, by relative name.
        Missing files count as missing (the extraction records them as errors). Empty for text/values modalities.
        """
        source = self._source(modality)
        if source.kind != "path":
            return ""
        if mode not in ("stat", "content"):
            raise ValueError(f"input hash mode {mode!r} is not one of ['stat', 'content']")
        rows = []
        for sid, path in self.modality_items(modality):
            try:
                rows.append((sid, _file_signature(Path(path), mode)))
            except FileNotFoundError:
                rows.append((sid, "missing"))
        return f"{'stat' if mode == 'stat' else 'xxh3'}:{hash_rows(rows)}"

    def labels(self, task: str) -> pd.Series:
        """Labels of a task indexed by sample id (float: 1.0, 0.0, NaN for excluded)."""
        if task not in self.info.tasks:
            raise ManifestError(f"task {task!r} is not declared in this manifest; declared: {sorted(self.info.tasks)}")
        column = self.info.tasks[task].column
        return pd.Series(
            pd.to_numeric(self.table[column], errors="coerce").to_numpy(dtype=float),
            index=self.table["sample_id"].astype(str),
            name=task,
        )

    def split_of(self) -> pd.Series:
        return pd.Series(self.table["split"].to_numpy(), index=self.table["sample_id"].astype(str), name="split")


def _file_signature(path: Path, mode: str) -> str:
    """``size:mtime_ns`` or the xxh3 checksum of a file; for a folder, a hash over its files' relative names and
    signatures (adding, removing, renaming or changing a slice changes it)."""
    if path.is_dir():
        lines = [
            f"{file.relative_to(path).as_posix()}={_file_signature(file, mode)}"
            for file in sorted(p for p in path.rglob("*") if p.is_file())
        ]
        return "dir:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
    if mode == "stat":
        stat = os.stat(path)
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return file_checksum(path)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if isinstance(value, str) and value == "":
        return True
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0:
        return True
    return False
