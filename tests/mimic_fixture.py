"""A tiny synthetic MIMIC-IV + MIMIC-CXR-JPG + MIMIC-IV-Note release in the releases' exact schemas (CSV.gz).

Every row is placed by hand to hit one edge case of the MIMIC-IV-MM builder; the expected results are written
next to the data (``EXPECTED_*``) so the tests read as a checklist. Times are hours after each admission.

Subjects and admissions (all ICU unless said otherwise):
  A 10000001 / hadm 20000001: admitted, dies at hour 47 (mortality 1, longstay and readmission excluded).
  B 10000002 / hadm 20000002: stay of exactly 3 days (longstay 0); URGENT return 20000003 exactly 30 days after
      discharge (readmission 1). 20000003 lasts exactly 7 days (longstay 0) and has no return (readmission 0).
  C 10000003 / hadm 20000004: 8 days (longstay 1); EW EMER. return 20000005 (no ICU) exactly 31 days later (0).
  D 10000004 / hadm 20000006: 2 days (longstay excluded); ELECTIVE return 20000007 on day 10 (readmission 0).
  E 10000005 / hadm 20000008: 4 days; ELECTIVE 20000009 (no ICU) on day 5, then EW EMER. 20000010 on day 20
      after 20000008's discharge (readmission 1: an unplanned return within 30 days, the elective one between).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from adacomed.pipelines.datasets.mimic.variables import DEFAULT_VARIABLES_DIR

MICU = "Medical Intensive Care Unit (MICU)"


@dataclass(frozen=True)
class SyntheticMimic:
    mimic_iv: Path
    mimic_cxr: Path
    mimic_note: Path
    cxr_home: Path


def at(admit: str, hours: float) -> str:
    return (pd.Timestamp(admit) + pd.Timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")


# hadm_id: (subject, admittime, dischtime, deathtime, admission_type, hospital_expire_flag, icu)
ADMISSIONS = {
    20000001: (10000001, "2150-01-01 08:00:00", "2150-01-03 07:00:00", "2150-01-03 07:00:00", "EW EMER.", 1, True),
    20000002: (10000002, "2150-02-01 10:00:00", "2150-02-04 10:00:00", "", "EW EMER.", 0, True),
    20000003: (10000002, "2150-03-06 10:00:00", "2150-03-13 10:00:00", "", "URGENT", 0, True),
    20000004: (10000003, "2151-05-01 00:00:00", "2151-05-09 00:00:00", "", "DIRECT EMER.", 0, True),
    20000005: (10000003, "2151-06-09 00:00:00", "2151-06-12 00:00:00", "", "EW EMER.", 0, False),
    20000006: (10000004, "2152-01-01 12:00:00", "2152-01-03 12:00:00", "", "EW EMER.", 0, True),
    20000007: (10000004, "2152-01-13 12:00:00", "2152-01-17 12:00:00", "", "ELECTIVE", 0, True),
    20000008: (10000005, "2153-01-01 00:00:00", "2153-01-05 00:00:00", "", "OBSERVATION ADMIT", 0, True),
    20000009: (10000005, "2153-01-10 00:00:00", "2153-01-11 00:00:00", "", "ELECTIVE", 0, False),
    20000010: (10000005, "2153-01-25 00:00:00", "2153-01-29 00:00:00", "", "EW EMER.", 0, True),
}
# subject: (gender, anchor_age, anchor_year)
PATIENTS = {10000001: ("M", 70, 2150), 10000002: ("F", 45, 2148), 10000003: ("M", 30, 2151),
            10000004: ("F", 88, 2150), 10000005: ("M", 55, 2153)}  # fmt: skip

EXPECTED_LABELS = {  # hadm: (mortality, longstay, readmission); None = excluded
    20000001: (1.0, None, None),
    20000002: (0.0, 0.0, 1.0),
    20000003: (0.0, 0.0, 0.0),
    20000004: (0.0, 1.0, 0.0),
    20000006: (0.0, None, 0.0),
    20000007: (0.0, 0.0, 0.0),
    20000008: (0.0, 0.0, 1.0),
    20000010: (0.0, 0.0, 0.0),
}
EXPECTED_AGE_BINS = {20000001: "70-79", 20000002: "40-49", 20000004: "30-39", 20000006: "90+", 20000008: "50-59"}

A, B = "2150-01-01 08:00:00", "2150-02-01 10:00:00"
# (subject, hadm, hours after that admission's admittime, itemid, value, valuenum)
CHART = [
    # With chunksize 7 the first chunk ends after the hour-2.9 GCS row: means and "last" cross chunks.
    (10000001, 20000001, 5.5, 220045, "80", 80.0),  # row 5 ...
    (10000001, 20000001, 7.0, 220045, "999", 999.0),  # out of range: dropped
    (10000001, 20000001, 3.0, 223761, "98.6", 98.6),  # Fahrenheit -> 37.0 C
    (10000001, 20000001, 4.0, 220179, "120", 120.0),  # non-invasive SBP ...
    (10000001, 20000001, 4.5, 220050, "130", 130.0),  # ... and arterial SBP share a channel: 125
    (10000001, 20000001, 2.5, 220739, "Unheard of", np.nan),  # unmapped: counted, ignored
    (10000001, 20000001, 2.9, 220739, "Spontaneously", 4.0),  # GCS eye: the latest in the hour wins (4) ...
    (10000001, 20000001, 2.1, 220739, "To Speech", 3.0),  # ... though this one comes later in the file
    (10000001, 20000001, 5.75, 220045, "90", 90.0),  # ... row 5 is the mean, 85
    (10000002, 20000002, 47.99, 220045, "70", 70.0),  # last row
    (10000002, 20000002, 49.0, 220045, "71", 71.0),  # hour 49: outside the window
    (10000002, 20000002, -0.5, 220045, "72", 72.0),  # before admittime: ignored
    (10000003, 20000005, 1.0, 220045, "73", 73.0),  # an admission outside the cohort (no ICU)
    (10000003, 20000004, 1.0, 226707, "170", 170.0),  # an item we do not list (height)
]
LAB = [
    (10000001, 20000001, 0.5, 50912, "1.2", 1.2),  # creatinine row 0
    (10000001, 20000001, -1.0, 50912, "1.5", 1.5),  # ED lab before admittime: ignored
    (10000002, "", 3.0, 50912, "2.0", 2.0),  # no hadm_id: not matched
    (10000002, 20000002, 3.0, 50931, "140", 140.0),  # lab glucose fills the glucose channel
]
# (subject, hadm, start hours, end hours or None, itemid)
PROCEDURES = [
    (10000001, 20000001, 10.5, 13.0, 225792),  # ventilation: rows 10, 11, 12
    (10000001, 20000001, 49.0, 50.0, 225802),  # dialysis starting after the window: ignored
    (10000002, 20000002, 40.0, 60.0, 225441),  # dialysis from row 40 to the window's end
]
# (dicom_id, subject, study, hours after admit of `admit`, admit, view, file on disk)
CXR = [
    ("a-lat", 10000001, 50000001, 2.0, A, "LATERAL", True),  # A's only image (lateral)
    ("b1-pa", 10000002, 50000002, 10.0, B, "PA", True),  # B's first study
    ("b1-lat", 10000002, 50000002, 10.0, B, "LATERAL", True),
    ("b2-lat", 10000002, 50000003, 47.5, B, "LATERAL", True),  # B's last study: AP preferred
    ("b2-ap", 10000002, 50000003, 47.5, B, "AP", True),
    ("b3-pa", 10000002, 50000004, 48.5, B, "PA", True),  # hour 48.5: outside
    ("c1-pa", 10000003, 50000005, 48.5, "2151-05-01 00:00:00", "PA", True),  # C: only outside the window
    ("e1-pa", 10000005, 50000006, 3.0, "2153-01-01 00:00:00", "PA", False),  # E: JPEG missing on disk
]
EXPECTED_XRAY_LAST = {
    20000001: "files/p10/p10000001/s50000001/a-lat.jpg",
    20000002: "files/p10/p10000002/s50000003/b2-ap.jpg",
}
EXPECTED_XRAY_FIRST = {**EXPECTED_XRAY_LAST, 20000002: "files/p10/p10000002/s50000002/b1-pa.jpg"}
# (note_type, subject, hadm, hours after `admit`, admit, seq, text)
NOTES = [
    ("RR", 10000002, 20000002, 1.0, B, 1, "CHEST X-RAY:\n  No acute\r\nprocess.  "),
    ("RR", 10000002, 20000002, 47.9, B, 3, "Second   note"),
    ("RR", 10000002, "", 20.0, B, 2, "Portable\tfilm."),  # no hadm_id: matched by subject and time
    ("RR", 10000002, 20000002, 48.5, B, 4, "outside the window"),
    ("RR", 10000003, 20000004, 48.5, "2151-05-01 00:00:00", 1, "outside the window too"),
    ("DS", 10000001, 20000001, 46.0, A, 1, "Discharge summary charted inside a short stay"),
    ("DS", 10000002, 20000002, 72.0, B, 1, "Discharge summary at discharge"),
]
EXPECTED_NOTES = {20000002: "CHEST X-RAY: No acute process. Portable film. Second note"}


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(buffer.getvalue())


def _admit_of(hadm: int) -> str:
    return ADMISSIONS[hadm][1]


def _mimic_iv(home: Path) -> None:
    adm = pd.DataFrame(
        [
            {"subject_id": s, "hadm_id": h, "admittime": a, "dischtime": d, "deathtime": death, "admission_type": t,
             "admit_provider_id": "P00001", "admission_location": "EMERGENCY ROOM",
             "discharge_location": "DIED" if flag else "HOME", "insurance": "Medicare", "language": "English",
             "marital_status": "MARRIED", "race": "WHITE", "edregtime": at(a, -3), "edouttime": a,
             "hospital_expire_flag": flag}
            for h, (s, a, d, death, t, flag, _) in ADMISSIONS.items()
        ]
    )  # fmt: skip
    _write(home / "hosp" / "admissions.csv.gz", adm)
    pat = pd.DataFrame(
        [{"subject_id": s, "gender": g, "anchor_age": age, "anchor_year": y, "anchor_year_group": "2017 - 2019",
          "dod": "2150-01-03" if s == 10000001 else ""} for s, (g, age, y) in PATIENTS.items()]
    )  # fmt: skip
    _write(home / "hosp" / "patients.csv.gz", pat)
    stays = pd.DataFrame(
        [{"subject_id": s, "hadm_id": h, "stay_id": 30000000 + i, "first_careunit": MICU, "last_careunit": MICU,
          "intime": at(a, 1), "outtime": at(a, 20), "los": 0.79}
         for i, (h, (s, a, _, _, _, _, icu)) in enumerate(ADMISSIONS.items()) if icu]
    )  # fmt: skip
    _write(home / "icu" / "icustays.csv.gz", stays)
    chart = pd.DataFrame(
        [{"subject_id": s, "hadm_id": h, "stay_id": 30000001, "caregiver_id": 1, "charttime": at(_admit_of(h), t),
          "storetime": at(_admit_of(h), t + 0.1), "itemid": i, "value": v, "valuenum": n, "valueuom": "", "warning": 0}
         for s, h, t, i, v, n in CHART]
    )  # fmt: skip
    _write(home / "icu" / "chartevents.csv.gz", chart)
    lab = pd.DataFrame(
        [{"labevent_id": k, "subject_id": s, "hadm_id": h, "specimen_id": 900 + k, "itemid": i,
          "order_provider_id": "", "charttime": at(_admit_of(20000001 if s == 10000001 else 20000002), t),
          "storetime": "", "value": v, "valuenum": n, "valueuom": "mg/dL", "ref_range_lower": 0.5,
          "ref_range_upper": 1.2, "flag": "", "priority": "STAT", "comments": ""}
         for k, (s, h, t, i, v, n) in enumerate(LAB)]
    )  # fmt: skip
    _write(home / "hosp" / "labevents.csv.gz", lab)
    proc = pd.DataFrame(
        [{"subject_id": s, "hadm_id": h, "stay_id": 30000001, "caregiver_id": 1, "starttime": at(_admit_of(h), a),
          "endtime": at(_admit_of(h), b), "storetime": at(_admit_of(h), b), "itemid": i, "value": b - a,
          "valueuom": "hour", "location": "", "locationcategory": "", "orderid": 1, "linkorderid": 1,
          "ordercategoryname": "Ventilation", "ordercategorydescription": "Task", "patientweight": 80.0,
          "isopenbag": 0, "continueinnextdept": 0, "statusdescription": "FinishedRunning", "originalamount": 1,
          "originalrate": 1}
         for s, h, a, b, i in PROCEDURES]
    )  # fmt: skip
    _write(home / "icu" / "procedureevents.csv.gz", proc)
    rows = []
    for file, table in (("vitals.csv", "chartevents"), ("procedures.csv", "procedureevents")):
        for itemid, name in pd.read_csv(DEFAULT_VARIABLES_DIR / file)[["itemid", "name"]].itertuples(index=False):
            rows.append({"itemid": itemid, "label": name, "abbreviation": name, "linksto": table,
                         "category": "x", "unitname": "", "param_type": "Numeric", "lownormalvalue": "",
                         "highnormalvalue": ""})  # fmt: skip
    rows.append({"itemid": 226707, "label": "Height", "abbreviation": "Height", "linksto": "chartevents",
                 "category": "General", "unitname": "cm", "param_type": "Numeric", "lownormalvalue": "",
                 "highnormalvalue": ""})  # fmt: skip
    _write(home / "icu" / "d_items.csv.gz", pd.DataFrame(rows))
    labs = pd.read_csv(DEFAULT_VARIABLES_DIR / "labs.csv")
    _write(
        home / "hosp" / "d_labitems.csv.gz",
        pd.DataFrame({"itemid": labs["itemid"], "label": labs["name"], "fluid": "Blood", "category": "Chemistry"}),
    )


def _mimic_cxr(home: Path) -> None:
    rows = []
    for dicom, subject, study, hours, admit, view, on_disk in CXR:
        when = pd.Timestamp(admit) + pd.Timedelta(hours=hours)
        rows.append(
            {"dicom_id": dicom, "subject_id": subject, "study_id": study,
             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view, "Rows": 8,
             "Columns": 8, "StudyDate": int(when.strftime("%Y%m%d")),
             "StudyTime": float(when.strftime("%H%M%S")) + 0.125, "ProcedureCodeSequence_CodeMeaning": "CHEST",
             "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning": "Erect"}
        )  # fmt: skip
        if on_disk:
            image = home / f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(image)
    _write(home / "mimic-cxr-2.0.0-metadata.csv.gz", pd.DataFrame(rows))


def _mimic_note(home: Path) -> None:
    for note_type, file in (("RR", "radiology"), ("DS", "discharge")):
        rows = [
            {"note_id": f"{s}-{note_type}-{seq}", "subject_id": s, "hadm_id": h, "note_type": note_type,
             "note_seq": seq, "charttime": at(admit, hours), "storetime": at(admit, hours + 1), "text": text}
            for kind, s, h, hours, admit, seq, text in NOTES if kind == note_type
        ]  # fmt: skip
        _write(home / "note" / f"{file}.csv.gz", pd.DataFrame(rows))


def write_synthetic_mimic(root: Path) -> SyntheticMimic:
    """Write the three releases under ``root`` in their versioned layouts and return the folders to pass."""
    _mimic_iv(root / "mimiciv" / "3.1")
    cxr_home = root / "mimic-cxr-jpg" / "2.1.0"
    _mimic_cxr(cxr_home)
    _mimic_note(root / "mimic-iv-note" / "2.2")
    return SyntheticMimic(
        mimic_iv=root / "mimiciv",
        mimic_cxr=root / "mimic-cxr-jpg",
        mimic_note=root / "mimic-iv-note",
        cxr_home=cxr_home,
    )
