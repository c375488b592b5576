"""The deterministic synthetic demo cohort: all six modalities, an MMIST-like clinical table, four tasks.

Each subject draws a latent risk ``z``; every label is a Bernoulli of a sigmoid of ``z`` (plus noise) and every
modality sees its own noisy view of ``z`` (opacity size on the x-ray, alarming words in the note, drifting
vitals, nuclear density on the slide, lesion size on the CT, stage and grade in the table). So each modality
alone predicts a little and together they predict better, which is what the collaborative model should find.

Random streams are keyed by (seed, sample, modality), so a build is bit-for-bit reproducible and leaving a
modality out (``modalities=``) does not change the files of the others. No real patient data is involved.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from ...cache_schema import Manifest, ManifestInfo, ModalitySource, SmallInput, TaskSpec
from ...cache_schema.splits import split_subjects
from . import demo_media as media
from .demo_records import RACE_COLUMNS, clinical_table, progress_note

__all__ = ["DEMO_MODALITIES", "build_demo_cohort", "clinical_prompt"]

DEMO_MODALITIES: tuple[str, ...] = ("xray", "notes", "timeseries", "wsi", "ct", "clinical")
MANIFEST_NAME = "manifest.parquet"
README_MARKER = "AdaCoMed synthetic demo cohort"
# how often a sample has each modality (missing modalities are empty pointers)
PRESENCE = {"xray": 0.92, "notes": 0.96, "timeseries": 1.0, "wsi": 0.6, "ct": 0.7, "clinical": 1.0}
VIEW_NOISE = {"xray": 0.9, "notes": 1.0, "timeseries": 0.8, "wsi": 1.0, "ct": 0.9}
SECOND_ADMISSION_RATE = 0.15
DICOM_RATE = 0.1
PNG16_RATE = 0.1
POINTER_COLUMNS = {
    "xray": "xray_path",
    "notes": "note_text",
    "timeseries": "timeseries_path",
    "wsi": "wsi_path",
    "ct": "ct_path",
    "clinical": "clinical_text",
}
STREAMS = {name: index for index, name in enumerate(("core", *DEMO_MODALITIES, "presence", "split"))}

TASKS = {
    "mortality": TaskSpec(column="label_mortality", positive="died in hospital"),
    "longstay": TaskSpec(column="label_longstay", positive="stay longer than 7 days (stays under 3 days excluded)"),
    "readmission": TaskSpec(column="label_readmission", positive="readmitted within 30 days of discharge"),
    "vital12": TaskSpec(column="label_vital12", positive="alive 12 months after diagnosis"),
}
CATEGORICAL = {
    "gender": [0, 1],
    "cancer_history": [1],
    "race_Asian": [0, 1],
    "race_Black or African American": [0, 1],
    "race_Hispanic or Latino": [0, 1],
    "race_White": [0, 1],
    "race_other": [0, 1],
    "VHL_mutation": [-1, 0, 1],
    "PBMR1_mutation": [-1, 0, 1],
    "TTN_mutation": [-1, 0, 1],
}
ORDINAL_LEVELS = {
    "grade": [1, 2, 3, 4, 5],
    "ajcc_path_tumor_pt": [-1, *range(1, 12)],
    "ajcc_path_nodes_pn": [-1, 0, 1, 2],
    "ajcc_clin_metastasis_cm": [-1, 0, 1, 2],
    "ajcc_path_metastasis_pm": [-1, 0, 1, 2],
    "ajcc_path_tumor_stage": [-1, 1, 2, 3, 4],
}


def _rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, sample or subject, purpose)."""
    return np.random.default_rng([seed, index, STREAMS[stream]])


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _bernoulli(rng: np.random.Generator, logit: float) -> float:
    return float(rng.random() < _sigmoid(logit + rng.normal(0, 0.3)))


def _sample_labels(rng: np.random.Generator, risk: float) -> dict[str, float]:
    """Task labels from one sample's risk; offsets give ~20 % mortality, ~15 % readmission, ~80 % alive at 12 m."""
    short_stay = rng.random() < _sigmoid(-1.2 * risk - 1.9)
    return {
        "label_mortality": _bernoulli(rng, 2.0 * risk - 2.1),
        "label_longstay": np.nan if short_stay else _bernoulli(rng, 1.3 * risk - 0.1),
        "label_readmission": _bernoulli(rng, 1.1 * risk - 2.0),
        "label_vital12": _bernoulli(rng, -1.7 * risk + 1.9),
    }


def _assign_splits(subject_mortality: np.ndarray, seed: int) -> np.ndarray:
    """70/15/15 by subject, stratified on whether the subject ever died (the project's one subject-level split)."""
    subjects = [f"subj-{i + 1}" for i in range(len(subject_mortality))]
    return split_subjects(subjects, {"train": 0.7, "val": 0.15, "test": 0.15}, seed, subject_mortality)


