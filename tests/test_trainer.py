"""Stage two end to end on a small synthetic cohort whose caches are written directly (no extract import)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import torch
from rich.console import Console
from safetensors.torch import load_file
from train_helpers import LARGE_DIMS, N_SAMPLES, build_cohort, write_cache
from typer.testing import CliRunner

from adacomed.cache_schema import Manifest
from adacomed.train.checkpoint import ResumeError, encode_tensors
from adacomed.train.cli import app
from adacomed.train.config import (
    ConfigError,
    TrainConfig,
    apply_mapping,
    apply_overrides,
    load_config_file,
)
from adacomed.train.cotrain import evaluate, load_model
from adacomed.train.data import DataError, load_task_data
from adacomed.train.loop import setup, train_run
from adacomed.train.runtime import parse_pos_weight
from adacomed.train.small_model import SmallModel
from adacomed.train.small_training import METADATA_KEY, train_small_stage
from adacomed.train.weighting import WEIGHTINGS


def tiny_config(manifest: Path, cache: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        task="mortality",
        manifest=str(manifest),
        cache=str(cache),
        out=str(out),
        device="cpu",
        epochs=4,
        batch_size=32,
        lr=3e-3,
        small_epochs=6,
        small_lr=3e-3,
        small_batch_size=32,
        small_hidden_dim=32,
        checkpoint_seconds=0,
        preset={"proj_dim": 16},
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


# ------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_weighting_learns_and_writes_outputs(cohort, tmp_path, weighting):
    manifest, cache = cohort
    result = train_run(tiny_config(manifest, cache, tmp_path / "run", weighting=weighting))
    assert result.metrics["test"]["at_0.5"]["auroc"] > 0.7, result.metrics["auroc"]
    run = result.run_dir
    for name in (
        "config.toml",
        "metrics.json",
        "predictions.parquet",
        "history.json",
        "report.md",
        "roc.png",
        "pr.png",
        "weights.png",
        "small_model.safetensors",
        "small_features.safetensors",
        "model.safetensors",
        "checkpoints/small.json",
        "checkpoints/cotrain.json",
    ):
        assert (run / name).exists(), name
    assert not (run / ".lock").exists()
    cotrain = json.loads((run / "checkpoints" / "cotrain.json").read_text())
    assert set(cotrain["files"]) == {"model", "optimizer", "best"}
    named = {(run / "checkpoints" / entry["file"]).name for entry in cotrain["files"].values()}
    small = json.loads((run / "checkpoints" / "small.json").read_text())
    named |= {(run / "checkpoints" / entry["file"]).name for entry in small["files"].values()}
    assert {p.name for p in (run / "checkpoints" / "tensors").iterdir()} == named  # nothing unreferenced is left
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"at_0.5", "at_val_threshold", "at_youden"}
    assert set(metrics["auroc"]["test"]) == {"fused", "large", "small", "small_model_stage_a"}
    predictions = pd.read_parquet(run / "predictions.parquet")
    assert list(predictions.columns[:8]) == [
        "sample_id",
        "split",
        "label",
        "prob_large",
        "prob_small",
        "prob_fused",
        "w_large",
        "w_small",
    ]
    assert len(predictions) == N_SAMPLES - 2  # the two NaN labels are excluded
    p = {c: torch.tensor(predictions[c].to_numpy(), dtype=torch.float64) for c in predictions.columns[3:8]}
    fused = torch.sigmoid(p["w_large"] * torch.logit(p["prob_large"]) + p["w_small"] * torch.logit(p["prob_small"]))
    assert np.allclose(predictions.prob_fused, fused.numpy(), atol=1e-4)  # sigmoid(w_L z_L + w_S z_S) per sample
    assert np.allclose(predictions.w_large + predictions.w_small, 1.0, atol=1e-5)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    if weighting == "large-only":
        assert np.allclose(predictions.w_large, 1.0)
    if weighting == "small-only":
        assert np.allclose(predictions.prob_fused, predictions.prob_small, atol=1e-6)


def test_same_seed_same_predictions_and_val_carve(tmp_path):
    manifest, cache = build_cohort(tmp_path / "data", with_val=False)
    first = train_run(tiny_config(manifest, cache, tmp_path / "a", epochs=2, small_epochs=2))
    second = train_run(tiny_config(manifest, cache, tmp_path / "b", epochs=2, small_epochs=2))
    pd.testing.assert_frame_equal(first.predictions, second.predictions)
    counts = first.predictions.split.value_counts()
    assert counts["val"] == pytest.approx(0.15 * (100 + 20 - 1), abs=3)  # carved from train (one NaN label there)
    other = train_run(tiny_config(manifest, cache, tmp_path / "c", epochs=2, small_epochs=2, seed=1))
    assert not np.allclose(other.predictions.prob_fused, first.predictions.prob_fused)
    # --small-checkpoint: stage (a) is skipped and the given small model is used as is (same carve: seed 1).
    given = str(other.run_dir / "small_model.safetensors")
    reused = train_run(tiny_config(manifest, cache, tmp_path / "d", epochs=1, seed=1, lr=1e-3, small_checkpoint=given))
    assert (
        reused.metrics["auroc"]["test"]["small_model_stage_a"] == other.metrics["auroc"]["test"]["small_model_stage_a"]
    )
    # Another seed carves another validation set, some of it in the given model's train samples: refused.
    with pytest.raises(ValueError, match=r"trained on \d+ samples of this run's val split"):
        train_run(tiny_config(manifest, cache, tmp_path / "e", epochs=1, seed=3, small_checkpoint=given))
    saved = json.loads((other.run_dir / "small_model.json").read_text())
    assert saved["task"] == "mortality" and saved["train_ids"] == sorted(
        other.predictions.sample_id[other.predictions.split == "train"]
    )
    relabelled = tmp_path / "relabelled"
    relabelled.mkdir()
    tensors = load_file(str(other.run_dir / "small_model.safetensors"))
    metadata = {METADATA_KEY: json.dumps({**saved, "task": "longstay"})}
    (relabelled / "small_model.safetensors").write_bytes(encode_tensors(tensors, metadata))
    with pytest.raises(ValueError, match="trained for task 'longstay'"):
        train_run(
            tiny_config(
                manifest, cache, tmp_path / "f", seed=1, small_checkpoint=str(relabelled / "small_model.safetensors")
            )
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_run(tiny_config(manifest, cache, tmp_path / "g", small_checkpoint=str(tmp_path / "none.safetensors")))


def test_pos_weight_parsing():
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert parse_pos_weight("auto", labels) == 3.0
    assert parse_pos_weight("none", labels) is None
    assert parse_pos_weight("2.5", labels) == 2.5
    for bad in ("-1", "lots"):
        with pytest.raises(ValueError, match="pos_weight"):
            parse_pos_weight(bad, labels)


# --------------------------------------------------------------------------------------------------- resume
class Interrupt(Exception):
    pass


def _stop_after(epoch: int):
    def hook(current: int, record: dict) -> None:
        if current == epoch:
            raise Interrupt

    return hook


def test_resume_continues_exactly_and_refuses_changes(cohort, tmp_path):
    manifest, cache = cohort
    full = train_run(tiny_config(manifest, cache, tmp_path / "full"))
    config = tiny_config(manifest, cache, tmp_path / "broken")
    with pytest.raises(Interrupt):
        train_run(config, on_epoch_end=_stop_after(2))
    with pytest.raises(ResumeError, match="already holds a run"):
        train_run(config)
    resumed = train_run(dataclasses.replace(config, resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(full.predictions, resumed.predictions)
    with pytest.raises(ResumeError, match="weighting"):
        train_run(dataclasses.replace(config, resume=True, weighting="gaussian"))
    for change, field in (
        ({"batch_size": 16}, "batch_size"),
        ({"lr": 1e-3}, "lr"),
        ({"pos_weight": "auto"}, "pos_weight"),
    ):
        with pytest.raises(ResumeError, match=f"optimisation field '{field}' changes the optimisation"):
            train_run(dataclasses.replace(config, resume=True, **change))
    # A cache rebuilt with another encoder version has another key: resuming on it is refused.
    moved = tmp_path / "cache2"
    shutil.copytree(cache, moved)
    shutil.rmtree(moved / "notes")
    rows = dict(zip(Manifest.read(manifest).sample_ids, np.ones((N_SAMPLES, 32), dtype=np.float32)))
    write_cache(moved, Manifest.read(manifest), "notes", rows, encoder_version="2")
    with pytest.raises(ResumeError, match="cache of 'notes'"):
        train_run(dataclasses.replace(config, resume=True, cache=str(moved), epochs=6))
    # --resume with nothing to resume starts afresh (a requeued job always runs one command) and says so.
    console = Console(record=True, width=200)
    fresh = train_run(tiny_config(manifest, cache, tmp_path / "never", resume=True), console=console)
    assert "holds no checkpoint yet; starting afresh" in console.export_text()
    pd.testing.assert_frame_equal(full.predictions, fresh.predictions)


# ------------------------------------------------------------------------------------- errors before training
def _assert_not_started(out: Path) -> None:
    assert not (out / "config.toml").exists() and not (out / "checkpoints").exists()


def test_missing_modality_cache_lists_existing(cohort, tmp_path):
    manifest, cache = cohort
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"'clinical' has no complete cache.*notes/synthetic"):
        train_run(tiny_config(manifest, cache, out, modalities=("clinical",)))
    with pytest.raises(DataError, match="not declared"):
        train_run(tiny_config(manifest, cache, out, modalities=("wsi",)))
    _assert_not_started(out)


def test_cache_from_another_manifest_is_refused(cohort, tmp_path):
    manifest, cache = cohort
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    shutil.rmtree(other / "xray")
    rows = {f"s{i:03d}": np.zeros(LARGE_DIMS["xray"], np.float32) for i in range(N_SAMPLES - 3)}
    write_cache(other, Manifest.read(manifest), "xray", rows, input_hash="0" * 32)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"(?s)'xray'.*another manifest.*input_hash.*only in the manifest"):
        train_run(tiny_config(manifest, other, out))
    _assert_not_started(out)


def test_missing_task_label_is_refused(cohort, tmp_path):
    manifest, cache = cohort
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"task 'longstay' has no label.*label_mortality"):
        train_run(tiny_config(manifest, cache, out, task="longstay"))
    _assert_not_started(out)


def test_nan_embedding_names_modality_and_sample(tmp_path):
    manifest, cache = build_cohort(tmp_path / "data", nan_sample="s042")
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"modality 'notes'.*sample 's042'.*NaN"):
        train_run(tiny_config(manifest, cache, out))
    _assert_not_started(out)


# ------------------------------------------------------------------------------------------ config and CLI
def test_overrides_are_typed_and_checked(tmp_path):
    config = apply_overrides(
        TrainConfig(),
        ["epochs=7", "lr=0.01", "amp=false", "modalities=xray,notes", "preset.contrastive_weight=0.3", "proj_dim=64"],
    )
    assert (config.epochs, config.lr, config.amp, config.modalities) == (7, 0.01, False, ("xray", "notes"))
    assert config.preset == {"contrastive_weight": 0.3, "proj_dim": 64}
    assert isinstance(config.preset["proj_dim"], int)
    for bad, message in (
        ("epochs=many", "not a valid int"),
        ("colour=red", "unknown config field"),
        ("preset.nonsense=1", "unknown preset field"),
        ("epochs", "key=value"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(TrainConfig(), [bad])
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('weighting = "gaussian"\nbatch_size = 16\n[preset]\ngaussian_sigma = 0.5\n')
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("weighting: threshold\nsmall_epochs: 3\npreset:\n  threshold: 0.4\n")
    from_toml = apply_mapping(TrainConfig(), load_config_file(toml_file))
    assert (from_toml.weighting, from_toml.batch_size, from_toml.preset) == ("gaussian", 16, {"gaussian_sigma": 0.5})
    from_yaml = apply_mapping(TrainConfig(), load_config_file(yaml_file))
    assert (from_yaml.weighting, from_yaml.small_epochs, from_yaml.preset) == ("threshold", 3, {"threshold": 0.4})


def test_cli_help_and_print_config(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--task", "--weighting", "--set", "--print-config", "--resume", "--pos-weight", "--modalities"):
        assert option in result.output
    config_file = tmp_path / "c.toml"
    config_file.write_text('epochs = 9\nweighting = "learnable"\n')
    result = runner.invoke(
        app,
        [
            "--task",
            "vital12",
            "--config",
            str(config_file),
            "--set",
            "batch_size=8",
            "--set",
            "preset.contrastive_weight=0.25",
            "--lr",
            "0.002",
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = tomllib.loads(result.output)
    assert (printed["epochs"], printed["weighting"], printed["batch_size"], printed["lr"]) == (9, "learnable", 8, 0.002)
    assert printed["preset"]["contrastive_weight"] == 0.25
    assert printed["preset"]["proj_dim"] == 128  # vital12's Table 2 value, not overridden
    result = runner.invoke(app, ["--set", "epochs=lots", "--print-config"])
    assert result.exit_code == 2 and "not a valid int" in result.output


def test_cli_reports_data_errors(cohort, tmp_path):
    manifest, cache = cohort
    result = CliRunner().invoke(
        app,
        [
            "--task",
            "readmission",
            "--manifest",
            str(manifest),
            "--cache",
            str(cache),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert "task 'readmission' has no label" in result.output
    out = tmp_path / "ok"
    result = CliRunner().invoke(
        app,
        [
            "--task",
            "mortality",
            "--manifest",
            str(manifest),
            "--cache",
            str(cache),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--small-epochs",
            "2",
            "--modalities",
            "xray,ct_features",
            "--pos-weight",
            "auto",
            "--set",
            "small_hidden_dim=32",
            "--set",
            "proj_dim=16",
        ],
    )
    assert result.exit_code == 0, result.output
    written = tomllib.loads((out / "config.toml").read_text())
    assert written["modalities"] == ["xray", "ct_features"] and written["pos_weight"] == "auto"
    assert written["preset"]["proj_dim"] == 16 and written["preset"]["contrastive_weight"] == 0.59  # Table 2
    assert json.loads((out / "checkpoints" / "cotrain.json").read_text())["cache_keys"].keys() == {
        "xray",
        "ct_features",
    }


# ---------------------------------------------------------------------------------------- splits and leakage
def test_val_carve_keeps_subjects_whole_and_resume_refuses_another_carve(tmp_path):
    manifest_path, cache = build_cohort(tmp_path / "data", with_val=False)
    manifest = Manifest.read(manifest_path)
    table = manifest.table.copy()
    table["subject_id"] = [f"p{i // 3:03d}" for i in range(N_SAMPLES)]  # three admissions per subject
    table.loc[table.split == "test", "subject_id"] = [f"t{i // 3:03d}" for i in range((table.split == "test").sum())]
    Manifest(table, manifest.info).write(manifest_path)
    data = load_task_data(Manifest.read(manifest_path), cache, "mortality", val_fraction=0.2, seed=0)
    subject_of = dict(zip(table.sample_id, table.subject_id))
    frame = pd.DataFrame({"subject": [subject_of[s] for s in data.sample_ids], "split": data.splits})
    assert frame.groupby("subject")["split"].nunique().max() == 1  # no patient in both train and val
    assert (frame.split == "val").sum() == pytest.approx(0.2 * (frame.split != "test").sum(), abs=4)
    labels = data.labels.numpy()
    assert set(labels[data.splits == "val"]) == {0.0, 1.0}  # stratified on the subject's label
    again = load_task_data(Manifest.read(manifest_path), cache, "mortality", val_fraction=0.2, seed=0)
    assert list(again.splits) == list(data.splits)
    moved = load_task_data(Manifest.read(manifest_path), cache, "mortality", val_fraction=0.2, seed=5)
    assert list(moved.splits) != list(data.splits)

    # Small-input statistics are fitted after the carve: on the manifest's train rows minus the carved ones.
    fitted_means = [
        json.loads(path.read_text())["preprocessing"]["numerical"]["age"][0]
        for path in (cache / "small.tabular").rglob("fingerprint.json")
    ]
    carved = {data.sample_ids[i] for i in np.flatnonzero(data.splits == "val")}
    fit_rows = table[(table.split == "train") & ~table.sample_id.isin(carved)]
    assert len(fitted_means) == 2  # seeds 0 and 5 carve differently: two fits, two caches
    assert any(mean == pytest.approx(fit_rows.age.mean()) for mean in fitted_means)
    assert not any(mean == pytest.approx(table.age[table.split == "train"].mean()) for mean in fitted_means)

    config = tiny_config(manifest_path, cache, tmp_path / "run", epochs=2, small_epochs=1, val_fraction=0.2)
    with pytest.raises(Interrupt):
        train_run(config, on_epoch_end=_stop_after(1))
    with pytest.raises(ResumeError, match=r"(?s)optimisation field 'seed'.*train/val/test assignment differs"):
        train_run(dataclasses.replace(config, resume=True, seed=5))
    with pytest.raises(ResumeError, match="train/val/test assignment differs"):
        train_run(dataclasses.replace(config, resume=True, val_fraction=0.3))


def test_subject_spanning_manifest_splits_is_refused(tmp_path):
    manifest_path, cache = build_cohort(tmp_path / "data")
    manifest = Manifest.read(manifest_path)
    table = manifest.table.copy()
    table.loc[table.sample_id.isin(["s010", "s125"]), "subject_id"] = "p-shared"  # one patient in train and test
    Manifest(table, manifest.info).write(manifest_path)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"subject 'p-shared' has samples in splits \['test', 'train'\]"):
        train_run(tiny_config(manifest_path, cache, out))
    _assert_not_started(out)


def test_small_model_validation_scores_the_val_split_only(cohort, monkeypatch, tmp_path):
    manifest, cache = cohort
    data = load_task_data(Manifest.read(manifest), cache, "mortality")
    scored = []
    original = SmallModel.features

    def spy(self, batch):
        if not self.training:
            scored.append(len(next(iter(batch.values()))))
        return original(self, batch)

    monkeypatch.setattr(SmallModel, "features", spy)
    config = tiny_config(manifest, cache, tmp_path / "run", small_epochs=2, small_patience=5)
    run = setup(config, Console(quiet=True))
    train_small_stage(run)
    assert sum(scored) == 2 * len(data.index["val"])  # two epochs, each scoring the val samples only


# ----------------------------------------------------------------------------------------- deployed weights
def test_fused_prediction_does_not_depend_on_the_other_patients(cohort, tmp_path):
    manifest, cache = cohort
    result = train_run(tiny_config(manifest, cache, tmp_path / "run", epochs=2, small_epochs=2))
    predictions = result.predictions
    model, saved = load_model(result.run_dir / "model.safetensors")
    deployed = saved["deployed_weights"]
    assert deployed["w_large"] == pytest.approx(result.history[result.best_epoch - 1]["w_large"])
    for split in ("train", "val", "test"):  # one pair of weights for every split (and any new patient)
        rows = predictions[predictions.split == split]
        assert np.allclose(rows.w_large, deployed["w_large"]) and np.allclose(rows.w_small, deployed["w_small"])
    assert result.metrics["deployed_weights"]["w_large"] == pytest.approx(deployed["w_large"])

    data = load_task_data(Manifest.read(manifest), cache, "mortality")
    config = tiny_config(manifest, cache, tmp_path / "run")
    small_feat = load_file(str(result.run_dir / "small_features.safetensors"))["features"]
    weights = (deployed["w_large"], deployed["w_small"])
    test_idx = data.index["test"]
    together = evaluate(model, data, test_idx, small_feat, config, None, False, weights)["prob_fused"]
    for position in (0, 7):
        alone = evaluate(model, data, test_idx[position : position + 1], small_feat, config, None, False, weights)
        torch.testing.assert_close(alone["prob_fused"][0], together[position], rtol=1e-6, atol=1e-7)
    stored = predictions[predictions.split == "test"].prob_fused.to_numpy()
    np.testing.assert_allclose(together.numpy(), stored, rtol=1e-5, atol=1e-6)


def test_threshold_above_one_warns_and_bad_mome_heads_fail_before_training(cohort, tmp_path):
    manifest, cache = cohort
    out = tmp_path / "run"
    config = tiny_config(manifest, cache, out, weighting="threshold", mome_heads=3, preset={"threshold": 2.5})
    with pytest.warns(UserWarning, match="small-only in effect"):
        with pytest.raises(ValueError, match=r"mome_heads=3 .* 32 // 3 = 10"):
            train_run(config)
    _assert_not_started(out)
