"""The project's one subject-level split (cache_schema/splits.py): whole subjects, stratified, seeded, stable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema.splits import split_subjects, subject_folds


def _cohort(n_subjects: int = 200, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for i in range(n_subjects):
        died = rng.random() < 0.15
        for _ in range(1 + int(rng.random() < 0.3)):  # some subjects have two admissions
            subjects.append(f"p{i:03d}")
            labels.append(float(died))
    return subjects, np.asarray(labels)


def test_split_keeps_subjects_whole_stratified_and_seeded():
    subjects, labels = _cohort()
    parts = split_subjects(subjects, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=3, strata=labels)
    frame = pd.DataFrame({"subject": subjects, "part": parts, "label": labels})
    assert frame.groupby("subject")["part"].nunique().max() == 1
    per_subject = frame.groupby("subject").first()
    for stratum in (0.0, 1.0):
        share = per_subject[per_subject.label == stratum].part.value_counts(normalize=True)
        assert share["train"] == pytest.approx(0.7, abs=0.03) and share["test"] == pytest.approx(0.15, abs=0.03)
    again = split_subjects(subjects, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=3, strata=labels)
    assert list(again) == list(parts)
    other = split_subjects(subjects, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=4, strata=labels)
    assert list(other) != list(parts)


def test_split_does_not_depend_on_row_order_and_is_stable_when_subjects_are_added():
    subjects, labels = _cohort()
    fractions = {"train": 0.8, "test": 0.2}
    parts = dict(zip(subjects, split_subjects(subjects, fractions, seed=1)))
    order = np.random.default_rng(0).permutation(len(subjects))
    shuffled = [subjects[i] for i in order]
    assert dict(zip(shuffled, split_subjects(shuffled, fractions, seed=1))) == parts
    grown = subjects + [f"new{i}" for i in range(5)]
    moved = sum(a != parts[s] for s, a in zip(grown, split_subjects(grown, fractions, seed=1)) if s in parts)
    assert moved <= 5  # only subjects near a cut move, not a reshuffle


def test_at_least_one_subject_of_each_class_in_a_small_carve():
    subjects = [f"s{i}" for i in range(20)]
    labels = np.array([1.0, 1.0] + [0.0] * 18)
    parts = split_subjects(subjects, {"train": 0.9, "val": 0.1}, seed=0, strata=labels, at_least_one=True)
    assert set(labels[parts == "val"]) == {0.0, 1.0} and set(labels[parts == "train"]) == {0.0, 1.0}
    with pytest.raises(ValueError, match="fractions"):
        split_subjects(subjects, {"train": -1.0, "val": 0.5})


def test_folds_partition_subjects_and_balance_strata():
    subjects, labels = _cohort()
    folds = subject_folds(subjects, 5, seed=2, strata=labels)
    frame = pd.DataFrame({"subject": subjects, "fold": folds, "label": labels}).groupby("subject").first()
    assert pd.DataFrame({"s": subjects, "f": folds}).groupby("s")["f"].nunique().max() == 1
    sizes = frame.fold.value_counts()
    assert sizes.max() - sizes.min() <= 1
    positives = frame[frame.label == 1].fold.value_counts()
    assert positives.max() - positives.min() <= 1
    assert list(subject_folds(subjects, 5, seed=2, strata=labels)) == list(folds)
