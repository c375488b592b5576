"""The project's one subject-level split: cohort splits, validation carves and cross-validation folds.

Every split here moves whole subjects (a patient with several admissions is never in two parts), is seeded and
depends only on (seed, subject ids, strata), not on row order: subjects are ordered by
``sha256(seed:salt:subject)``, so adding a subject never reshuffles the others. With strata (a label per sample;
a subject's stratum is the largest of its samples', so a subject with any positive admission counts as
positive) each stratum is cut on its own, so every part keeps the class balance.

Used by the cohort builders (demo, MIMIC-IV-MM, from-table), the trainer's validation carve and the evaluation
protocols; nothing else splits by subject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PARTS = ("train", "val", "test")


def subject_order(subjects: Sequence[str], seed: int, salt: str = "") -> list[str]:
    """Distinct subjects in a seeded order that does not depend on the order they were given in."""
    unique = sorted({str(s) for s in subjects})
    return sorted(unique, key=lambda s: hashlib.sha256(f"{seed}:{salt}:{s}".encode()).hexdigest())


def _subject_strata(subjects: np.ndarray, strata: Sequence[Any] | None) -> pd.Series:
    """One stratum per subject: the max of its samples' strata (NaN ignored; all-NaN subjects form their own)."""
    if strata is None:
        return pd.Series(0, index=sorted(set(subjects.tolist())))
    values = pd.to_numeric(pd.Series(list(strata)), errors="coerce")
    if len(values) != len(subjects):
        raise ValueError(f"{len(subjects)} subjects but {len(values)} strata values")
    per_subject = values.groupby(subjects).max()
    return per_subject.fillna(-np.inf)


def _cut(n: int, weights: np.ndarray, at_least_one: bool) -> np.ndarray:
    """How many of ``n`` subjects each part gets: rounded cumulative fractions; with ``at_least_one`` every part
    of non-zero weight gets one subject when there are enough subjects for all of them."""
    bounds = np.round(np.cumsum(weights / weights.sum()) * n).astype(int)
    counts = np.diff(np.concatenate([[0], bounds]))
    wanted = weights > 0
    if at_least_one and n >= int(wanted.sum()):
        for part in np.flatnonzero(wanted & (counts == 0)):
            donor = int(np.argmax(np.where(wanted, counts, -1)))
            counts[donor] -= 1
            counts[part] += 1
    return counts


def split_subjects(
    subjects: Sequence[str],
    fractions: Mapping[str, float],
    seed: int = 0,
    strata: Sequence[Any] | None = None,
    at_least_one: bool = False,
    salt: str = "split",
) -> np.ndarray:
    """Part name per sample: whole subjects cut by ``fractions`` (e.g. ``{"train": 0.7, "val": 0.15, "test":
    0.15}``; any part names, in the order given), stratified by ``strata`` (one value per sample) when given.

    ``at_least_one`` gives every part of non-zero fraction at least one subject of every stratum that has enough
    subjects (a validation carve needs both classes).
    """
    names = list(fractions)
    weights = np.array([float(fractions[name]) for name in names])
    if not names or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"split fractions must be non-negative and not all zero, got {dict(fractions)}")
    subjects = np.asarray([str(s) for s in subjects], dtype=object)
    per_subject = _subject_strata(subjects, strata)
    part_of: dict[str, str] = {}
    for stratum in sorted(set(per_subject.tolist())):
        members = per_subject.index[per_subject.to_numpy() == stratum].tolist()
        order = subject_order(members, seed, salt)
        counts = _cut(len(order), weights, at_least_one)
        start = 0
        for name, count in zip(names, counts):
            part_of.update((subject, name) for subject in order[start : start + count])
            start += count
    return np.asarray([part_of[s] for s in subjects], dtype=object)


def subject_folds(
    subjects: Sequence[str], n_folds: int, seed: int = 0, strata: Sequence[Any] | None = None
) -> np.ndarray:
    """Fold index (0 .. n_folds-1) per sample: whole subjects dealt round-robin in seeded order, per stratum.

    Each stratum is dealt on from where the previous one stopped, so fold sizes differ by at most one subject
    overall and each fold holds every stratum in proportion.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    subjects = np.asarray([str(s) for s in subjects], dtype=object)
    per_subject = _subject_strata(subjects, strata)
    fold_of: dict[str, int] = {}
    dealt = 0
    for stratum in sorted(set(per_subject.tolist())):
        members = per_subject.index[per_subject.to_numpy() == stratum].tolist()
        for subject in subject_order(members, seed, "fold"):
            fold_of[subject] = dealt % n_folds
            dealt += 1
    return np.asarray([fold_of[s] for s in subjects], dtype=np.int64)
