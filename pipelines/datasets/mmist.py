"""MMIST ccRCC -> AdaCoMed manifest (task ``vital12``: 12-month survival).

Label: the release's ``vital_status_12`` is 1 when the patient is alive at 12 months and 0 when they died within
12 months. The paper predicts 12-month survival, so ``label_vital12`` = 1 means SURVIVED, and the metrics treat
survival as the positive class (AUPRC/mAP of the positive class are therefore high: ~88% of patients survive).

What the release holds (``<root>/Code``), checked against the files themselves:

- ``clinical+genomic_split.csv``: 618 patients (429 TCGA-KIRC, 189 CPTAC-CCRCC), official ``Split`` train 497 /
  test 121 (no validation split: the trainer carves one). 75 deaths overall; the test split holds only 16
  deaths, 4 of them in the CT subset. ``-1`` and blank cells mean missing. ``age_diag`` is a bin code 1-8, not
  an age. The PBRM1 column is spelled ``PBMR1_mutation``.
- CT: ``CT_patientfiles.csv`` names the chosen exam of 239 patients (the README says 248); every chosen exam
  occurs exactly once among that patient's rows of ``patients_with_labels_CT_final.csv``, and its 1-based row
  number k there gives the feature file ``Features/CT Features/<case>-<k>.npz`` (key ``arr_0``, shape
  (1, 1, 512, 1)). The npz count per patient equals that patient's row count (736 files, 736 rows).
- WSI: ``WSI_patientfiles.csv`` names one npz per patient directly (618, all present; shape (1, 1024)).
  Raw slides: TCGA slides are the ``gdc_manifest`` file whose name starts with the npz stem (all 429 found);
  CPTAC slides are ``<npz stem>.svs`` (the TCIA naming).

Cohorts: ``ct`` = the 239 patients with CT features (the paper's subset), ``all`` = all 618 (missing modalities
are empty pointers). Raw CT/WSI pointers are added when ``ct_root``/``wsi_root`` are given; raw files that are
not there are left empty and listed in ``missing_raw.csv`` beside the manifest (reported, not fatal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...cache_schema.manifest import Manifest, ManifestInfo, ModalitySource, SmallInput, TaskSpec
from .prompts import load_codes, load_template, normalise_code, render_prompt

log = logging.getLogger(__name__)

CLINICAL_CSV = "clinical+genomic_split.csv"
CT_CHOICE_CSV = "CT_patientfiles.csv"
WSI_CHOICE_CSV = "WSI_patientfiles.csv"
CT_ROWS_CSV = "patients_with_labels_CT_final.csv"
GDC_MANIFEST = "gdc_manifest.2024-05-27.txt"
CT_FEATURES_DIR = "Features/CT Features"
WSI_FEATURES_DIR = "Features/WSI Features"
CT_FEATURE_DIM = 512
WSI_FEATURE_DIM = 1024

RACE_COLUMNS = {
    "race_Asian": "Asian",
    "race_Black or African American": "Black or African American",
    "race_Hispanic or Latino": "Hispanic or Latino",
    "race_White": "White",
    "race_other": "other",
}
# Supplement 4.2: categorical embeddings (race collapsed from its one-hot columns).
CATEGORICAL_COLUMNS = ("gender", "cancer_history", "VHL_mutation", "PBMR1_mutation", "TTN_mutation")
# Ordinal embeddings, with the codes the release uses, in code order (see templates/mmist_codes.json).
ORDINAL_LEVELS: dict[str, list[str]] = {
    "ajcc_path_tumor_pt": [str(i) for i in range(1, 12)],
    "ajcc_path_nodes_pn": ["0", "1", "2"],
    "ajcc_clin_metastasis_cm": ["0", "1", "2"],
    "ajcc_path_metastasis_pm": ["0", "1", "2"],
    "ajcc_path_tumor_stage": ["1", "2", "3", "4"],
    "grade": ["1", "2", "3", "4", "5"],
}
NUMERICAL_COLUMNS = ("age_diag",)
COHORTS = ("ct", "all")
# What the small model reads. ``clinical`` (default): the table's fields only; the shipped CT/WSI vectors already
# reach MoME as large embeddings, and giving them to the small model too made it overfit (~48 training deaths):
# stage-(a) test AUROC 0.678 with them, 0.758 without (5x5 CV, docs/results/mmist_vital12_cv.md).
# ``clinical+imaging``: also the vectors, as supplement 4.2 lists them.
SMALL_INPUT_CHOICES = ("clinical", "clinical+imaging")


class MMISTError(ValueError):
    """The release folder is not the MMIST ccRCC layout this builder knows."""


@dataclass
class MMISTRelease:
    """The release's tables, read once."""

    code_dir: Path
    clinical: pd.DataFrame
    ct_choice: pd.DataFrame
    wsi_choice: pd.DataFrame
    ct_rows: pd.DataFrame
    gdc: pd.DataFrame | None


