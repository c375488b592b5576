"""MIMIC-IV-MM: the paper's MIMIC cohort, built from the credentialed releases' own files.

One sample per admission (``hadm_id``), observed over its first ``window_hours`` (48): the last chest X-ray
(MIMIC-CXR-JPG), the notes and the hourly EHR time series of that window, with three labels (in-hospital
mortality, length of stay > 7 days, unplanned 30-day readmission). Definitions and boundaries:
:mod:`.mimic_cohort` (labels), :mod:`.mimic_media` (X-ray, notes), :mod:`.mimic_timeseries` (grid).

Writes into ``out``: ``manifest.parquet``, ``timeseries/<hadm_id>.npz`` and ``cohort_summary.json`` / ``.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ....cache_schema import Manifest, ManifestInfo, ModalitySource, SmallInput, TaskSpec
from .cohort import (
    AGE_LEVELS,
    STATIC_CATEGORICAL,
    CohortCounts,
    add_demographics,
    assign_splits,
    icu_admission_ids,
    label_admissions,
    load_admissions,
    load_patients,
    select_cohort,
)
from .media import MediaStats, collect_notes, select_xrays
from .sources import (
    MimicError,
    locate_mimic_cxr,
    locate_mimic_iv,
    locate_mimic_note,
    read_csv_table,
)
from .summary import write_summary
from .timeseries import collect_events, write_grids
from .variables import check_against_dictionaries, load_variables

logger = logging.getLogger(__name__)

COHORT_NAME = "mimic-iv-mm"
MANIFEST_NAME = "manifest.parquet"
TIMESERIES_DIR = "timeseries"
TASKS = {
    "mortality": "died in hospital during this admission",
    "longstay": "hospital stay longer than 7 days (stays under 3 days excluded)",
    "readmission": "unplanned readmission within 30 days of discharge (in-hospital deaths excluded)",
}


def build_mimic_iv_mm(
    mimic_iv: Path,
    mimic_cxr: Path,
    mimic_note: Path,
    out: Path,
    window_hours: float = 48,
    xray: str = "last",
    chunksize: int = 1_000_000,
    variables_dir: Path | None = None,
    require_all_modalities: bool = False,
    note_types: Sequence[str] = ("radiology",),
    icu_only: bool = True,
    seed: int = 0,
) -> Path:
    """Build the MIMIC-IV-MM manifest, time-series files and cohort summary into ``out``.

    Args:
        mimic_iv: MIMIC-IV folder holding ``hosp/`` and ``icu/`` (or a versioned folder above them).
        mimic_cxr: MIMIC-CXR-JPG folder holding ``mimic-cxr-2.0.0-metadata.csv(.gz)`` and ``files/``.
        mimic_note: MIMIC-IV-Note folder holding ``note/radiology.csv(.gz)`` (and ``discharge``).
        out: output folder.
        window_hours: observation window after ``admittime``; only data charted inside it is used.
        xray: ``"last"`` (default) or ``"first"`` study of the window.
        chunksize: rows per chunk when streaming the large tables.
        variables_dir: folder with edited ``vitals.csv``, ``labs.csv``, ``procedures.csv``,
            ``admission_types.csv`` (default: the shipped ``pipelines/datasets/mimic/variables``).
        require_all_modalities: keep only admissions with an X-ray, a note and charted events in the window
            (the paper's three-modality cohort). By default admissions keep empty pointers for what is missing.
        note_types: which MIMIC-IV-Note tables to read. Default radiology only: discharge summaries are charted
            at discharge, so they fall outside the window for every stay longer than it, and for shorter stays
            (deaths in the first hours, say) they would leak the outcome. Add ``"discharge"`` knowingly.
        icu_only: keep only admissions with an ICU stay (vital signs and procedures are charted in the ICU).
        seed: seed of the 70/15/15 subject-level split.

    Returns:
        The manifest path (``out/manifest.parquet``).

    Raises:
        MimicError: a release file is missing or malformed, or a variable list is invalid.
    """
    out = Path(out)
    if window_hours <= 0:
        raise MimicError(f"window_hours must be > 0, got {window_hours}")
    tables = locate_mimic_iv(Path(mimic_iv))
    cxr_root, cxr_metadata = locate_mimic_cxr(Path(mimic_cxr))
    note_files = locate_mimic_note(Path(mimic_note), note_types)
    variables = load_variables(variables_dir)
    check_against_dictionaries(
        variables,
        read_csv_table(tables["d_items"], ["itemid", "linksto"], dtype={"itemid": "str", "linksto": "str"}),
        read_csv_table(tables["d_labitems"], ["itemid"], dtype={"itemid": "str"}),
    )

    counts = CohortCounts()
    admissions = label_admissions(load_admissions(tables), variables)
    admissions = add_demographics(admissions, load_patients(tables))
    cohort = select_cohort(admissions, icu_admission_ids(tables) if icu_only else None, counts)
    if cohort.empty:
        raise MimicError(f"no admission of {tables.root} passes the cohort criteria ({counts})")

    media = MediaStats()
    xray_paths = select_xrays(cohort, cxr_metadata, cxr_root, window_hours, xray, chunksize, media)
    notes = collect_notes(cohort, note_files, window_hours, chunksize, media, note_types)
    cohort["xray_path"] = cohort["hadm_id"].map(xray_paths)
    cohort["note_text"] = cohort["hadm_id"].map(notes)
    excluded_missing = 0
    if require_all_modalities:
        has_both = cohort["xray_path"].notna() & cohort["note_text"].notna()
        excluded_missing = int((~has_both).sum())
        cohort = cohort[has_both].reset_index(drop=True)

    admit = pd.Series(cohort["admittime"].to_numpy(), index=cohort["hadm_id"].to_numpy())
    events, event_stats = collect_events(tables, variables, admit, window_hours, chunksize)
    observed = write_grids(cohort, events, variables, window_hours, out / TIMESERIES_DIR)
    cohort["timeseries_observations"] = cohort["hadm_id"].map(observed).fillna(0).astype(int)
    cohort["timeseries_path"] = [f"{int(h)}.npz" for h in cohort["hadm_id"]]
    if require_all_modalities:
        has_events = cohort["timeseries_observations"] > 0
        excluded_missing += int((~has_events).sum())
        cohort = cohort[has_events].reset_index(drop=True)
    if cohort.empty:
        raise MimicError("no admission has an X-ray, a note and charted events in the window")
    cohort["split"] = assign_splits(cohort, seed)

    manifest = Manifest(_manifest_table(cohort), _manifest_info(cohort, cxr_root, window_hours, xray, note_types))
    path = manifest.write(out / MANIFEST_NAME)
    write_summary(
        out,
        manifest.table,
        settings={
            "window_hours": window_hours,
            "xray": xray,
            "note_types": list(note_types),
            "icu_only": icu_only,
            "require_all_modalities": require_all_modalities,
            "seed": seed,
            "chunksize": chunksize,
        },
        exclusions={**vars(counts), "missing_modalities": excluded_missing},
        streaming={"events": vars(event_stats), "media": vars(media)},
    )
    logger.info("MIMIC-IV-MM: %d admissions of %d subjects -> %s", len(cohort), cohort["subject_id"].nunique(), path)
    return path


def _text_or_none(values: pd.Series) -> list[str | None]:
    return [None if (v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "") else str(v) for v in values]


def _manifest_table(cohort: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "sample_id": [f"hadm-{int(h)}" for h in cohort["hadm_id"]],
            "subject_id": cohort["subject_id"].astype("int64").astype(str),
            "split": cohort["split"].astype(str),
            "hadm_id": cohort["hadm_id"].astype("int64"),
            "label_mortality": cohort["label_mortality"].astype(float),
            "label_longstay": cohort["label_longstay"].astype(float),
            "label_readmission": cohort["label_readmission"].astype(float),
            "xray_path": _text_or_none(cohort["xray_path"]),
            "note_text": _text_or_none(cohort["note_text"]),
            "timeseries_path": cohort["timeseries_path"].astype(str),
            "timeseries_observations": cohort["timeseries_observations"].astype("int64"),
            "age_bin": _text_or_none(cohort["age_bin"]),
            "age": cohort["age"].astype(float),
            "los_days": cohort["los_days"].astype(float),
            "admittime": cohort["admittime"],
        }
    )
    for column in STATIC_CATEGORICAL:
        table[column] = _text_or_none(cohort[column])
    return table


def _manifest_info(
    cohort: pd.DataFrame, cxr_root: Path, window_hours: float, xray: str, note_types: Sequence[str]
) -> ManifestInfo:
    root = str(cxr_root.resolve())
    small_inputs = {
        "xray": SmallInput(column="xray_path", kind="image", options={"root": root}),
        "notes": SmallInput(column="note_text", kind="text"),
        "timeseries": SmallInput(column="timeseries_path", kind="timeseries", options={"root": TIMESERIES_DIR}),
        "age_bin": SmallInput(column="age_bin", kind="ordinal", options={"levels": list(AGE_LEVELS)}),
    }
    for column in STATIC_CATEGORICAL:
        categories = sorted({str(v) for v in cohort[column].dropna() if str(v) != ""})
        small_inputs[column] = SmallInput(column=column, kind="categorical", options={"categories": categories})
    return ManifestInfo(
        cohort=COHORT_NAME,
        modalities={
            "xray": ModalitySource(column="xray_path", kind="path", root=root),
            "notes": ModalitySource(column="note_text", kind="text"),
            "timeseries": ModalitySource(column="timeseries_path", kind="path", root=TIMESERIES_DIR),
        },
        tasks={name: TaskSpec(column=f"label_{name}", positive=text) for name, text in TASKS.items()},
        small_inputs=small_inputs,
        notes=(
            f"first {window_hours:g} h after admittime; {xray} X-ray study of the window (frontal preferred); "
            f"notes: {', '.join(note_types)} charted in the window; see cohort_summary.md"
        ),
    )
