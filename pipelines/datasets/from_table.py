"""Bring your own cohort: a CSV/Parquet table plus a mapping file -> an AdaCoMed manifest.

The mapping (YAML or JSON; see ``templates/example_mapping.yaml``) says which column is what. Worked example:

``cohort.csv``::

    patient,visit,cxr,note,age,sex,stage,died,set
    P1,V1,img/p1.png,Chest pain on exertion...,71,F,II,yes,train
    P2,V2,img/p2.png,Shortness of breath...,64,M,III,no,test

``mapping.yaml``::

    cohort: my-hospital
    sample_id: visit
    subject_id: patient            # default: the sample id (one sample per subject)
    split: set                     # or: split_ratios: {train: 0.7, val: 0.1, test: 0.2} and seed: 0
    tasks:
      mortality:
        column: died
        positive: died in hospital
        positive_values: [yes]     # strings that mean 1 ...
        negative_values: [no]      # ... and 0 (0/1 numbers need no mapping)
    modalities:                    # what the large encoders read
      xray: {column: cxr, kind: path, root: .}    # root relative to the table's folder
      notes: {column: note, kind: text}
      clinical: {kind: template, template: prompt.txt, values: {sex: {F: female, M: male}}}
    small_inputs:                  # what the small model reads
      xray: {column: cxr, kind: image, root: .}
      age: {column: age, kind: numerical}
      sex: {column: sex, kind: categorical}
      stage: {column: stage, kind: ordinal, levels: [I, II, III, IV]}

Then ``build_from_table("cohort.csv", "mapping.yaml", "out/")`` writes ``out/manifest.parquet``
(``adacomed-data from-table --table cohort.csv --mapping mapping.yaml --out out/``).

Checks, each naming what to fix: an unknown column lists the close matches; a label that is not 0/1 names the
sample and the value and says to add ``positive_values``/``negative_values``; a split value must be
train/val/test (common spellings such as "validation" are accepted). Files that a path column points to but
that do not exist are counted and the first sample ids shown; their pointers are left empty (missing) and
listed in ``missing_files.csv`` beside the manifest; with ``strict: true`` (or ``strict=True``) they are an error.
A ``kind: template`` modality writes one text per row from a template file you own (``{column}`` placeholders,
optional ``values`` maps per column, blank cells or ``missing_values`` said as ``missing``, default "unknown"):
the clinical-table prompt of supplement section 4.2 for your own columns (see ``prompts.render_table_template``).
``split_ratios`` assigns whole subjects to splits: subjects are ordered by a hash of (seed, subject id) and cut
by the ratios, so the result is deterministic and a subject's rows never straddle two splits.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ...cache_schema.manifest import (
    POINTER_KINDS,
    SMALL_KINDS,
    Manifest,
    ManifestInfo,
    ModalitySource,
    SmallInput,
    TaskSpec,
)
from ...cache_schema.splits import split_subjects
from .prompts import PromptError, prompts_from_mapping

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
PATH_SMALL_KINDS = ("image", "timeseries", "vector")
MAPPING_KEYS = {
    "cohort",
    "sample_id",
    "subject_id",
    "split",
    "split_values",
    "split_ratios",
    "seed",
    "tasks",
    "modalities",
    "small_inputs",
    "notes",
    "strict",
}


class MappingError(ValueError):
    """The table and the mapping do not fit together; the message says what to change."""


def load_mapping(mapping: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """Read a YAML/JSON mapping file (or take a dict) and check its top-level keys."""
    if isinstance(mapping, Mapping):
        data = dict(mapping)
    else:
        path = Path(mapping)
        if not path.is_file():
            raise MappingError(f"mapping file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise MappingError(f"mapping file {path} must hold a mapping (key: value), not {type(data).__name__}")
    unknown = sorted(set(data) - MAPPING_KEYS)
    if unknown:
        hints = {k: difflib.get_close_matches(k, MAPPING_KEYS, n=1) for k in unknown}
        raise MappingError(f"mapping has unknown key(s) {hints} (key: close match); known keys: {sorted(MAPPING_KEYS)}")
    if "sample_id" not in data:
        raise MappingError("mapping needs 'sample_id': the column that identifies each row")
    if "split" in data and "split_ratios" in data:
        raise MappingError("mapping gives both 'split' (a column) and 'split_ratios'; keep one")
    return data


def read_table(table: Path | str) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table."""
    path = Path(table)
    if not path.is_file():
        raise MappingError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".tsv", ".tab"):
        return pd.read_csv(path, sep="\t")
    if suffix == ".csv":
        return pd.read_csv(path)
    raise MappingError(f"table {path}: expected a .csv, .tsv or .parquet file")