def read_release(root: Path) -> MMISTRelease:
    """Read the release under ``root`` (the folder holding ``Code/``), with clear errors for a wrong folder."""
    root = Path(root)
    code_dir = root / "Code" if (root / "Code").is_dir() else root
    needed = [CLINICAL_CSV, CT_CHOICE_CSV, WSI_CHOICE_CSV, CT_ROWS_CSV]
    absent = [name for name in needed if not (code_dir / name).is_file()]
    if absent:
        raise MMISTError(f"{code_dir} is not an MMIST ccRCC release folder: missing {absent}")
    clinical = pd.read_csv(code_dir / CLINICAL_CSV, dtype={"case_id": str, "Split": str})
    if clinical["case_id"].duplicated().any():
        raise MMISTError(
            f"{CLINICAL_CSV}: duplicated case_id {clinical['case_id'][clinical['case_id'].duplicated()].iloc[0]}"
        )
    gdc_path = code_dir / GDC_MANIFEST
    gdc = pd.read_csv(gdc_path, sep="\t", dtype=str) if gdc_path.is_file() else None
    return MMISTRelease(
        code_dir=code_dir,
        clinical=clinical,
        ct_choice=pd.read_csv(code_dir / CT_CHOICE_CSV, dtype=str),
        wsi_choice=pd.read_csv(code_dir / WSI_CHOICE_CSV, dtype=str),
        ct_rows=pd.read_csv(code_dir / CT_ROWS_CSV, dtype=str),
        gdc=gdc,
    )


def ct_feature_files(release: MMISTRelease) -> dict[str, str]:
    """case_id -> CT feature file name: ``<case>-<k>.npz``, k = 1-based row of the chosen exam among the case's rows."""
    rows_by_case = {case: group["File"].tolist() for case, group in release.ct_rows.groupby("case_id", sort=False)}
    present = {p.name for p in (release.code_dir / CT_FEATURES_DIR).glob("*.npz")}
    files: dict[str, str] = {}
    for case, exam in zip(release.ct_choice["case_id"], release.ct_choice["chosen_exam"]):
        exams = rows_by_case.get(case, [])
        hits = [k for k, name in enumerate(exams, start=1) if name == exam]
        if len(hits) != 1:
            raise MMISTError(f"case {case}: chosen CT exam occurs {len(hits)} times in {CT_ROWS_CSV} (expected once)")
        name = f"{case}-{hits[0]}.npz"
        if name not in present:
            raise MMISTError(f"case {case}: CT feature file {name!r} is not in {CT_FEATURES_DIR}")
        files[case] = name
    return files


def wsi_feature_files(release: MMISTRelease) -> dict[str, str]:
    """case_id -> WSI feature file name (``chosen_exam`` is the npz name itself)."""
    present = {p.name for p in (release.code_dir / WSI_FEATURES_DIR).glob("*.npz")}
    files: dict[str, str] = {}
    for case, name in zip(release.wsi_choice["case_id"], release.wsi_choice["chosen_exam"]):
        if name not in present:
            raise MMISTError(f"case {case}: WSI feature file {name!r} is not in {WSI_FEATURES_DIR}")
        files[case] = name
    return files


