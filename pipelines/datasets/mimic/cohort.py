"""MIMIC-IV-MM admissions: who is in the cohort, their three labels, static demographics and the split.

Label definitions (one sample per ``hadm_id``; times are MIMIC's de-identified, shifted clock):

* ``mortality`` = 1 if the admission ends in death: ``hospital_expire_flag == 1`` or a ``deathtime`` within
  ``[admittime, dischtime]``; else 0. A patient who dies inside the observation window (e.g. at hour 47) stays
  in the cohort as a positive: the model sees the same first-48-hour data it would see at the bedside.
* ``longstay`` uses the hospital length of stay ``los = dischtime - admittime`` in days: ``los > 7`` -> 1,
  ``3 <= los <= 7`` -> 0 (exactly 7 days is negative, exactly 3 days is kept as negative), ``los < 3`` ->
  excluded (NaN). In-hospital deaths are labelled by the same rule.
* ``readmission`` = 1 if the same subject has an unplanned admission whose ``admittime`` falls within 30 days
  of this ``dischtime``: ``0 <= next.admittime - dischtime <= 30 days`` (day 30 at the same clock time is in,
  30 days plus one second is out). Unplanned = every ``admission_type`` that ``variables/admission_types.csv``
  marks ``planned=no`` (shipped: all but ELECTIVE and SURGICAL SAME DAY ADMISSION). Any admission of the
  subject counts as the return, in or out of the cohort. In-hospital deaths are excluded (NaN). A death after
  discharge without a return is a negative: MIMIC does not record admissions to other hospitals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ....cache_schema.splits import split_subjects
from .sources import MimicError, MimicIVTables, parse_mimic_times, read_csv_table
from .variables import VariableSet

ADMISSION_COLUMNS = [
    "subject_id",
    "hadm_id",
    "admittime",
    "dischtime",
    "deathtime",
    "admission_type",
    "admission_location",
    "discharge_location",
    "insurance",
    "language",
    "marital_status",
    "race",
    "hospital_expire_flag",
]
PATIENT_COLUMNS = ["subject_id", "gender", "anchor_age", "anchor_year", "dod"]
AGE_EDGES = (30, 40, 50, 60, 70, 80, 90)
AGE_LEVELS = ("18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+")
READMISSION_DAYS = 30
LONGSTAY_POSITIVE_DAYS = 7
LONGSTAY_MIN_DAYS = 3
STATIC_CATEGORICAL = (
    "gender",
    "admission_type",
    "admission_location",
    "insurance",
    "language",
    "marital_status",
    "race",
)
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass
class CohortCounts:
    """How many admissions each step removed (reported in the cohort summary)."""

    admissions_in_release: int = 0
    invalid_times: int = 0
    no_icu_stay: int = 0
    under_18_or_unknown_age: int = 0


def load_admissions(tables: MimicIVTables) -> pd.DataFrame:
    """Every admission of the release with parsed times (the pool for readmissions, not yet the cohort)."""
    adm = read_csv_table(tables["admissions"], ADMISSION_COLUMNS, dtype={c: "str" for c in ADMISSION_COLUMNS})
    for column in ("subject_id", "hadm_id"):
        numbers = pd.to_numeric(adm[column], errors="coerce")
        if numbers.isna().any():
            raise MimicError(
                f"admissions.{column} has an empty or non-integer value in row {int(numbers.isna().argmax())}"
            )
        adm[column] = numbers.astype("int64")
    if adm["hadm_id"].duplicated().any():
        raise MimicError(
            f"admissions has duplicate hadm_id {int(adm.loc[adm['hadm_id'].duplicated(), 'hadm_id'].iloc[0])}"
        )
    for column in ("admittime", "dischtime", "deathtime"):
        adm[column] = parse_mimic_times(adm[column], "admissions", column)
    adm["hospital_expire_flag"] = pd.to_numeric(adm["hospital_expire_flag"], errors="coerce").fillna(0).astype(int)
    adm["admission_type"] = adm["admission_type"].str.strip()
    return adm


def load_patients(tables: MimicIVTables) -> pd.DataFrame:
    pat = read_csv_table(tables["patients"], PATIENT_COLUMNS, dtype={c: "str" for c in PATIENT_COLUMNS})
    pat["subject_id"] = pd.to_numeric(pat["subject_id"], errors="raise").astype("int64")
    pat["anchor_age"] = pd.to_numeric(pat["anchor_age"], errors="coerce")
    pat["anchor_year"] = pd.to_numeric(pat["anchor_year"], errors="coerce")
    return pat.drop_duplicates("subject_id")


def icu_admission_ids(tables: MimicIVTables) -> set[int]:
    """hadm_ids with at least one ICU stay (chartevents and procedureevents exist only for those)."""
    stays = read_csv_table(tables["icustays"], ["hadm_id"], dtype={"hadm_id": "str"})
    return set(pd.to_numeric(stays["hadm_id"], errors="coerce").dropna().astype("int64"))


def label_admissions(adm: pd.DataFrame, variables: VariableSet) -> pd.DataFrame:
    """Add ``los_days``, ``label_mortality``, ``label_longstay``, ``label_readmission`` to every admission.

    Raises:
        MimicError: an ``admission_type`` that ``admission_types.csv`` does not list (so nobody guesses
            whether it is planned).
    """
    unknown = sorted(set(adm["admission_type"].dropna()) - variables.known_admission_types)
    if unknown:
        raise MimicError(
            f"admission_type value(s) {unknown} are not in admission_types.csv; add them with planned=yes or no"
        )
    out = adm.copy()
    los = (out["dischtime"] - out["admittime"]).dt.total_seconds() / 86400.0
    out["los_days"] = los
    died_in_stay = (
        out["deathtime"].notna() & (out["deathtime"] >= out["admittime"]) & (out["deathtime"] <= out["dischtime"])
    )
    mortality = (out["hospital_expire_flag"] == 1) | died_in_stay
    out["label_mortality"] = mortality.astype(float)
    longstay = np.where(los > LONGSTAY_POSITIVE_DAYS, 1.0, 0.0)
    out["label_longstay"] = np.where(los < LONGSTAY_MIN_DAYS, np.nan, longstay)
    out["label_readmission"] = _readmission(out, variables.planned_admission_types)
    out.loc[mortality, "label_readmission"] = np.nan
    return out


def _readmission(adm: pd.DataFrame, planned: frozenset[str]) -> np.ndarray:
    """1.0 where the earliest unplanned admission starting at or after discharge starts within 30 days."""
    valid = adm[adm["dischtime"].notna() & adm["admittime"].notna()]
    returns = valid[~valid["admission_type"].isin(planned)][["subject_id", "hadm_id", "admittime"]]
    returns = returns.rename(columns={"hadm_id": "return_hadm_id", "admittime": "return_time"})
    left = valid[["subject_id", "hadm_id", "dischtime"]].sort_values("dischtime", kind="stable")
    matched = pd.merge_asof(
        left,
        returns.sort_values("return_time", kind="stable"),
        left_on="dischtime",
        right_on="return_time",
        by="subject_id",
        direction="forward",
        allow_exact_matches=True,
    )
    matched = matched[matched["return_hadm_id"] != matched["hadm_id"]]
    gap = matched["return_time"] - matched["dischtime"]
    positive = set(matched.loc[gap <= pd.Timedelta(days=READMISSION_DAYS), "hadm_id"])
    return adm["hadm_id"].isin(positive).to_numpy(dtype=float)


def add_demographics(adm: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Age at admission (``anchor_age`` shifted by the admission year), its bin, and gender from ``patients``."""
    out = adm.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id", how="left")
    age = out["anchor_age"] + (out["admittime"].dt.year - out["anchor_year"])
    out["age"] = age.astype(float)
    bins = np.digitize(out["age"].fillna(-1).to_numpy(), AGE_EDGES)
    out["age_bin"] = [AGE_LEVELS[b] if a >= 18 else None for a, b in zip(out["age"].fillna(-1), bins, strict=True)]
    return out


