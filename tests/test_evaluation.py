"""Evaluation folds, metrics, baselines and the comparison report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema.manifest import Manifest, ManifestInfo, SmallInput, TaskSpec
from adacomed.pipelines.suites.evaluation import (
    METRICS,
    applicable_baselines,
    binary_metrics,
    official_split,
    repeated_stratified_kfold,
    run_baselines,
    summarise,
    write_report,
)


def _manifest(n_subjects: int = 60, samples_per_subject: int = 1, seed: int = 0) -> Manifest:
    """A cohort whose label depends on 'score' and 'stage', so a working baseline must beat chance."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        label = float(s % 4 != 0)  # 3:1 imbalance
        for k in range(samples_per_subject):
            rows.append(
                {
                    "sample_id": f"S{s:03d}-{k}",
                    "subject_id": f"S{s:03d}",
                    "split": "test" if s % 5 == 0 else "train",
                    "label_y": label if not (s == 7 and k == 0) else np.nan,
                    "score": rng.normal(label * 2.0, 1.0),
                    "stage": str(int(rng.integers(1, 3) + (0 if label else 1))),
                    "sex": rng.choice(["F", "M"]),
                }
            )
    info = ManifestInfo(
        tasks={"y": TaskSpec("label_y", "positive")},
        small_inputs={
            "score": SmallInput("score", "numerical"),
            "stage": SmallInput("stage", "ordinal", {"levels": ["1", "2", "3"]}),
            "sex": SmallInput("sex", "categorical"),
        },
    )
    return Manifest(pd.DataFrame(rows), info)


def test_kfold_is_stratified_disjoint_covering_and_deterministic():
    manifest = _manifest()
    labels = manifest.labels("y").dropna()
    folds = repeated_stratified_kfold(manifest, "y", n_splits=5, n_repeats=2, seed=3)
    assert [f.name for f in folds] == [f"r{r}f{i}" for r in range(2) for i in range(5)]
    for repeat in range(2):
        tests = [set(f.test) for f in folds if f.repeat == repeat]
        assert set().union(*tests) == set(labels.index)  # every labelled sample is tested once per repeat
        assert sum(len(t) for t in tests) == len(labels)
    for fold in folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == set(labels.index)
        for part in (fold.test, fold.val):
            assert 0.5 < labels[part].mean() < 0.95  # both classes present, near the 3:1 base rate
    again = repeated_stratified_kfold(manifest, "y", n_splits=5, n_repeats=2, seed=3)
    assert again == folds
    assert repeated_stratified_kfold(manifest, "y", n_splits=5, n_repeats=2, seed=4) != folds


def test_kfold_keeps_a_subjects_samples_together():
    manifest = _manifest(n_subjects=40, samples_per_subject=3)
    subject = manifest.table.set_index("sample_id")["subject_id"]
    for fold in repeated_stratified_kfold(manifest, "y", n_splits=4, n_repeats=1):
        sets = [set(subject[fold.train]), set(subject[fold.val]), set(subject[fold.test])]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_official_split_keeps_test_and_carves_val_from_train():
    manifest = _manifest()
    (fold,) = official_split(manifest, "y", seed=1)
    split = manifest.split_of()
    assert set(fold.test) == {s for s in split.index[split == "test"] if not np.isnan(manifest.labels("y")[s])}
    assert set(fold.train) | set(fold.val) == {s for s in split.index[split == "train"] if s != "S007-0"}
    assert len(fold.val) == pytest.approx(0.2 * (len(fold.train) + len(fold.val)), abs=1)


def test_metrics_match_hand_computed_values():
    labels = np.array([1, 1, 0, 0])
    probabilities = np.array([0.9, 0.4, 0.6, 0.1])
    m = binary_metrics(labels, probabilities)
    assert m["Acc"] == 0.5 and m["AUROC"] == 0.75
    assert m["mAP"] == 0.5 and m["mAR"] == 0.5 and m["mF1"] == 0.5
    perfect = binary_metrics(labels, np.array([0.9, 0.8, 0.2, 0.1]))
    assert all(perfect[k] == 1.0 for k in METRICS)


def test_baseline_learns_and_report_names_the_best(tmp_path: Path):
    manifest = _manifest(n_subjects=80)
    folds = repeated_stratified_kfold(manifest, "y", n_splits=4, n_repeats=1)
    df = run_baselines(manifest, "y", folds, methods=["clinical_lr"])
    assert list(df["fold"]) == [f.name for f in folds]
    assert df["AUROC"].mean() > 0.8
    summary = summarise(df)
    assert summary.loc["clinical_lr", "n_folds"] == 4
    assert summary.loc["clinical_lr", "AUROC_mean"] == pytest.approx(df["AUROC"].mean())
    rng = np.random.default_rng(0)
    chance = df.assign(AUROC=rng.uniform(0.4, 0.6, len(df)))[["fold", *METRICS]]
    report = write_report({"baselines": df, "coin": chance}, tmp_path / "report.md")
    text = report.read_text()
    assert "## Best: baselines" in text and "**baselines**" in text
    assert "better on 4 of 4 folds" in text
    assert (tmp_path / "report.csv").is_file()
    with pytest.raises(ValueError, match="share no fold"):
        write_report({"a": df, "b": chance.assign(fold="other")}, tmp_path / "bad.md")


@pytest.mark.shared
def test_clinical_baseline_on_real_mmist(mmist_root: Path, tmp_path: Path):
    from adacomed.pipelines.datasets.mmist import build_mmist_cohort

    manifest = Manifest.read(build_mmist_cohort(mmist_root, tmp_path, cohort="all"))
    folds = repeated_stratified_kfold(manifest, "vital12", n_splits=5, n_repeats=1, seed=0)
    df = run_baselines(manifest, "vital12", folds, methods=["clinical_lr"])
    assert 0.7 < df["AUROC"].mean() < 0.95


def test_baselines_that_do_not_apply_are_named_with_the_reason():
    manifest = _manifest()
    runnable, skipped = applicable_baselines(manifest)
    assert runnable == ["clinical_lr"]
    assert skipped == {
        "imaging_lr": "the manifest declares no vector small inputs",
        "imaging_clinical_lr": "the manifest declares no vector small inputs",
    }
    with pytest.raises(ValueError, match="'imaging_lr' does not apply: the manifest declares no vector"):
        run_baselines(manifest, "y", official_split(manifest, "y"), methods=["imaging_lr"])
    no_table = Manifest(manifest.table, ManifestInfo(tasks=manifest.info.tasks, small_inputs={}))
    assert applicable_baselines(no_table, ["clinical_lr"]) == (
        [],
        {"clinical_lr": "the manifest declares no categorical, ordinal or numerical small inputs"},
    )
    with pytest.raises(ValueError, match="unknown baseline"):
        applicable_baselines(manifest, ["forest"])


def test_metrics_are_the_trainers_under_the_report_names():
    from adacomed.train.metrics import binary_metrics as train_metrics

    y = np.array([0, 1, 1, 0, 1, 1])
    p = np.array([0.2, 0.7, 0.4, 0.4, 0.9, 0.6])
    ours, theirs = binary_metrics(y, p, 0.5), train_metrics(y, p, 0.5)
    assert list(ours) == [*METRICS, "BalAcc"]
    assert [ours[k] for k in METRICS] == [theirs[k] for k in ("acc", "auroc", "auprc", "mAP", "mAR", "mF1")]
    assert ours["BalAcc"] == theirs["bacc"] == theirs["mAR"]