def _manifest_info(modalities: tuple[str, ...], subjects: int, seed: int) -> ManifestInfo:
    roots = {"xray": "xray", "timeseries": "timeseries", "wsi": "wsi", "ct": "ct"}
    sources = {
        name: ModalitySource(column=POINTER_COLUMNS[name], kind="path", root=roots[name])
        if name in roots
        else ModalitySource(column=POINTER_COLUMNS[name], kind="text")
        for name in modalities
    }
    small: dict[str, SmallInput] = {}
    if "xray" in modalities:
        small["xray"] = SmallInput(column="xray_path", kind="image", options={"root": "xray"})
    if "notes" in modalities:
        small["notes"] = SmallInput(column="note_text", kind="text")
    if "timeseries" in modalities:
        small["timeseries"] = SmallInput(column="timeseries_path", kind="timeseries", options={"root": "timeseries"})
    for column, categories in CATEGORICAL.items():
        small[column] = SmallInput(column=column, kind="categorical", options={"categories": categories})
    for column, levels in ORDINAL_LEVELS.items():
        small[column] = SmallInput(column=column, kind="ordinal", options={"levels": levels})
    small["age_diag"] = SmallInput(column="age_diag", kind="numerical")
    return ManifestInfo(
        cohort="demo",
        modalities=sources,
        tasks=dict(TASKS),
        small_inputs=small,
        notes=f"synthetic demo cohort: subjects={subjects}, seed={seed}; no real patient data",
    )


def _prepare_output(out: Path) -> None:
    """Reuse an earlier demo folder (its generated parts are removed); refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER)):
            raise FileExistsError(f"{out} is not empty and is not an earlier demo cohort; choose an empty folder")
        for name in ("xray", "timeseries", "wsi", "ct"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in (MANIFEST_NAME, "README.txt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _pointer(out: Path, modality: str, row: dict[str, Any], seed: int, index: int) -> str:
    """One sample's pointer for a modality: inline text, or the file written (path relative to its root)."""
    rng = _rng(seed, index, modality)
    view = row["_risk"] + rng.normal(0, VIEW_NOISE.get(modality, 0.0))
    sample_id = row["sample_id"]
    if modality == "clinical":
        return clinical_prompt(row)
    if modality == "notes":
        return progress_note(rng, view)
    if modality == "xray":
        kind = rng.random()
        if kind < DICOM_RATE:
            name = f"{sample_id}.dcm"
            flavour = rng.random()
            data = media.xray_dicom_bytes(
                view, rng, sample_id, seed, monochrome1=flavour < 0.5, voi_window=flavour > 0.3
            )
        else:
            name = f"{sample_id}.png"
            data = media.xray_png_bytes(view, rng, sixteen_bit=kind > 1 - PNG16_RATE)
    elif modality == "timeseries":
        name, data = f"{sample_id}.npz", media.npz_bytes(media.timeseries_arrays(view, rng))
    elif modality == "wsi":
        name, data = f"{sample_id}.tiff", media.wsi_tiff_bytes(view, rng)
    elif modality == "ct":
        name, data = f"{sample_id}.nii.gz", media.ct_nifti_gz_bytes(view, rng)
    else:
        raise ValueError(f"unknown demo modality {modality!r}")
    media.write_bytes(out / modality / name, data)
    return name


def clinical_prompt(row: dict[str, Any] | pd.Series) -> str:
    """The clinical table row as one sentence for the text encoder, after supplement section 4.2.

    Codes of -1 and empty cells read "unknown"; ``gender`` 1 is taken as male (ccRCC's 2:1 male share).
    """

    def known(column: str) -> Any:
        value = row.get(column)
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == -1:
            return None
        return int(value)

    gender = {1: "male", 0: "female"}.get(known("gender"), "person of unknown sex")
    races = [column.removeprefix("race_") for column in RACE_COLUMNS if known(column) == 1]
    race = races[0] if len(races) == 1 else "unknown"
    age = known("age_diag")

    def mutation(column: str, has: str, lacks: str) -> str:
        status = known(column)
        return "an unknown" if status is None else (has if status == 1 else lacks)

    def stage(column: str) -> str:
        value = known(column)
        return "unknown" if value is None else str(value)

    return (
        f"The patient is a {gender} of {race} race, diagnosed at age group {'unknown' if age is None else age}, "
        f"who has {mutation('VHL_mutation', 'a', 'no')} VHL mutation and {mutation('PBMR1_mutation', 'a', 'no')} "
        f"PBMR1 mutation {mutation('TTN_mutation', 'with a', 'without a').replace('an unknown', 'with an unknown')} "
        f"TTN mutation. Tumor characteristics include tumor stage {stage('ajcc_path_tumor_pt')} with node "
        f"involvement at stage {stage('ajcc_path_nodes_pn')} and pathological metastasis at stage "
        f"{stage('ajcc_path_metastasis_pm')}. The overall tumor stage is {stage('ajcc_path_tumor_stage')} and the "
        f"tumor grade is {stage('grade')}."
    )


