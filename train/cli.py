"""``adacomed-train``: stage two from the command line (console script ``adacomed.train.cli:app``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console

from ..cache_schema import CacheError
from .config import ConfigError, TrainConfig, apply_mapping, apply_overrides, load_config_file, to_toml

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Train AdaCoMed's light collaborative model for one diagnosis task, reading only the embedding cache "
        "made by adacomed-extract plus the small model's inputs. First a small task model is trained on the "
        "small inputs (X-ray pixels, note tokens, vital-sign grids, clinical fields); then it is frozen and "
        "combined with the large models' cached embeddings. Results (metrics, per-patient predictions, plots, "
        "report.md, checkpoints) go to the --out folder."
    ),
)


@app.command()
def train(
    task: str | None = typer.Option(
        None, help="Task to predict: mortality, longstay, readmission, vital12, or any task declared in the manifest."
    ),
    manifest: Path | None = typer.Option(None, help="The cohort's manifest (.parquet) from adacomed-data."),
    cache: Path | None = typer.Option(None, help="Cache folder written by adacomed-extract."),
    out: Path | None = typer.Option(None, help="Run folder for all outputs (created if needed)."),
    weighting: str | None = typer.Option(
        None,
        help="How the large-model and small-model predictions are combined: inverse (default), gaussian, "
        "threshold (adaptive, from how much the two agree), learnable, or the fixed ablations ensemble, "
        "small-only, large-only.",
    ),
    modalities: str | None = typer.Option(
        None,
        help="Comma list of large-model embeddings to use (e.g. xray,notes; name/encoder picks one of "
        "several). Default: every cached modality the manifest declares.",
    ),
    seed: int | None = typer.Option(None, help="Random seed (runs with the same seed on a CPU are identical)."),
    epochs: int | None = typer.Option(None, help="Co-training epochs (default 100)."),
    batch_size: int | None = typer.Option(None, help="Samples per step (default 128)."),
    lr: float | None = typer.Option(None, help="Adam learning rate of co-training (default 1e-4, cosine decay)."),
    device: str | None = typer.Option(None, help="auto (GPU if present), cpu, cuda or cuda:N."),
    small_epochs: int | None = typer.Option(
        None, help="Maximum epochs of the small model (early stopping on validation loss; default 200)."
    ),
    small_checkpoint: Path | None = typer.Option(
        None, help="Use a small model trained elsewhere (.safetensors with its .json config) instead of training one."
    ),
    pos_weight: str | None = typer.Option(
        None,
        help="Up-weight positive cases for rare outcomes: none (default, as the paper), auto "
        "(negatives/positives in train), or a number. Beyond the paper.",
    ),
    tokenizer: str | None = typer.Option(None, help="Tokenizer folder for clinical-note inputs."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last checkpoint (small model or co-training); with nothing to "
        "continue it starts afresh and says so, so a preempted, requeued job can always rerun the same command.",
    ),
    config: Path | None = typer.Option(None, help="Settings file (.toml or .yaml) with any config field."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config field: --set small_hidden_dim=64, --set preset.contrastive_weight=0.3 (repeatable).",
    ),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
) -> None:
    """Train the collaborative model for one task and write metrics, predictions and a report."""
    console = Console()
    try:
        resolved = TrainConfig()
        if config is not None:
            resolved = apply_mapping(resolved, load_config_file(config))
        resolved = apply_overrides(resolved, set_)
        flags = {
            "task": task,
            "manifest": manifest,
            "cache": cache,
            "out": out,
            "weighting": weighting,
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "device": device,
            "small_epochs": small_epochs,
            "small_checkpoint": small_checkpoint,
            "pos_weight": pos_weight,
            "tokenizer": tokenizer,
            "modalities": modalities,
        }
        given = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
        if resume:
            given["resume"] = True
        resolved = apply_mapping(resolved, given)
        if print_config:
            typer.echo(to_toml(resolved))
            raise typer.Exit(0)
        missing = [f"--{name}" for name in ("task", "manifest", "cache", "out") if not getattr(resolved, name)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (give them as flags or in --config)")
    except ConfigError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None

    from .checkpoint import ResumeError
    from .data import DataError
    from .loop import train_run
    from .run_lock import RunLockedError

    try:
        train_run(resolved, console=console)
    except (DataError, ResumeError, RunLockedError, CacheError, ValueError, FileNotFoundError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


def config_fields() -> list[str]:
    """Names accepted by --set and config files (documentation helper)."""
    return [f.name for f in dataclasses.fields(TrainConfig)]
