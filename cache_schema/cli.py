"""`adacomed-cache`: look at and check caches written by `adacomed-extract` (and the trainer's prepared inputs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .errors import CacheError
from .fingerprint import diff_fingerprints
from .reader import EmbeddingCache, list_caches
from .verify import verify_cache

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def wide_console(stderr: bool = False) -> Console:
    """A console that keeps tables readable when output goes to a pipe or a log (rich would use 80 columns)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 140)


console = wide_console()


def _resolve(path: Path) -> list[Path]:
    """A cache folder itself, or every cache folder under a cache root."""
    if (path / "fingerprint.json").exists():
        return [path]
    found = [c.path for c in list_caches(path)]
    if not found:
        raise typer.BadParameter(f"{path} is neither a cache folder nor a cache root holding any")
    return found


@app.command("ls")
def ls(cache_root: Path = typer.Argument(..., help="Cache root folder.")) -> None:
    """List every (modality, encoder, key) cache under a root with its status."""
    table = Table(title=f"Caches under {cache_root}")
    for column in ("modality", "encoder", "key"):
        table.add_column(column, no_wrap=True)
    for column in ("status", "rows", "shards", "errors"):
        table.add_column(column)
    for c in list_caches(cache_root):
        table.add_row(
            c.modality,
            c.encoder,
            c.key,
            c.status,
            str(c.rows),
            f"{c.n_shards_committed}/{c.n_shards_planned}",
            str(c.n_errors),
        )
    console.print(table)


@app.command()
def info(path: Path = typer.Argument(..., help="A cache folder, or a root (shows every cache under it).")) -> None:
    """Modality, encoder, rows, dim, dtype, fingerprint and per-sample errors of a cache."""
    for folder in _resolve(path):
        try:
            cache = EmbeddingCache(folder, allow_partial=True)
        except CacheError as exc:
            console.print(f"[red]{folder}: {exc}[/red]")
            continue
        status = "complete" if cache.complete else "partial (not finalised)"
        console.rule(f"{cache.modality} / {cache.encoder} / {cache.key}")
        console.print(f"path: {folder}\nstatus: {status}\nrows: {len(cache)}")
        for name in cache.array_names:
            console.print(f"array {name}: per-sample shape {cache.shape(name)}, dtype {cache.dtype(name)}")
        console.print("fingerprint:")
        console.print_json(json.dumps(cache.fingerprint.to_dict()))
        errors = cache.errors()
        console.print(f"errors: {len(errors)}")
        if len(errors):
            table = Table("sample_id", "stage", "reason", "shard")
            for row in errors.head(20).itertuples(index=False):
                table.add_row(*map(str, row))
            console.print(table)


@app.command()
def verify(path: Path = typer.Argument(..., help="A cache folder, or a root (verifies every cache).")) -> None:
    """Re-hash every committed shard against its commit record; exit 1 naming each damaged shard."""
    bad = 0
    for folder in _resolve(path):
        problems = verify_cache(folder)
        for problem in problems:
            console.print(f"[red]{problem}[/red]" if problem.kind == "damaged" else f"[yellow]{problem}[/yellow]")
        damaged = [p for p in problems if p.kind == "damaged"]
        if not damaged:
            console.print(f"[green]ok[/green] {folder}")
        bad += len(damaged)
    if bad:
        raise typer.Exit(1)


@app.command()
def diff(
    a: Path = typer.Argument(..., help="Cache folder A."), b: Path = typer.Argument(..., help="Cache folder B.")
) -> None:
    """Show why two caches are different caches (their fingerprints, field by field)."""
    fa = json.loads((a / "fingerprint.json").read_text())
    fb = json.loads((b / "fingerprint.json").read_text())
    lines = diff_fingerprints(fa, fb)
    console.print("\n".join(lines) if lines else "identical fingerprints")


@app.command("export-clam")
def export_clam(
    path: Path = typer.Argument(..., help="A cache folder whose encoder stores bags (features, coords), e.g. uni."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder that receives h5_files/<sample_id>.h5."),
) -> None:
    """Write each sample's bag as CLAM's h5_files/<sample_id>.h5 (features float32, coords int32), no pickle.

    CLAM and TRIDENT training code read these files (CLAM: its h5 feature loading); re-import them with
    `adacomed-extract --encoder clam-h5` on a manifest pointing at the files.
    """
    from .clam_h5 import write_clam_features

    folders = _resolve(path)
    if len(folders) != 1:
        raise typer.BadParameter(f"{path} holds {len(folders)} caches; pass one cache folder")
    cache = EmbeddingCache(folders[0], allow_partial=True)
    if not {"features", "coords"} <= set(cache.bag_names):
        console.print(f"[red]error:[/red] cache {folders[0]} has no features/coords bags (it has {cache.bag_names})")
        raise typer.Exit(2)
    written = 0
    for sample_id in cache.ids.tolist():
        bag = cache.read_bag(sample_id, ["features", "coords"])
        write_clam_features(out / "h5_files" / f"{sample_id}.h5", np.asarray(bag["features"]), bag["coords"])
        written += 1
    console.print(f"wrote {written} files under {out / 'h5_files'} (features float32 N x {cache.dim}, coords N x 2)")
