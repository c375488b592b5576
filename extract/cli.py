"""`adacomed-extract`: run one frozen large model over one modality of a manifest into the cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..cache_schema import CacheError
from ..cache_schema.cli import wide_console
from ..cache_schema.store import DEFAULT_ROWS_PER_SHARD
from .encoders import default_modalities, get_spec, list_encoders
from .errors import ExtractError, SampleFailed
from .progress import sample_progress
from .runner import ExtractConfig, RunSummary, plan_job, run_local, slurm_array_split

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = wide_console(stderr=True)


def _parse_options(pairs: list[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                try:
                    options[key] = float(value)
                except ValueError:
                    options[key] = value
    return options


def _print_encoders() -> None:
    table = Table(title="Registered encoders")
    table.add_column("name", no_wrap=True)
    table.add_column("modality", no_wrap=True)
    for column in ("reads", "dim", "pooling", "bags", "default weights", "description"):
        table.add_column(column, overflow="fold")
    for name in list_encoders():
        spec = get_spec(name)
        table.add_row(
            name,
            spec.modality,
            spec.reader,
            str(spec.embed_dim) if spec.embed_dim else "from weights/data",
            spec.pooling,
            ", ".join(spec.bags) or "-",
            spec.default_weights or "(local only)",
            spec.description,
        )
    wide_console().print(table)


def _print_summary(summary: RunSummary) -> None:
    table = Table(title="Extraction summary", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    computed = [r for r in summary.results if not r.skipped]
    table.add_row("cache", str(summary.cache_path))
    table.add_row("cache key", summary.cache_key)
    table.add_row(
        "shards",
        f"{len(computed)} computed, {len(summary.results) - len(computed)} already committed, "
        f"{summary.planned_shards} planned",
    )
    table.add_row("rows written", str(summary.rows_written))
    table.add_row("samples failed", str(summary.errors))
    rate = summary.rows_written / summary.seconds if summary.seconds else 0.0
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:,.1f} samples/s)")
    table.add_row(
        "status",
        "complete (index.json written)"
        if summary.finalized
        else "this run's shards are done; other shards are still pending",
    )
    console.print(table)


@app.command()
def extract(
    manifest: Path = typer.Option(None, "--manifest", "-m", help="Cohort manifest (Parquet) from adacomed-data."),
    modality: str = typer.Option(
        None,
        "--modality",
        help="Manifest modality to embed. With a default encoder: "
        + ", ".join(f"{m} ({e})" for m, e in default_modalities().items())
        + "; any other manifest modality with --encoder.",
    ),
    cache: Path = typer.Option(None, "--cache", "-c", help="Cache root folder (created if absent)."),
    encoder: str = typer.Option(None, "--encoder", "-e", help="Registered encoder; default: the modality's."),
    weights: str = typer.Option(
        None,
        "--weights",
        "-w",
        help="Local weights folder/file, a hub id found in the local HF cache, or 'tiny-random' (tests, demo).",
    ),
    option: list[str] = typer.Option([], "--option", "-o", help="Encoder option key=value (repeatable)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Samples per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, float16, bfloat16."),
    num_workers: int = typer.Option(2, "--num-workers", help="Decode threads reading raw files ahead of the model."),
    on_error: str = typer.Option("skip", "--on-error", help="skip: record bad samples and go on; fail: stop."),
    storage_dtype: str = typer.Option("float16", "--storage-dtype", help="float16 (default) or float32 on disk."),
    shard_format: str = typer.Option("h5", "--format", help="Shard format: h5 (default) or parquet."),
    rows_per_shard: int = typer.Option(
        None,
        "--rows-per-shard",
        help=f"Samples per shard file (fixed by the first run); default: the encoder's, else {DEFAULT_ROWS_PER_SHARD}.",
    ),
    num_shards: int = typer.Option(
        None, "--num-shards", help="Split the work into N parts; default: the SLURM array's task count, or 1."
    ),
    shard_index: int = typer.Option(
        None, "--shard-index", help="Which part this process runs; default: from $SLURM_ARRAY_TASK_ID, or 0."
    ),
    input_hash: str = typer.Option(
        "stat", "--input-hash", help="Key the cache on input files' size+mtime (stat) or their bytes (content)."
    ),
    executor: str = typer.Option("local", "--executor", help="local (this process) or dask."),
    scheduler_address: str = typer.Option(None, "--scheduler-address", help="Existing dask scheduler (tcp://...)."),
    dask_workers: int = typer.Option(2, "--dask-workers", help="Worker processes of the dask LocalCluster."),
    list_encoders_flag: bool = typer.Option(False, "--list-encoders", help="List registered encoders and exit."),
    preset: str = typer.Option(
        None,
        "--preset",
        help="Slides: CLAM segmentation preset, a name (default, tcga, bwh_biopsy, bwh_resection) or a CLAM preset "
        "CSV; single fields with --option, e.g. -o a_t=1 -o sthresh=15.",
    ),
    magnification: float = typer.Option(
        None,
        "--magnification",
        help="Slides: patch at this magnification (e.g. 20: 256 px at 20x, read from the best level and resized) "
        "instead of CLAM's level-0 grid. Needs the slide's MPP or objective power (or -o mpp=0.25).",
    ),
    patch_only: Path = typer.Option(
        None,
        "--patch-only",
        help="Slides: only segment and patch; write CLAM's patches/<slide_id>.h5 and slides.csv under this folder "
        "(no model, no cache).",
    ),
) -> None:
    """Embed one modality of a cohort with a frozen large model; resumable, sharded, crash-safe.

    Whole-slide images (--modality wsi, encoder uni): CLAM-compatible tissue segmentation and 256 px level-0
    patches by default, a bag of patch features (N x 1024) with level-0 coordinates per slide, and their mean as
    the slide vector. An unreadable slide, an empty segmentation or a corrupt tile is recorded per slide.
    """
    if list_encoders_flag:
        _print_encoders()
        raise typer.Exit(0)
    options = _parse_options(option)
    if preset is not None:
        options["preset"] = preset
    if magnification is not None:
        options["magnification"] = magnification
    if patch_only is not None:
        from .wsi.patch_only import run_patch_only

        if manifest is None or modality is None:
            console.print("[red]error:[/red] --patch-only needs --manifest and --modality (see --help)")
            raise typer.Exit(2)
        raise typer.Exit(run_patch_only(manifest, modality, patch_only, options, max(1, num_workers), console))
    missing = [
        name
        for name, value in (("--manifest", manifest), ("--modality", modality), ("--cache", cache))
        if value is None
    ]
    if missing:
        console.print(f"[red]error:[/red] missing {', '.join(missing)} (see --help)")
        raise typer.Exit(2)
    if executor not in ("local", "dask"):
        console.print(f"[red]error:[/red] --executor {executor!r} is not one of local, dask")
        raise typer.Exit(2)
    array = slurm_array_split()
    try:
        config = ExtractConfig(
            manifest=manifest,
            modality=modality,
            cache=cache,
            encoder=encoder,
            weights=weights,
            encoder_options=options,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            num_workers=num_workers,
            on_error=on_error,
            storage_dtype=storage_dtype,
            shard_format=shard_format,
            rows_per_shard=rows_per_shard,
            num_shards=num_shards if num_shards is not None else (array or (1, 0))[0],
            shard_index=shard_index if shard_index is not None else (array or (1, 0))[1],
            input_hash_mode=input_hash,
        )
        job = plan_job(config)
        console.print(
            f"[bold]{config.encoder_name}[/bold] on [bold]{modality}[/bold]: {len(job.sorted_ids)} samples, "
            f"{job.plan.n_shards} shard(s), cache {job.cache.path}"
        )
        with sample_progress(console) as progress:
            if executor == "dask" or scheduler_address:
                from .dask_executor import run_dask

                summary = run_dask(job, scheduler_address, dask_workers, progress)
            else:
                summary = run_local(job, progress)
    except SampleFailed as exc:
        console.print(
            f"[red]stopped:[/red] {exc}. Shards committed before it are kept; rerun with --on-error skip "
            "to record such samples and go on."
        )
        raise typer.Exit(1) from None
    except (ExtractError, CacheError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_summary(summary)


def main() -> None:
    app()
