"""The experiment suite on a tiny demo cohort: fold manifests, resumable AdaCoMed fold runs, the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import adacomed.pipelines.suites.compare as experiments
from adacomed.cache_schema import CacheDir, Fingerprint, Manifest
from adacomed.pipelines.datasets.demo import build_demo_cohort
from adacomed.pipelines.suites.cli import app
from adacomed.pipelines.suites.compare import compare, fold_manifest, make_folds, run_adacomed_folds
from adacomed.pipelines.suites.evaluation import METRICS, Fold, repeated_stratified_kfold, run_baselines

TASK = "longstay"  # the demo's most balanced task: both classes in every fold's train, val and test part
OVERRIDES = (
    "epochs=3",
    "small_epochs=3",
    "batch_size=16",
    "small_batch_size=16",
    "small_hidden_dim=16",
    "proj_dim=16",
    "device=cpu",
)


def _write_cache(root: Path, manifest: Manifest, modality: str, values: dict[str, np.ndarray]) -> None:
    """Commit one finalised cache the way stage one would (no encoder run: the test stays fast)."""
    dim = len(next(iter(values.values())))
    cache = CacheDir(
        root,
        Fingerprint(
            modality=modality,
            encoder="synthetic",
            encoder_version="1",
            weights="test:synthetic",
            pooling="none",
            storage_dtype="float32",
            dim=dim,
            input_hash=manifest.input_hash(modality),
        ),
    )
    ids = sorted(values)
    plan = cache.initialise(len(ids), rows_per_shard=64)
    for index in range(plan.n_shards):
        shard_ids = plan.ids_of(ids, index)
        cache.commit_shard(plan, index, shard_ids, {"embeddings": np.stack([values[s] for s in shard_ids])})
    assert cache.finalize(plan) is not None


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 demo subjects with notes and clinical text; their large embeddings carry a noisy view of the label."""
    root = tmp_path_factory.mktemp("demo")
    manifest_path = build_demo_cohort(
        root / "cohort", subjects=40, modalities=("notes", "clinical"), show_progress=False
    )
    manifest = Manifest.read(manifest_path)
    labels = manifest.labels(TASK).fillna(0.5)
    rng = np.random.default_rng(3)
    for modality, dim in (("notes", 12), ("clinical", 8)):
        direction = rng.normal(size=dim)
        values = {
            sid: (labels[sid] * direction + rng.normal(size=dim)).astype(np.float32)
            for sid, _ in manifest.modality_items(modality)
        }
        _write_cache(root / "cache", manifest, modality, values)
    return manifest_path, root / "cache"


@pytest.fixture(scope="module")
def compared(cohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, Path]:
    manifest_path, cache = cohort
    out = tmp_path_factory.mktemp("compare")
    report, frame = compare(
        manifest_path,
        cache,
        TASK,
        protocol="cv",
        n_splits=2,
        n_repeats=1,
        out=out,
        overrides=OVERRIDES,
        weightings=("inverse", "small-only"),
    )
    return report, frame, out


def test_fold_manifest_sets_splits_drops_labels_outside_and_keeps_cache_hashes(cohort):
    manifest = Manifest.read(cohort[0])
    labelled = manifest.labels(TASK).dropna().index.tolist()
    fold = Fold("x", 0, 0, train=labelled[:20], val=labelled[20:28], test=labelled[28:36])
    copy = fold_manifest(manifest, TASK, fold)
    splits, labels = copy.split_of(), copy.labels(TASK)
    assert (splits[fold.train] == "train").all() and (splits[fold.val] == "val").all()
    assert (splits[fold.test] == "test").all()
    outside = [s for s in manifest.sample_ids if s not in set(fold.train + fold.val + fold.test)]
    assert outside and labels[outside].isna().all()  # present but unused by train_run
    assert labels[fold.test].equals(manifest.labels(TASK)[fold.test])
    assert len(copy.table) == len(manifest.table)  # no row dropped: the caches' input_hash must not move
    for modality in manifest.info.modalities:
        assert copy.input_hash(modality) == manifest.input_hash(modality)
    with pytest.raises(ValueError, match="in both train and test"):
        fold_manifest(manifest, TASK, Fold("bad", 0, 0, train=labelled[:5], val=[], test=labelled[4:6]))


def test_fold_manifests_on_disk_follow_the_folds(cohort, compared):
    _, _, out = compared
    folds = make_folds(Manifest.read(cohort[0]), TASK, "cv", n_splits=2, n_repeats=1)
    assert [f.name for f in folds] == ["r0f0", "r0f1"]
    for fold in folds:
        written = Manifest.read(out / "adacomed-inverse" / "folds" / fold.name / "manifest.parquet").split_of()
        for part in ("train", "val", "test"):
            assert set(written[written == part].index) >= set(getattr(fold, part)), (fold.name, part)
        # the run trained on exactly the fold's test samples
        predictions = pd.read_parquet(out / "adacomed-inverse" / "folds" / fold.name / "run" / "predictions.parquet")
        assert sorted(predictions.loc[predictions.split == "test", "sample_id"]) == sorted(fold.test)
    assert set(folds[0].test).isdisjoint(folds[1].test)


