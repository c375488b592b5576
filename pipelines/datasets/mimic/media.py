"""The chest X-ray and the clinical notes of each MIMIC-IV-MM admission, from its observation window.

Both are matched to an admission by subject and time, inside ``[admittime, admittime + window_hours)`` and no
later than ``dischtime`` (an X-ray after discharge belongs to another visit):

* X-ray: MIMIC-CXR-JPG has no ``hadm_id``; a study's time is ``StudyDate`` (YYYYMMDD) + ``StudyTime``
  (HHMMSS.f). The last study in the window is chosen (``xray="first"`` for the first); inside that study a
  frontal view is preferred (PA, then AP, then any other view; ties by ``dicom_id``). Images whose JPEG is not
  on disk are skipped and counted. Admissions without a study in the window keep an empty pointer.
* Notes: a note counts when its ``charttime`` is in the window and its ``hadm_id`` is empty or this admission.
  Discharge summaries are charted at discharge, so for stays longer than the window the window holds the
  radiology reports only. Texts are cleaned as the supplement (4.2) says (line breaks removed, whitespace
  collapsed) and concatenated in time order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .sources import MimicError, parse_mimic_times, read_csv_chunks

CXR_COLUMNS = ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]
NOTE_COLUMNS = ["note_id", "subject_id", "hadm_id", "note_seq", "charttime", "text"]
VIEW_RANK = {"PA": 0, "AP": 1}
XRAY_CHOICES = ("last", "first")
NOTE_SEPARATOR = " "
_WHITESPACE = re.compile(r"\s+")


@dataclass
class MediaStats:
    """Counts for the cohort summary."""

    xray_candidates_in_window: int = 0
    xray_files_missing: int = 0
    notes_in_window: int = 0


def clean_note(text: str) -> str:
    """Remove line breaks and collapse runs of whitespace (supplement 4.2); tokenization is the encoder's job."""
    return _WHITESPACE.sub(" ", text).strip()


def study_times(dates: pd.Series, times: pd.Series) -> pd.Series:
    """MIMIC-CXR ``StudyDate`` (YYYYMMDD) and ``StudyTime`` (HHMMSS.f as a float) -> datetimes.

    Raises:
        MimicError: a date or time that cannot be read (names the value, never a patient).
    """
    date = pd.to_datetime(
        pd.to_numeric(dates, errors="coerce").astype("Int64").astype(str), format="%Y%m%d", errors="coerce"
    )
    seconds_of_day = pd.to_numeric(times, errors="coerce")
    hhmmss = np.floor(seconds_of_day.fillna(0).to_numpy())
    fraction = seconds_of_day.fillna(0).to_numpy() - hhmmss
    hh, rest = np.divmod(hhmmss, 10000)
    mm, ss = np.divmod(rest, 100)
    bad = date.isna() | seconds_of_day.isna() | (hh >= 24) | (mm >= 60) | (ss >= 60)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise MimicError(
            f"mimic-cxr metadata: StudyDate {dates.iloc[i]!r} / StudyTime {times.iloc[i]!r} is not YYYYMMDD / HHMMSS.f"
        )
    offset = pd.to_timedelta(hh * 3600 + mm * 60 + ss + fraction, unit="s")
    return date + offset


def xray_relative_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    """``files/p<first two digits>/p<subject>/s<study>/<dicom>.jpg``, the MIMIC-CXR-JPG layout."""
    subject = str(int(subject_id))
    return f"files/p{subject[:2]}/p{subject}/s{int(study_id)}/{dicom_id}.jpg"


def _windows(cohort: pd.DataFrame, window_hours: float) -> pd.DataFrame:
    frame = cohort[["subject_id", "hadm_id", "admittime", "dischtime"]].copy()
    frame["window_end"] = frame["admittime"] + pd.to_timedelta(window_hours, unit="h")
    return frame


def _inside(times: pd.Series, frame: pd.DataFrame) -> pd.Series:
    return (times >= frame["admittime"]) & (times < frame["window_end"]) & (times <= frame["dischtime"])


