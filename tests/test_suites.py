"""The experiment suites on a tiny demo cohort: each table and figure has the right shape and holds the numbers of
the run folders it links; a rerun reads finished runs instead of training them again; dask gives the same runs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
from PIL import Image
from train_helpers import write_cache
from typer.testing import CliRunner

import adacomed.pipelines.suites.compare as compare_module
import adacomed.pipelines.suites.runs as runs_module
from adacomed.cache_schema import Manifest
from adacomed.pipelines.datasets.demo import build_demo_cohort
from adacomed.pipelines.suites.ablation import ablation
from adacomed.pipelines.suites.cli import app
from adacomed.pipelines.suites.compare import make_folds
from adacomed.pipelines.suites.data_ratio import data_ratio
from adacomed.pipelines.suites.evaluation import METRICS
from adacomed.pipelines.suites.runs import RunSpec, SuiteContext, run_plan, subsample_train
from adacomed.pipelines.suites.stability import stability
from adacomed.train.presets import ablation_preset

TASK = "longstay"  # the demo's most balanced task
OVERRIDES = (
    "epochs=2",
    "small_epochs=2",
    "batch_size=16",
    "small_batch_size=16",
    "small_hidden_dim=16",
    "proj_dim=16",
    "device=cpu",
)
NAMES = {"Acc": "acc", "AUROC": "auroc", "AUPRC": "auprc", "mAP": "mAP", "mAR": "mAR", "mF1": "mF1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 demo subjects, notes and clinical text embeddings that carry a noisy view of the label."""
    root = tmp_path_factory.mktemp("suites")
    manifest_path = build_demo_cohort(
        root / "cohort", subjects=40, modalities=("notes", "clinical"), show_progress=False
    )
    manifest = Manifest.read(manifest_path)
    labels = manifest.labels(TASK).fillna(0.5)
    rng = np.random.default_rng(5)
    for modality, dim in (("notes", 12), ("clinical", 8)):
        direction = rng.normal(size=dim)
        values = {
            sid: (labels[sid] * direction + rng.normal(size=dim)).astype(np.float32)
            for sid, _ in manifest.modality_items(modality)
        }
        write_cache(root / "cache", manifest, modality, values)
    return manifest_path, root / "cache"


def _context(cohort, out: Path, **changes) -> SuiteContext:
    manifest_path, cache = cohort
    return dataclasses.replace(SuiteContext(manifest_path, cache, TASK, out, overrides=OVERRIDES), **changes)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _test_metric(run: Path, name: str) -> float:
    metrics = _metrics(run)
    if name == "ECE":
        return metrics["calibration"]["ece"]["test"]
    if name == "BalAcc":
        return metrics["test"]["at_0.5"]["bacc"]
    return metrics["test"]["at_0.5"][NAMES[name]]