def select_cohort(adm: pd.DataFrame, icu_ids: set[int] | None, counts: CohortCounts) -> pd.DataFrame:
    """Keep adult admissions with usable times (and an ICU stay unless ``icu_ids`` is None)."""
    counts.admissions_in_release = len(adm)
    valid = adm["admittime"].notna() & adm["dischtime"].notna() & (adm["dischtime"] > adm["admittime"])
    counts.invalid_times = int((~valid).sum())
    keep = valid
    if icu_ids is not None:
        in_icu = adm["hadm_id"].isin(icu_ids)
        counts.no_icu_stay = int((keep & ~in_icu).sum())
        keep = keep & in_icu
    adult = adm["age"] >= 18
    counts.under_18_or_unknown_age = int((keep & ~adult).sum())
    return adm[keep & adult].sort_values("hadm_id").reset_index(drop=True)


def assign_splits(cohort: pd.DataFrame, seed: int) -> pd.Series:
    """70/15/15 by subject, seeded, stratified by whether the subject has any mortality / readmission positive.

    Every admission of a subject lands in the same split, so no patient leaks from train into test (the project's
    one subject-level split, :func:`adacomed.cache_schema.splits.split_subjects`).
    """
    mortality = cohort["label_mortality"].fillna(0).to_numpy(dtype=float)
    readmission = cohort["label_readmission"].fillna(0).to_numpy(dtype=float)
    stratum = mortality * 2 + readmission  # a subject's stratum: the max over its admissions
    fractions = dict(zip(("train", "val", "test"), SPLIT_FRACTIONS))
    parts = split_subjects(cohort["subject_id"].astype(str).tolist(), fractions, seed, stratum)
    return pd.Series(parts, index=cohort.index, dtype=object)