def _readme(subjects: int, seed: int, modalities: tuple[str, ...], table: pd.DataFrame) -> str:
    counts = table["split"].value_counts()
    lines = [
        f"{README_MARKER} (subjects={subjects}, seed={seed})",
        "",
        "Entirely synthetic: no real patient data. Built by adacomed.pipelines.demo.build_demo_cohort; the same",
        "(subjects, seed) always gives the same bytes.",
        "",
        f"samples: {len(table)} (some subjects have a second admission); samples per split (split by subject): "
        + ", ".join(f"{split} {int(counts.get(split, 0))}" for split in ("train", "val", "test")),
        f"modalities: {', '.join(modalities)} (missing ones are empty pointers in manifest.parquet)",
        "  xray/        chest-like PNGs (8- and 16-bit) and ~10 % DICOM (MONOCHROME1/2, some VOI windows)",
        "  timeseries/  .npz: values float32 (48, 12) NaN = not observed, hours float32 (48,), variables (12,)",
        "  wsi/         pyramidal tiled TIFFs (1024 px level 0 + 2 reduced levels, 0.5 um/px, zlib)",
        "  ct/          NIfTI int16 HU volumes 48x48x32 at 1.5x1.5x3 mm",
        "  notes        inline column note_text; clinical: inline MMIST-style table + prompt column clinical_text",
        "",
        "Every label and every modality follows one latent risk per subject (plus noise):",
    ]
    for name, spec in TASKS.items():
        labels = table[spec.column]
        lines.append(
            f"  {name}: 1 = {spec.positive}; positive rate {labels.mean():.2f}, excluded {labels.isna().sum()}"
        )
    return "\n".join(lines) + "\n"


def build_demo_cohort(
    out: Path,
    subjects: int = 120,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
    show_progress: bool = True,
) -> Path:
    """Write the demo cohort under ``out`` and return the manifest path ``out/manifest.parquet``.

    Args:
        out: an empty (or earlier demo) folder.
        subjects: number of subjects; about 15 % of them get a second sample.
        seed: the cohort's seed; the same (subjects, seed) always gives identical bytes.
        modalities: the large-encoder modalities to include (default all of ``DEMO_MODALITIES``); the clinical
            table columns are always written because they feed the small model.
        show_progress: show a rich progress bar.
    """
    chosen = tuple(DEMO_MODALITIES if modalities is None else modalities)
    unknown = sorted(set(chosen) - set(DEMO_MODALITIES))
    if unknown:
        raise ValueError(f"unknown demo modalities {unknown}; choose from {list(DEMO_MODALITIES)}")
    chosen = tuple(name for name in DEMO_MODALITIES if name in chosen)
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    _prepare_output(out)

    width = max(4, len(str(2 * subjects)))
    rows: list[dict[str, Any]] = []
    subject_died = np.zeros(subjects)
    for subject in range(subjects):
        rng = _rng(seed, subject, "core")
        subject_risk = rng.normal()
        clinical = clinical_table(rng, subject_risk)
        admissions = 2 if rng.random() < SECOND_ADMISSION_RATE else 1
        for _ in range(admissions):
            row: dict[str, Any] = {
                "sample_id": f"demo-{len(rows) + 1:0{width}d}",
                "subject_id": f"subj-{subject + 1:0{width}d}",
                "_subject": subject,
                "_risk": subject_risk + rng.normal(0, 0.25),
            }
            row.update(_sample_labels(rng, row["_risk"]))
            row.update(clinical)
            subject_died[subject] = max(subject_died[subject], row["label_mortality"])
            rows.append(row)
            if row["label_mortality"] == 1:
                break  # no readmission after an in-hospital death
    splits = _assign_splits(subject_died, seed)

    with Progress(disable=not show_progress, transient=True) as progress:
        job = progress.add_task("demo cohort", total=len(rows))
        for index, row in enumerate(rows):
            row["split"] = splits[row["_subject"]]
            present = _rng(seed, index, "presence").random(len(DEMO_MODALITIES)) < [
                PRESENCE[m] for m in DEMO_MODALITIES
            ]
            for has_it, modality in zip(present, DEMO_MODALITIES):
                if modality in chosen:
                    row[POINTER_COLUMNS[modality]] = _pointer(out, modality, row, seed, index) if has_it else None
            progress.advance(job)

    table = pd.DataFrame(rows).drop(columns=["_risk", "_subject"])
    leading = ["sample_id", "subject_id", "split", *(spec.column for spec in TASKS.values())]
    table = table[leading + [c for c in table.columns if c not in leading]]
    manifest = Manifest(table, _manifest_info(chosen, subjects, seed), base_dir=out)
    path = manifest.write(out / MANIFEST_NAME)
    (out / "README.txt").write_text(_readme(subjects, seed, chosen, table))
    return path