def _linked_runs(report: Path) -> list[Path]:
    """Run folders linked from the report's run table (relative to the report)."""
    links = re.findall(r"\]\(([^)]+)/report\.md\)", report.read_text())
    return [(report.parent / link).resolve() for link in links]


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def stable(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stability")
    return stability(_context(cohort, out), seeds=3)


def test_stability_table_is_the_mean_and_std_over_the_seed_runs(stable):
    report = stable
    table = pd.read_csv(report.with_name("report_table.csv"))
    assert list(table["task"]) == [TASK] and int(table["n_runs"].iloc[0]) == 3
    runs = _linked_runs(report)
    assert len(runs) == 3 and all((run / "metrics.json").exists() for run in runs)
    seeds = sorted(_metrics(run)["seed"] for run in runs)
    assert seeds == [0, 1, 2]
    for name in (*METRICS, "BalAcc", "ECE"):
        values = np.array([_test_metric(run, name) for run in runs])
        assert table[f"{name}_mean"].iloc[0] == pytest.approx(values.mean(), abs=1e-9), name
        assert table[f"{name}_std"].iloc[0] == pytest.approx(values.std(ddof=1), abs=1e-9), name
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {TASK} |"))
    auroc = np.array([_test_metric(run, "AUROC") for run in runs])
    assert f"{auroc.mean():.4f} ± {auroc.std(ddof=1):.4f}" in row  # Table 5's layout, the same numbers
    assert "Command: `" in text and _png_size(report.with_name("report_seeds.png"))[0] > 100
    per_run = pd.read_csv(report.with_name("report_runs.csv"))
    assert len(per_run) == 3 and not any(Path(p).is_absolute() for p in per_run["run"])


def test_a_finished_suite_is_read_not_trained_again(cohort, stable, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "train_run", no_training)
    monkeypatch.setattr(runs_module, "train_small_model", no_training)
    monkeypatch.setattr(compare_module, "train_small_model", no_training)
    monkeypatch.setattr(runs_module, "_run_task", no_training)  # a finished run is not even handed to a worker
    before = pd.read_csv(stable.with_name("report_table.csv"))
    again = stability(_context(cohort, stable.parent), seeds=3)
    pd.testing.assert_frame_equal(pd.read_csv(again.with_name("report_table.csv")), before)
    with pytest.raises(AssertionError, match="trained again"):  # a fourth seed is new work
        stability(_context(cohort, stable.parent), seeds=4)


def test_subsampled_training_split_keeps_subjects_classes_and_test(cohort):
    manifest = Manifest.read(cohort[0])
    fold = make_folds(manifest, TASK, "official")[0]
    half = subsample_train(manifest, TASK, fold, 0.5)
    assert half.val == fold.val and half.test == fold.test and set(half.train) < set(fold.train)
    assert 0.3 < len(half.train) / len(fold.train) < 0.7
    labels = manifest.labels(TASK)
    assert set(labels[half.train]) == {0.0, 1.0}
    subjects = manifest.table.set_index("sample_id")["subject_id"]
    kept = set(subjects[half.train])
    assert kept.isdisjoint(set(subjects[list(set(fold.train) - set(half.train))]))  # whole subjects
    assert subsample_train(manifest, TASK, fold, 1.0) is fold
    with pytest.raises(ValueError, match="ratio"):
        subsample_train(manifest, TASK, fold, 0.0)


def test_data_ratio_table_and_radar_hold_every_method_per_ratio(cohort, tmp_path):
    ratios = (0.5, 0.8)
    report = data_ratio(_context(cohort, tmp_path), ratios=ratios, weightings=("inverse",), baselines=("clinical_lr",))
    table = pd.read_csv(report.with_name("report_table.csv"))
    assert list(zip(table["ratio"], table["method"])) == [
        (r, m) for r in ratios for m in ("adacomed-inverse", "clinical_lr")
    ]
    runs = _linked_runs(report)
    assert len(runs) == len(ratios)
    manifest = Manifest.read(cohort[0])
    full = make_folds(manifest, TASK, "official")[0]
    for ratio, run in zip(ratios, runs):
        row = table[(table.ratio == ratio) & (table.method == "adacomed-inverse")].iloc[0]
        for name in METRICS:
            assert row[f"{name}_mean"] == pytest.approx(_test_metric(run, name), abs=1e-9)
        train = json.loads((run.parent / "fold.json").read_text())["train"]
        assert train == subsample_train(manifest, TASK, full, ratio).train
        assert _metrics(run)["n"]["test"] == len(full.test)
    width, height = _png_size(report.with_name("report_radar.png"))
    assert width > 1.5 * height  # one panel per ratio, side by side


def test_ablation_tables_and_sweeps_equal_their_runs(cohort, tmp_path):
    report = ablation(
        _context(cohort, tmp_path), weightings=("inverse", "small-only"), lambdas=(0.2, 0.8), dims=(8, 32)
    )
    weightings = pd.read_csv(report.with_name("report_weightings.csv"))
    lambdas = pd.read_csv(report.with_name("report_lambda_sweep.csv"))
    dims = pd.read_csv(report.with_name("report_d_sweep.csv"))
    assert list(weightings["method"]) == ["adacomed-inverse", "adacomed-small-only"]
    assert list(lambdas["lambda"]) == [0.2, 0.8] and list(dims["d"]) == [8, 32]
    runs = {p.parent.parent.name: p for p in _linked_runs(report)}
    assert set(runs) == {"weighting-inverse", "weighting-small-only", "lambda-0.2", "lambda-0.8", "d-8", "d-32"}
    for frame, key, names in (
        (
            weightings,
            "method",
            {"adacomed-inverse": "weighting-inverse", "adacomed-small-only": "weighting-small-only"},
        ),
        (lambdas, "lambda", {0.2: "lambda-0.2", 0.8: "lambda-0.8"}),
        (dims, "d", {8: "d-8", 32: "d-32"}),
    ):
        for _, row in frame.iterrows():
            run = runs[names[row[key]]]
            for name in METRICS:
                assert row[f"{name}_mean"] == pytest.approx(_test_metric(run, name), abs=1e-9), (key, name)
    for kind, value, folder in (("lambda", 0.8, "lambda-0.8"), ("d", 32, "d-32")):
        preset = tomllib.loads((runs[folder].parent / "run" / "config.toml").read_text())["preset"]
        assert preset == pytest.approx(dataclasses.asdict(ablation_preset(kind, value)))
    assert _metrics(runs["weighting-small-only"])["deployed_weights"]["w_large"] == 0.0
    for name in ("weightings", "lambda_sweep", "d_sweep"):
        assert _png_size(report.with_name(f"report_{name}.png"))[0] > 100
    assert "t=2.5" in report.read_text() or "2.5" in report.read_text()  # Table 3's small-only threshold is said


@pytest.mark.timeout(240)
def test_dask_executor_runs_the_same_run(cohort, stable, tmp_path):
    manifest = Manifest.read(cohort[0])
    fold = make_folds(manifest, TASK, "official")[0]
    context = _context(cohort, tmp_path, executor="dask", jobs=1)
    spec = RunSpec("seed-1", fold, dataclasses.replace(context.base_config(), seed=1), {"seed": 1})
    metrics = run_plan(context, [spec], "dask check")
    local = next(p for p in _linked_runs(stable) if p.parent.parent.name == "seed-1")
    assert metrics[str(spec.folder(tmp_path))]["test"] == _metrics(local)["test"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(spec.folder(tmp_path) / "run" / "predictions.parquet"),
        pd.read_parquet(local / "predictions.parquet"),
    )


def test_cli_lists_the_suites_and_names_a_bad_executor(cohort, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and all(name in result.output for name in ("stability", "data-ratio", "ablation"))
    manifest_path, cache = cohort
    result = runner.invoke(
        app,
        ["stability", "--manifest", str(manifest_path), "--cache", str(cache), "--task", TASK, "--out", str(tmp_path)]
        + ["--executor", "slurm"],
    )
    assert result.exit_code == 1 and "executor 'slurm'" in result.output