def select_xrays(
    cohort: pd.DataFrame,
    metadata: Path,
    cxr_root: Path,
    window_hours: float,
    xray: str,
    chunksize: int,
    stats: MediaStats,
) -> pd.Series:
    """The chosen JPEG (relative to ``cxr_root``) per hadm_id; admissions without one are absent."""
    if xray not in XRAY_CHOICES:
        raise MimicError(f"xray must be one of {list(XRAY_CHOICES)}, got {xray!r}")
    subjects = cohort["subject_id"].unique()
    windows = _windows(cohort, window_hours)
    kept = []
    dtype = {"dicom_id": "str", "subject_id": "float64", "study_id": "float64", "ViewPosition": "str"}
    dtype |= {"StudyDate": "float64", "StudyTime": "float64"}
    # closing(): a failure inside the loop must end the progress display at once.
    stream = read_csv_chunks(metadata, CXR_COLUMNS, chunksize, dtype=dtype, description="reading mimic-cxr")
    with closing(stream) as chunks:
        for chunk in chunks:
            chunk = chunk[chunk["subject_id"].isin(subjects)]
            if chunk.empty:
                continue
            chunk = chunk.assign(
                subject_id=chunk["subject_id"].astype("int64"),
                study_id=chunk["study_id"].astype("int64"),
                study_time=study_times(chunk["StudyDate"], chunk["StudyTime"]),
            )
            joined = chunk.merge(windows, on="subject_id")
            kept.append(joined[_inside(joined["study_time"], joined)])
    if not kept or all(k.empty for k in kept):
        return pd.Series(dtype=object, name="xray_path")
    cand = pd.concat(kept, ignore_index=True)
    stats.xray_candidates_in_window = len(cand)
    cand["xray_path"] = [
        xray_relative_path(s, t, d)
        for s, t, d in zip(cand["subject_id"], cand["study_id"], cand["dicom_id"], strict=True)
    ]
    exists = np.array([(cxr_root / p).is_file() for p in cand["xray_path"]], dtype=bool)
    stats.xray_files_missing = int((~exists).sum())
    cand = cand[exists]
    view = cand["ViewPosition"].fillna("").str.strip().str.upper()
    cand = cand.assign(view_rank=view.map(VIEW_RANK).fillna(len(VIEW_RANK)))
    # First pick the study (last or first by time), then the best view inside it.
    ascending = xray == "first"
    ordered = cand.sort_values(["hadm_id", "study_time", "study_id"], ascending=[True, ascending, ascending])
    study = ordered.drop_duplicates("hadm_id", keep="first")[["hadm_id", "study_id"]]
    cand = cand.merge(study, on=["hadm_id", "study_id"]).sort_values(["hadm_id", "view_rank", "dicom_id"])
    chosen = cand.drop_duplicates("hadm_id", keep="first")
    return pd.Series(chosen["xray_path"].to_numpy(), index=chosen["hadm_id"].to_numpy(), name="xray_path")


def collect_notes(
    cohort: pd.DataFrame,
    note_files: dict[str, Path],
    window_hours: float,
    chunksize: int,
    stats: MediaStats,
    note_types: Sequence[str],
) -> pd.Series:
    """Cleaned notes of the window, concatenated in time order, per hadm_id (admissions with none are absent)."""
    subjects = cohort["subject_id"].unique()
    windows = _windows(cohort, window_hours)
    kept = []
    dtype = {"note_id": "str", "subject_id": "float64", "hadm_id": "float64", "note_seq": "float64"}
    dtype |= {"charttime": "str", "text": "str"}
    for note_type in note_types:
        path = note_files[note_type]
        # closing(): a failure inside the loop must end the progress display at once.
        stream = read_csv_chunks(path, NOTE_COLUMNS, chunksize, dtype=dtype, description=f"reading {note_type}")
        with closing(stream) as chunks:
            for chunk in chunks:
                chunk = chunk[chunk["subject_id"].isin(subjects)]
                if chunk.empty:
                    continue
                chunk = chunk.assign(
                    subject_id=chunk["subject_id"].astype("int64"),
                    note_time=parse_mimic_times(chunk["charttime"], note_type, "charttime"),
                ).rename(columns={"hadm_id": "note_hadm_id"})
                joined = chunk.merge(windows, on="subject_id")
                same_stay = joined["note_hadm_id"].isna() | (joined["note_hadm_id"] == joined["hadm_id"])
                joined = joined[same_stay & _inside(joined["note_time"], joined)]
                kept.append(joined[["hadm_id", "note_time", "note_seq", "note_id", "text"]])
    if not kept or all(k.empty for k in kept):
        return pd.Series(dtype=object, name="note_text")
    notes = pd.concat(kept, ignore_index=True)
    notes = notes[notes["text"].notna()]
    notes = notes.assign(text=notes["text"].map(clean_note))
    notes = notes[notes["text"].str.len() > 0]
    stats.notes_in_window = len(notes)
    notes = notes.sort_values(["hadm_id", "note_time", "note_seq", "note_id"], kind="stable")
    return notes.groupby("hadm_id", sort=True)["text"].agg(NOTE_SEPARATOR.join).rename("note_text")