def slide_file_names(release: MMISTRelease, wsi_files: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """case_id -> (slide file name, GDC file id or None): TCGA from the GDC manifest, CPTAC ``<stem>.svs``."""
    by_stem: dict[str, tuple[str, str]] = {}
    if release.gdc is not None:
        for file_id, filename in zip(release.gdc["id"], release.gdc["filename"]):
            by_stem[filename.split(".")[0]] = (filename, file_id)
    names: dict[str, tuple[str, str | None]] = {}
    for case, npz in wsi_files.items():
        stem = npz[: -len(".npz")]
        names[case] = by_stem.get(stem, (f"{stem}.svs", None))
    return names


def _categorical(value: object) -> str | None:
    return normalise_code(value, [-1])


def _race(row: pd.Series) -> str | None:
    chosen = [name for column, name in RACE_COLUMNS.items() if normalise_code(row[column]) == "1"]
    return chosen[0] if len(chosen) == 1 else None


def _resolve_raw(
    modality: str, cases: list[str], expected: dict[str, str], root: Path, alternatives: dict[str, str] | None = None
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Check raw files under ``root``: found pointers, and one report row per missing file."""
    found: dict[str, str] = {}
    missing: list[dict[str, str]] = []
    for case in cases:
        if case not in expected:
            continue
        relative = expected[case]
        if (root / relative).exists():
            found[case] = relative
        elif alternatives and case in alternatives and (root / alternatives[case]).exists():
            found[case] = alternatives[case]
        else:
            missing.append({"sample_id": case, "modality": modality, "expected_path": str(root / relative)})
    return found, missing


def build_mmist_table(
    root: Path,
    cohort: str = "ct",
    template: Path | None = None,
    codes: Path | None = None,
) -> pd.DataFrame:
    """The manifest table (no raw pointers): one row per patient of the cohort."""
    if cohort not in COHORTS:
        raise MMISTError(f"cohort {cohort!r} is not one of {list(COHORTS)}")
    release = read_release(root)
    clinical = release.clinical
    ct_files = ct_feature_files(release)
    wsi_files = wsi_feature_files(release)
    if cohort == "ct":
        clinical = clinical[clinical["case_id"].isin(ct_files)]
    template_text = load_template(template)
    code_book = load_codes(codes)
    splits = clinical["Split"].str.strip().str.lower()
    bad = ~splits.isin(["train", "val", "test"])
    if bad.any():
        raise MMISTError(
            f"case {clinical['case_id'][bad].iloc[0]}: Split {clinical['Split'][bad].iloc[0]!r} is unknown"
        )
    labels = pd.to_numeric(clinical["vital_status_12"], errors="coerce")
    labels = labels.where(labels.isin([0, 1]))
    table = pd.DataFrame(
        {
            "sample_id": clinical["case_id"].to_numpy(),
            "subject_id": clinical["case_id"].to_numpy(),
            "split": splits.to_numpy(),
            "label_vital12": labels.astype(float).to_numpy(),
            "source": np.where(clinical["case_id"].str.startswith("TCGA"), "TCGA-KIRC", "CPTAC-CCRCC"),
            "clinical": [render_prompt(row, template_text, code_book) for _, row in clinical.iterrows()],
            "ct_features": [ct_files.get(case) for case in clinical["case_id"]],
            "wsi_features": [wsi_files.get(case) for case in clinical["case_id"]],
            "race": [_race(row) for _, row in clinical.iterrows()],
        }
    )
    for column in CATEGORICAL_COLUMNS + tuple(ORDINAL_LEVELS):
        table[column] = [_categorical(v) for v in clinical[column]]
    for column in NUMERICAL_COLUMNS:
        values = pd.to_numeric(clinical[column], errors="coerce")
        table[column] = values.where(values != -1).astype(float).to_numpy()
    for column, levels in ORDINAL_LEVELS.items():
        unknown = sorted(set(table[column].dropna()) - set(levels))
        if unknown:
            raise MMISTError(f"column {column!r} has codes {unknown} outside its levels {levels}")
    return table


def mmist_info(
    table: pd.DataFrame, code_dir: Path, cohort: str, raw_notes: str = "", small_inputs: str = "clinical"
) -> ManifestInfo:
    """Declarations for an MMIST table: task, modalities, small inputs, and notes with the class balance."""
    if small_inputs not in SMALL_INPUT_CHOICES:
        raise MMISTError(f"small inputs {small_inputs!r} is not one of {list(SMALL_INPUT_CHOICES)}")
    code_dir = Path(code_dir).resolve()
    ct_dir, wsi_dir = str(code_dir / CT_FEATURES_DIR), str(code_dir / WSI_FEATURES_DIR)
    small: dict[str, SmallInput] = {}
    if small_inputs == "clinical+imaging":
        small["ct_vector"] = SmallInput(
            "ct_features", "vector", {"root": ct_dir, "key": "arr_0", "dim": CT_FEATURE_DIM}
        )
        small["wsi_vector"] = SmallInput(
            "wsi_features", "vector", {"root": wsi_dir, "key": "arr_0", "dim": WSI_FEATURE_DIM}
        )
    small["race"] = SmallInput("race", "categorical", {"categories": list(RACE_COLUMNS.values())})
    for column in CATEGORICAL_COLUMNS:
        categories = ["1"] if column == "cancer_history" else ["0", "1"]
        small[column.lower()] = SmallInput(column, "categorical", {"categories": categories})
    for column, levels in ORDINAL_LEVELS.items():
        small[column] = SmallInput(column, "ordinal", {"levels": levels})
    for column in NUMERICAL_COLUMNS:
        small[column] = SmallInput(column, "numerical", {})
    modalities = {
        "clinical": ModalitySource("clinical", "text"),
        "ct_features": ModalitySource("ct_features", "path", ct_dir),
        "wsi_features": ModalitySource("wsi_features", "path", wsi_dir),
    }
    balance = class_balance(table)
    notes = (
        f"MMIST ccRCC, cohort {cohort}: {len(table)} patients. label_vital12 = release vital_status_12: 1 = alive at "
        f"12 months (survived, the positive class), 0 = died within 12 months. Class balance (survived/died): "
        f"{balance}. No official validation split; the official test split is small in deaths. age_diag is a bin "
        "code (1-8), not an age; -1 and blank cells are missing; cancer_history is 1 or blank (blank = missing). "
        f"Small-model inputs: {small_inputs}"
        + (
            " (CT npz (1,1,512,1) and WSI npz (1,1024) vectors, key arr_0, flattened to 1-D)."
            if small_inputs == "clinical+imaging"
            else " (the table's fields; the CT/WSI vectors reach the model as large embeddings only)."
        )
    )
    if raw_notes:
        notes += " " + raw_notes
    return ManifestInfo(
        cohort=f"mmist-ccrcc-{cohort}",
        modalities=modalities,
        tasks={"vital12": TaskSpec("label_vital12", "survived 12 months after diagnosis (vital_status_12 = 1)")},
        small_inputs=small,
        notes=notes,
    )


def class_balance(table: pd.DataFrame) -> str:
    """'train 171/10, test 54/4' (survived/died per split)."""
    parts = []
    for split in ("train", "val", "test"):
        labels = table.loc[table["split"] == split, "label_vital12"]
        if len(labels):
            parts.append(f"{split} {int((labels == 1).sum())}/{int((labels == 0).sum())}")
    return ", ".join(parts)


def build_mmist_cohort(
    root: Path,
    out: Path,
    cohort: str = "ct",
    ct_root: Path | None = None,
    wsi_root: Path | None = None,
    template: Path | None = None,
    small_inputs: str = "clinical",
) -> Path:
    """Build the MMIST ccRCC manifest and return its path.

    Args:
        root: the MMIST ccRCC release folder (the one holding ``Code/``).
        out: manifest file (``.parquet``) or a folder to write ``manifest.parquet`` into.
        cohort: ``ct`` (the 239 patients with CT features, the paper's subset) or ``all`` (618 patients).
        ct_root: folder holding the raw CT DICOM series at the release's ``chosen_exam`` paths (optional).
        wsi_root: folder holding the raw slides (``<slide>.svs``, or ``<gdc id>/<slide>.svs``) (optional).
        template: a replacement clinical prompt template (default: supplement 4.2).
        small_inputs: ``clinical`` (the table's fields) or ``clinical+imaging`` (also the shipped CT/WSI
            vectors); see :data:`SMALL_INPUT_CHOICES`.
    """
    out = Path(out)
    manifest_path = out if out.suffix == ".parquet" else out / "manifest.parquet"
    table = build_mmist_table(root, cohort, template)
    release = read_release(root)
    cases = table["sample_id"].tolist()
    missing: list[dict[str, str]] = []
    extra_modalities: dict[str, ModalitySource] = {}
    raw_notes = []
    if ct_root is not None:
        exams = dict(zip(release.ct_choice["case_id"], release.ct_choice["chosen_exam"].str.lstrip("/")))
        found, lost = _resolve_raw("ct", cases, exams, Path(ct_root))
        table["ct"] = [found.get(case) for case in cases]
        extra_modalities["ct"] = ModalitySource("ct", "path", str(Path(ct_root).resolve()))
        missing += lost
        raw_notes.append(f"raw CT: {len(found)} found, {len(lost)} missing")
    if wsi_root is not None:
        slides = slide_file_names(release, wsi_feature_files(release))
        expected = {case: name for case, (name, _) in slides.items()}
        by_id = {case: f"{file_id}/{name}" for case, (name, file_id) in slides.items() if file_id}
        found, lost = _resolve_raw("wsi", cases, expected, Path(wsi_root), by_id)
        table["wsi"] = [found.get(case) for case in cases]
        extra_modalities["wsi"] = ModalitySource("wsi", "path", str(Path(wsi_root).resolve()))
        missing += lost
        raw_notes.append(f"raw WSI: {len(found)} found, {len(lost)} missing")
    info = mmist_info(table, release.code_dir, cohort, "; ".join(raw_notes), small_inputs)
    info.modalities.update(extra_modalities)
    manifest = Manifest(table, info, base_dir=manifest_path.parent)
    manifest.write(manifest_path)
    report = manifest_path.parent / "missing_raw.csv"
    if ct_root is not None or wsi_root is not None:
        pd.DataFrame(missing, columns=["sample_id", "modality", "expected_path"]).to_csv(report, index=False)
        if missing:
            log.warning("%d raw files are missing (listed in %s); those pointers are left empty", len(missing), report)
    return manifest_path