def _column(df: pd.DataFrame, name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in df.columns:
        close = difflib.get_close_matches(str(name), [str(c) for c in df.columns], n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else f"; the table has {list(df.columns)}"
        raise MappingError(f"{where}: column {name!r} is not in the table{hint}")
    return name


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _labels(df: pd.DataFrame, ids: pd.Series, task: str, spec: Mapping[str, Any]) -> np.ndarray:
    column = _column(df, spec.get("column"), f"task {task!r}")
    positives = {str(v).strip().lower() for v in spec.get("positive_values", [])}
    negatives = {str(v).strip().lower() for v in spec.get("negative_values", [])}
    if positives & negatives:
        raise MappingError(f"task {task!r}: values {sorted(positives & negatives)} are both positive and negative")
    out = np.full(len(df), np.nan)
    for row, (sid, value) in enumerate(zip(ids, df[column])):
        if _missing(value):
            continue
        text = str(value).strip().lower()
        if text in positives:
            out[row] = 1.0
        elif text in negatives:
            out[row] = 0.0
        elif text in ("true", "false") and isinstance(value, (bool, np.bool_)):
            out[row] = float(bool(value))
        else:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if number not in (0.0, 1.0):
                found = sorted({str(v) for v in df[column].dropna().unique()})[:10]
                raise MappingError(
                    f"sample {sid!r} (row {row}): task {task!r} column {column!r} is {value!r}, not 0/1. Map the "
                    f"table's values with 'positive_values: [...]' and 'negative_values: [...]' under the task; "
                    f"values found: {found}"
                )
            out[row] = number
    return out


def _splits_from_column(df: pd.DataFrame, ids: pd.Series, column: str, values: Mapping[str, str]) -> list[str]:
    aliases = {**SPLIT_ALIASES, **{str(k).strip().lower(): v for k, v in values.items()}}
    splits = []
    for sid, value in zip(ids, df[column]):
        split = aliases.get(str(value).strip().lower()) if not _missing(value) else None
        if split not in ("train", "val", "test"):
            raise MappingError(
                f"sample {sid!r}: split column {column!r} is {value!r}; use train/val/test or map it with "
                "'split_values: {your value: train|val|test}'"
            )
        splits.append(split)
    return splits


def assign_splits(subjects: pd.Series, ratios: Mapping[str, float], seed: int = 0) -> list[str]:
    """Split by subject: the project's one subject-level split (subjects ordered by sha256 of (seed, subject),
    cut by the ratios; deterministic and independent of row order)."""
    unknown = sorted(set(ratios) - {"train", "val", "test"})
    if unknown or not ratios:
        raise MappingError(f"split_ratios keys must be train/val/test, got {sorted(ratios)}")
    fractions = {s: float(ratios.get(s, 0.0)) for s in ("train", "val", "test")}
    if any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise MappingError(f"split_ratios must be non-negative and not all zero, got {dict(ratios)}")
    return split_subjects(subjects.astype(str).tolist(), fractions, seed).tolist()


def _resolve_root(root: str | None, table_dir: Path, out_dir: Path) -> tuple[Path, str]:
    """(absolute root, root as written into the manifest: relative to the manifest folder when possible)."""
    absolute = Path(root or ".")
    absolute = (absolute if absolute.is_absolute() else table_dir / absolute).resolve()
    try:
        written = os.path.relpath(absolute, out_dir.resolve())
    except ValueError:  # another drive on Windows
        written = str(absolute)
    return absolute, written


def _relative_path(value: Any, root: Path, sid: str, where: str) -> str:
    text = str(value).strip()
    if os.path.isabs(text):
        try:
            return str(Path(text).resolve().relative_to(root))
        except ValueError:
            raise MappingError(
                f"sample {sid!r}: {where} holds absolute path outside its root {root}; set 'root' to a folder "
                "that contains the files, or write paths relative to it"
            ) from None
    return text


def _parse_values(value: Any, sid: str, where: str) -> list[float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise MappingError(f"sample {sid!r}: {where} is not a JSON list of numbers") from exc
    try:
        return [float(v) for v in np.asarray(value, dtype=float).reshape(-1)]
    except (TypeError, ValueError) as exc:
        raise MappingError(f"sample {sid!r}: {where} is not a list of numbers") from exc


def build_from_table(
    table: Path | str,
    mapping: Path | str | Mapping[str, Any],
    out: Path | str,
    strict: bool | None = None,
) -> Path:
    """Build a manifest from your own table and a mapping; return the manifest path.

    Args:
        table: CSV, TSV or Parquet file, one row per sample.
        mapping: YAML/JSON mapping file (or the same as a dict) saying which column is what.
        out: manifest file (``.parquet``) or a folder to write ``manifest.parquet`` into.
        strict: make missing files an error (default: the mapping's ``strict``, else False).
    """
    table_path = Path(table)
    spec = load_mapping(mapping)
    strict = bool(spec.get("strict", False)) if strict is None else strict
    df = read_table(table_path).reset_index(drop=True)
    out = Path(out)
    manifest_path = out if out.suffix == ".parquet" else out / "manifest.parquet"
    out_dir = manifest_path.parent
    table_dir = table_path.resolve().parent

    id_column = _column(df, spec["sample_id"], "sample_id")
    ids = df[id_column].astype(str).str.strip()
    blank = df[id_column].isna() | (ids == "")
    if blank.any():
        raise MappingError(f"row {int(np.flatnonzero(blank.to_numpy())[0])}: sample_id column {id_column!r} is empty")
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        raise MappingError(
            f"sample_id column {id_column!r} repeats {sorted(set(duplicated))[:5]}; every row needs its own id "
            "(use subject_id for the patient)"
        )
    subject_column = spec.get("subject_id")
    subjects = df[_column(df, subject_column, "subject_id")].astype(str) if subject_column else ids
    if "split" in spec:
        splits = _splits_from_column(df, ids, _column(df, spec["split"], "split"), spec.get("split_values", {}))
    elif "split_ratios" in spec:
        splits = assign_splits(subjects, spec["split_ratios"], int(spec.get("seed", 0)))
    else:
        raise MappingError("mapping needs 'split' (a column of train/val/test) or 'split_ratios' (e.g. {train: 0.8})")

    manifest_table = pd.DataFrame({"sample_id": ids, "subject_id": subjects.to_numpy(), "split": splits})
    info = ManifestInfo(cohort=str(spec.get("cohort", "custom")), notes=str(spec.get("notes", "")))
    for task, task_spec in (spec.get("tasks") or {}).items():
        label_column = f"label_{task}"
        manifest_table[label_column] = _labels(df, ids, task, task_spec)
        info.tasks[task] = TaskSpec(label_column, str(task_spec.get("positive", "")))

    missing_rows: list[dict[str, str]] = []
    written_columns: dict[str, str] = {}  # source column -> manifest column, so shared columns are copied once

    def copy_column(source: str, kind: str, root: str | None, owner: str) -> tuple[str, str]:
        """Copy a pointer column into the manifest; returns (manifest column, root as written)."""
        absolute_root, written_root = _resolve_root(root, table_dir, out_dir)
        key = f"{source}|{kind}|{absolute_root if kind == 'path' else ''}"
        if key in written_columns:
            return written_columns[key], written_root
        target = source if source not in manifest_table.columns else f"{source}__{owner}"
        values: list[Any] = []
        for sid, value in zip(ids, df[source]):
            if _missing(value) if not isinstance(value, (list, np.ndarray)) else len(value) == 0:
                values.append(None)
            elif kind == "path":
                relative = _relative_path(value, absolute_root, sid, f"{owner} column {source!r}")
                if (absolute_root / relative).exists():
                    values.append(relative)
                else:
                    values.append(None)
                    missing_rows.append({"sample_id": sid, "input": owner, "path": str(absolute_root / relative)})
            elif kind == "values":
                values.append(_parse_values(value, sid, f"{owner} column {source!r}"))
            else:
                values.append(str(value))
        manifest_table[target] = values
        written_columns[key] = target
        return target, written_root

    for name, mod in (spec.get("modalities") or {}).items():
        kind = mod.get("kind", "path")
        if kind == "template":  # a text modality written from the table's own columns (prompts.py)
            try:
                prompts = prompts_from_mapping(df, mod, table_dir)
            except PromptError as exc:
                raise MappingError(f"modality {name!r}: {exc}") from None
            column = f"{name}__prompt" if name in manifest_table.columns else name
            manifest_table[column] = prompts
            info.modalities[name] = ModalitySource(column, "text", ".")
            continue
        if kind not in POINTER_KINDS:
            raise MappingError(f"modality {name!r}: kind {kind!r} is not one of {list(POINTER_KINDS)}")
        source = _column(df, mod.get("column"), f"modality {name!r}")
        column, root = copy_column(source, kind, mod.get("root"), name)
        info.modalities[name] = ModalitySource(column, kind, root if kind == "path" else ".")

    for name, small in (spec.get("small_inputs") or {}).items():
        kind = small.get("kind")
        if kind not in SMALL_KINDS:
            raise MappingError(f"small input {name!r}: kind {kind!r} is not one of {list(SMALL_KINDS)}")
        source = _column(df, small.get("column"), f"small input {name!r}")
        options = {k: v for k, v in small.items() if k not in ("column", "kind", "root")}
        if kind in PATH_SMALL_KINDS:
            column, root = copy_column(source, "path", small.get("root"), name)
            options["root"] = root
        elif kind == "text":
            column, _ = copy_column(source, "text", None, name)
        else:
            column = f"{name}__small" if name in manifest_table.columns else name
            manifest_table[column], options = _tabular(df[source], ids, name, kind, options)
        info.small_inputs[name] = SmallInput(column, kind, options)

    if missing_rows:
        first = [r["sample_id"] for r in missing_rows[:5]]
        message = f"{len(missing_rows)} referenced files do not exist (first samples: {first})"
        if strict:
            raise MappingError(message + "; fix the paths or 'root', or drop strict to leave them missing")
        log.warning("%s; left empty and listed in %s", message, out_dir / "missing_files.csv")
        info.notes = (info.notes + f" {len(missing_rows)} referenced files were missing at build time.").strip()
    manifest = Manifest(manifest_table, info, base_dir=out_dir)
    manifest.write(manifest_path)
    if missing_rows:
        pd.DataFrame(missing_rows).to_csv(out_dir / "missing_files.csv", index=False)
    return manifest_path


def _tabular(
    column: pd.Series, ids: pd.Series, name: str, kind: str, options: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Categorical/ordinal values as strings (checked against levels), numerical as floats."""
    if kind == "numerical":
        numbers = pd.to_numeric(column, errors="coerce")
        bad = column.notna() & numbers.isna() & (column.astype(str).str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MappingError(
                f"sample {ids.iloc[row]!r}: numerical input {name!r} is {column.iloc[row]!r}, not a number"
            )
        return numbers.astype(float).tolist(), options
    values = [None if _missing(v) else _as_text(v) for v in column]
    if kind == "ordinal":
        levels = options.get("levels")
        if not levels:
            raise MappingError(f"ordinal input {name!r} needs 'levels: [lowest, ..., highest]'")
        levels = [_as_text(v) for v in levels]
        for sid, value in zip(ids, values):
            if value is not None and value not in levels:
                raise MappingError(
                    f"sample {sid!r}: ordinal input {name!r} is {value!r}, not one of its levels {levels}"
                )
        return values, {**options, "levels": levels}
    categories = [_as_text(v) for v in options.get("categories", [])] or sorted({v for v in values if v is not None})
    for sid, value in zip(ids, values):
        if value is not None and value not in categories:
            raise MappingError(f"sample {sid!r}: categorical input {name!r} is {value!r}, not one of {categories}")
    return values, {**options, "categories": categories}


def _as_text(value: Any) -> str:
    """'2.0' and 2 both become '2' so declared levels match the table's cells."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()
