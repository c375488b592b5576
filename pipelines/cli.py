"""`adacomed-data`: build cohort manifests (demo, MMIST ccRCC, MIMIC-IV-MM, or your own table)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..cache_schema import CacheError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _build(builder: Callable[..., Path], *args: Any, **kwargs: Any) -> None:
    """Run a cohort builder; a bad input is a one-line error naming it, not a traceback."""
    try:
        manifest = builder(*args, **kwargs)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"[green]manifest written:[/green] {manifest}")


@app.command()
def demo(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the synthetic cohort (created)."),
    subjects: int = typer.Option(120, "--subjects", "-n", help="Number of synthetic subjects."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
) -> None:
    """A deterministic synthetic cohort with all six modalities and labels for all four tasks."""
    from .datasets.demo import build_demo_cohort

    _build(build_demo_cohort, out, subjects=subjects, seed=seed)


@app.command()
def mmist(
    root: Path = typer.Option(..., "--root", help="The MMIST ccRCC release folder (holding Code/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the manifest."),
    cohort: str = typer.Option("ct", "--cohort", help="ct: patients with CT (the paper's subset); all: all 618."),
    ct_root: Path = typer.Option(None, "--ct-root", help="Raw CT DICOM root (optional; missing files reported)."),
    wsi_root: Path = typer.Option(None, "--wsi-root", help="Raw slide root (optional; missing files reported)."),
    template: Path = typer.Option(None, "--template", help="Replacement clinical prompt template file."),
    small_inputs: str = typer.Option(
        "clinical",
        "--small-inputs",
        help="What the small model reads: clinical (the table's fields; default, measured better) or "
        "clinical+imaging (also the release's CT 512 / WSI 1024 vectors, as supplement 4.2 lists them).",
    ),
) -> None:
    """The MMIST ccRCC release as a manifest (task vital12)."""
    from .datasets.mmist import build_mmist_cohort

    _build(
        build_mmist_cohort,
        root,
        out,
        cohort=cohort,
        ct_root=ct_root,
        wsi_root=wsi_root,
        template=template,
        small_inputs=small_inputs,
    )


@app.command("mimic-iv-mm")
def mimic_iv_mm(
    mimic_iv: Path = typer.Option(..., "--mimic-iv", help="MIMIC-IV folder (holding hosp/ and icu/)."),
    mimic_cxr: Path = typer.Option(..., "--mimic-cxr", help="MIMIC-CXR-JPG folder (metadata CSV and files/)."),
    mimic_note: Path = typer.Option(..., "--mimic-note", help="MIMIC-IV-Note folder (note/ discharge, radiology)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (manifest, time series, summary)."),
    window_hours: float = typer.Option(48.0, "--window-hours", help="Only data charted this long after admission."),
    xray: str = typer.Option("last", "--xray", help="Which X-ray in the window: last or first."),
    chunksize: int = typer.Option(1_000_000, "--chunksize", help="Rows per chunk when streaming large CSVs."),
    variables_dir: Path = typer.Option(None, "--variables-dir", help="Folder of edited variable lists (CSV)."),
    require_all_modalities: bool = typer.Option(
        False, "--require-all-modalities", help="Keep only admissions with X-ray, notes and time series."
    ),
    note_types: str = typer.Option(
        "radiology", "--note-types", help="Comma list of note types read (discharge notes can leak the outcome)."
    ),
    all_admissions: bool = typer.Option(False, "--all-admissions", help="Also admissions without an ICU stay."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subject-level split."),
) -> None:
    """One sample per admission from the credentialed MIMIC-IV, MIMIC-CXR-JPG and MIMIC-IV-Note releases."""
    from .datasets.mimic import build_mimic_iv_mm

    _build(
        build_mimic_iv_mm,
        mimic_iv,
        mimic_cxr,
        mimic_note,
        out,
        window_hours=window_hours,
        xray=xray,
        chunksize=chunksize,
        variables_dir=variables_dir,
        require_all_modalities=require_all_modalities,
        note_types=tuple(t.strip() for t in note_types.split(",") if t.strip()),
        icu_only=not all_admissions,
        seed=seed,
    )


@app.command("from-table")
def from_table(
    table: Path = typer.Option(..., "--table", help="Your cohort as CSV or Parquet, one row per sample."),
    mapping: Path = typer.Option(..., "--mapping", help="YAML/JSON mapping: ids, split, labels, modalities, inputs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the manifest."),
) -> None:
    """Bring your own cohort: a table plus a small mapping file becomes a manifest."""
    from .datasets.from_table import build_from_table

    _build(build_from_table, table, mapping, out)