def test_frame_has_the_baselines_columns(cohort, compared):
    _, frame, out = compared
    manifest = Manifest.read(cohort[0])
    baseline = run_baselines(manifest, TASK, repeated_stratified_kfold(manifest, TASK, 2, 1), methods=["clinical_lr"])
    assert set(baseline.columns) <= set(frame.columns)
    ours = frame[frame.method.str.startswith("adacomed-")]
    assert sorted(ours.method.unique()) == ["adacomed-inverse", "adacomed-small-only"]
    assert ours[list(METRICS)].notna().all().all()
    for row in ours.itertuples():  # each fold's AUROC is the AUROC of that fold run's test predictions
        run = pd.read_parquet(out / row.method / "folds" / row.fold / "run" / "predictions.parquet")
        assert np.isclose(row.AUROC, roc_auc_score(run[run.split == "test"].label, run[run.split == "test"].prob_fused))
    # same folds, same test sets: AdaCoMed's test counts per fold equal the baseline's
    merged = ours.merge(baseline, on="fold", suffixes=("", "_lr"))
    assert len(merged) == len(ours) == 2 * len(baseline)
    assert (merged.n_test == merged.n_test_lr).all() and (merged.n_test_neg == merged.n_test_neg_lr).all()


def test_resume_reads_finished_folds_and_refuses_other_settings(cohort, compared, monkeypatch):
    manifest_path, cache = cohort
    _, frame, out = compared
    folds = make_folds(Manifest.read(manifest_path), TASK, "cv", n_splits=2, n_repeats=1)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(experiments, "train_run", no_training)
    again = run_adacomed_folds(
        manifest_path, cache, TASK, folds, out / "adacomed-inverse", overrides=OVERRIDES, weighting="inverse"
    )
    expected = frame[frame.method == "adacomed-inverse"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, expected[again.columns], check_dtype=False)
    with pytest.raises(ValueError, match="epochs differ"):
        run_adacomed_folds(
            manifest_path, cache, TASK, folds, out / "adacomed-inverse", overrides=(*OVERRIDES, "epochs=4")
        )
    other = folds[0].__class__("r0f0", 0, 0, folds[1].train, folds[1].val, folds[1].test)
    with pytest.raises(ValueError, match="other samples"):
        run_adacomed_folds(manifest_path, cache, TASK, [other], out / "adacomed-inverse", overrides=OVERRIDES)


def test_report_names_the_best_method_and_the_class_balance(compared):
    report, frame, _ = compared
    text = report.read_text()
    means = frame.groupby("method").AUROC.mean().sort_values(ascending=False)
    assert f"**Best by mean AUROC: {means.index[0]} {means.iloc[0]:.3f}" in text
    assert f"## Best: {means.index[0]}" in text
    beats = means[[m for m in means.index if m.startswith("adacomed-")]].max() > means["clinical_lr"]
    assert ("**AdaCoMed beats the baselines**" if beats else "**AdaCoMed does NOT beat the baselines**") in text
    assert "2 folds" in text and "negative" in text and "official test split holds" in text
    csv = pd.read_csv(report.with_suffix(".csv"))
    assert set(csv.method) == {"clinical_lr", "adacomed-inverse", "adacomed-small-only"}
    # the demo declares no vector small inputs: the imaging baselines are skipped with a line saying so
    for method in ("imaging_lr", "imaging_clinical_lr"):
        assert f"Skipped baseline {method}: the manifest declares no vector small inputs." in text
    assert "co-training epoch chosen by lowest validation loss" in text and "s CPU" in text


def test_each_fold_trains_one_small_model_for_every_weighting(compared):
    _, _, out = compared
    for fold in ("r0f0", "r0f1"):
        (small,) = (out / "small-models" / fold).iterdir()  # one small model per fold, whatever the weighting
        used = {
            tomllib.loads((out / method / "folds" / fold / "run" / "config.toml").read_text())["small_checkpoint"]
            for method in ("adacomed-inverse", "adacomed-small-only")
        }
        assert used == {str(small / "small_model.safetensors")}
        runs = [
            json.loads((out / method / "folds" / fold / "run" / "metrics.json").read_text())
            for method in ("adacomed-inverse", "adacomed-small-only")
        ]
        assert runs[0]["auroc"]["test"]["small_model_stage_a"] == runs[1]["auroc"]["test"]["small_model_stage_a"]


def test_cli_compare_resumes_into_the_same_report(cohort, compared, tmp_path):
    manifest_path, cache = cohort
    _, frame, out = compared
    report = tmp_path / "cli" / "report.md"
    args = ["compare", "--manifest", str(manifest_path), "--cache", str(cache), "--task", TASK, "--out", str(out)]
    args += ["--folds", "2", "--repeats", "1", "--weighting", "inverse", "--baseline", "clinical_lr"]
    args += ["--report", str(report)] + [item for o in OVERRIDES for item in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(report.with_suffix(".csv"))
    ours = csv[csv.method == "adacomed-inverse"].set_index("fold").AUROC
    assert np.allclose(
        ours.sort_index(), frame[frame.method == "adacomed-inverse"].set_index("fold").AUROC.sort_index()
    )
    bad = CliRunner().invoke(app, [*args, "--protocol", "nope"])
    assert bad.exit_code == 1 and "protocol" in bad.output
    assert json.loads((out / "adacomed-inverse" / "folds" / "r0f0" / "fold.json").read_text())["name"] == "r0f0"


def test_official_protocol_and_cohort_lines(cohort):
    manifest = Manifest.read(cohort[0])
    (fold,) = make_folds(manifest, TASK, "official")
    labels, splits = manifest.labels(TASK).dropna(), manifest.split_of()
    assert sorted(fold.test) == sorted(labels.index[splits[labels.index] == "test"])
    official_neg = int(((splits[labels.index] == "test") & (labels == 0)).sum())
    lines = experiments.cohort_lines(manifest, TASK, [fold], "official")
    assert f"{(labels == 1).sum()} positive and {(labels == 0).sum()} negative" in lines[0]
    assert f"only {official_neg} negatives" in lines[1]
    with pytest.raises(ValueError, match="protocol"):
        make_folds(manifest, TASK, "holdout")
