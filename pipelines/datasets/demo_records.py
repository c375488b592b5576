"""Synthetic records of a demo subject: an MMIST-like clinical table row and a messy clinical note.

Value ranges and frequencies follow MMIST ccRCC's ``clinical+genomic_split.csv`` (codes of -1 = unknown);
stage, grade, nodes and age shift with the latent risk. Notes mix calm and alarming phrases in proportion to
the risk and carry the irregular line breaks and whitespace real notes have. Nothing here is real patient data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RACE_COLUMNS = ("race_Asian", "race_Black or African American", "race_Hispanic or Latino", "race_White", "race_other")
RACE_WEIGHTS = (0.032, 0.044, 0.005, 0.895, 0.018)  # the rest (~0.6 %) has no race recorded
# value: weight, in the order of increasing severity (from MMIST's counts, unknown -1 drawn separately)
TUMOR_PT = {1: 17, 2: 142, 3: 114, 4: 48, 5: 13, 6: 9, 7: 6, 8: 143, 9: 49, 10: 2, 11: 13}
NODES_PN = {0: 321, 1: 217, 2: 18}
CLIN_METASTASIS_CM = {0: 57, 1: 48, 2: 19}
PATH_METASTASIS_PM = {0: 79, 1: 390, 2: 75}
TUMOR_STAGE = {1: 288, 2: 64, 3: 158, 4: 90}
GRADE = {1: 25, 2: 266, 3: 233, 4: 89, 5: 5}


def _severity_draw(rng: np.random.Generator, risk: float, weights: dict[int, int], noise: float = 1.0) -> int:
    """A level whose quantile is a noisy, standardised copy of the risk: sicker subjects get higher levels."""
    score = (risk + rng.normal(0, noise)) / math.sqrt(1 + noise**2)
    quantile = 0.5 * (1 + math.erf(score / math.sqrt(2)))
    cumulative = np.cumsum(list(weights.values())) / sum(weights.values())
    return list(weights)[int(min(np.searchsorted(cumulative, quantile), len(weights) - 1))]


def _maybe_unknown(rng: np.random.Generator, rate: float, value: int) -> int:
    return -1 if rng.random() < rate else value


def clinical_table(rng: np.random.Generator, risk: float) -> dict[str, Any]:
    """One subject's clinical and genomic columns, named and coded like MMIST's table."""
    age = float(np.clip(round(4.6 + 0.5 * risk + rng.normal(0, 1.1)), 1, 8))
    race = rng.choice(len(RACE_COLUMNS) + 1, p=[*RACE_WEIGHTS, 1 - sum(RACE_WEIGHTS)])
    genomics_missing = rng.random() < 0.25
    row: dict[str, Any] = {
        "gender": int(rng.random() < 0.67),
        "age_diag": np.nan if rng.random() < 0.03 else age,
        "grade": _severity_draw(rng, risk, GRADE, noise=0.8),
        "cancer_history": 1.0 if rng.random() < 0.12 else np.nan,
        "ajcc_path_tumor_pt": _maybe_unknown(rng, 0.1, _severity_draw(rng, risk, TUMOR_PT)),
        "ajcc_path_nodes_pn": _maybe_unknown(rng, 0.1, _severity_draw(rng, risk, NODES_PN, noise=1.2)),
        "ajcc_clin_metastasis_cm": _maybe_unknown(rng, 0.8, _severity_draw(rng, risk, CLIN_METASTASIS_CM)),
        "ajcc_path_metastasis_pm": _maybe_unknown(rng, 0.12, _severity_draw(rng, risk, PATH_METASTASIS_PM)),
        "ajcc_path_tumor_stage": _maybe_unknown(rng, 0.03, _severity_draw(rng, risk, TUMOR_STAGE, noise=0.7)),
    }
    for index, column in enumerate(RACE_COLUMNS):
        row[column] = int(race == index)
    vhl, pbmr1, ttn = rng.random() < 0.58, rng.random() < 0.4, rng.random() < 0.24 * (1 + 0.3 * np.tanh(risk))
    row["VHL_mutation"] = -1 if genomics_missing else int(vhl)
    row["PBMR1_mutation"] = -1 if genomics_missing else int(pbmr1)
    row["TTN_mutation"] = -1 if genomics_missing else int(ttn)
    return row


CALM = (
    "Resting comfortably overnight.",
    "Vital signs stable.",
    "Afebrile, tolerating diet.",
    "Ambulating in the hallway with assistance.",
    "Pain well controlled on oral analgesia.",
    "Improving; weaned to room air.",
    "Alert and oriented x3.",
    "Plan: continue current management, anticipate discharge in 1-2 days.",
    "Good urine output.",
    "Labs within normal limits.",
)
ALARMING = (
    "Hypotensive overnight, started on norepinephrine.",
    "Intubated for hypoxic respiratory failure.",
    "Lactate rising despite fluids.",
    "Febrile, blood cultures sent, broad-spectrum antibiotics started.",
    "Oliguric; creatinine up from baseline.",
    "Family meeting held regarding goals of care.",
    "New confusion, GCS dropped.",
    "Tachycardic and tachypneic, requiring increasing oxygen.",
    "Rapid response called for desaturation.",
    "Vasopressor requirement escalating.",
)
NEUTRAL = (
    "Seen and examined at bedside.",
    "Medications reviewed.",
    "Discussed with the attending.",
    "Nursing concerns addressed.",
    "Imaging reviewed.",
)
HEADERS = ("ICU PROGRESS NOTE", "Nursing note", "Physician progress note", "Attending addendum", "Daily note")
BREAKS = (" ", "  ", "\n", "\n\n", " \n", "\t", "   ")


def progress_note(rng: np.random.Generator, view: float) -> str:
    """A short synthetic note; the share of alarming sentences and the vitals quoted follow ``view``."""
    alarming_share = 1.0 / (1.0 + math.exp(-(1.6 * view - 0.6)))
    heart_rate = int(round(80 + 12 * view + rng.normal(0, 6)))
    systolic = int(round(122 - 12 * view + rng.normal(0, 8)))
    parts = [
        str(rng.choice(HEADERS)) + (":" if rng.random() < 0.5 else ""),
        f"Hospital day {int(rng.integers(1, 9))}.",
        f"HR {heart_rate}, BP {systolic}/{int(round(systolic * 0.58))}.",
    ]
    for _ in range(int(rng.integers(3, 7))):
        roll = rng.random()
        if roll < 0.2:
            parts.append(str(rng.choice(NEUTRAL)))
        elif roll < 0.2 + 0.8 * alarming_share:
            parts.append(str(rng.choice(ALARMING)))
        else:
            parts.append(str(rng.choice(CALM)))
    text = parts[0] + "\n"
    for part in parts[1:]:
        text += part + str(rng.choice(BREAKS, p=(0.45, 0.15, 0.2, 0.08, 0.05, 0.03, 0.04)))
    return text
