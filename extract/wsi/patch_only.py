"""``adacomed-extract --modality wsi --patch-only DIR``: CLAM's coordinate files, no model.

For every slide of the manifest, ``DIR/patches/<slide_id>.h5`` (``coords`` int64 level-0 top-left with CLAM's
attributes, so CLAM's ``extract_features_fp.py`` and TRIDENT's ``--coords_dir`` read it) and one line in
``DIR/slides.csv`` (sample id, slide id, status, patch count, MPP, magnification, reason). Each file also
carries the hash of the parameters that made it (``adacomed_parameters``): a rerun skips a slide only when its
file was made with the same parameters, so changing a preset never silently reuses old coordinates. A bad
slide (unreadable, no tissue) is a line with its reason; the others go on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...cache_schema.atomic import atomic_write_bytes
from ...cache_schema.clam_h5 import read_patch_coords, write_patch_coords
from ...cache_schema.errors import InputError
from .patcher import SlidePatcher
from .slide import slide_id_of

COLUMNS = ("sample_id", "slide_id", "status", "patches", "mpp", "magnification", "reason")


@dataclass
class PatchOnlySummary:
    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)


def parameters_hash(patcher: SlidePatcher) -> str:
    text = json.dumps(patcher.parameters(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _one(patcher: SlidePatcher, digest: str, out_dir: Path, sample_id: str, path: Path) -> dict[str, Any]:
    slide_id = slide_id_of(path)
    target = out_dir / "patches" / f"{slide_id}.h5"
    row: dict[str, Any] = {"sample_id": sample_id, "slide_id": slide_id, "mpp": "", "magnification": "", "reason": ""}
    if target.exists():
        try:
            coords, attrs = read_patch_coords(target)
        except Exception:  # noqa: BLE001 - an unreadable old file is simply redone
            attrs, coords = {}, None
        if attrs.get("adacomed_parameters") == digest and coords is not None:
            return {**row, "status": "already_exist", "patches": len(coords)}
    try:
        patched = patcher.read(path)
    except InputError as exc:
        return {**row, "status": f"failed_{exc.stage}", "patches": 0, "reason": exc.reason}
    except Exception as exc:  # noqa: BLE001 - any reader failure is this slide's, reported by type only
        return {**row, "status": "failed_read", "patches": 0, "reason": f"{type(exc).__name__} while reading"}
    attrs = {**patched.grid.clam_attrs, "save_path": str(out_dir / "patches"), "adacomed_parameters": digest}
    write_patch_coords(target, patched.coords, attrs)
    info = patched.info
    return {
        **row,
        "status": "processed",
        "patches": len(patched.coords),
        "mpp": "" if info.mpp is None else info.mpp,
        "magnification": "" if info.magnification is None else info.magnification,
    }


def write_patch_files(
    items: dict[str, Any],
    patcher: SlidePatcher,
    out_dir: Path,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> PatchOnlySummary:
    """Segment and patch every slide of ``items`` (sample id -> slide path) into CLAM's layout under ``out_dir``."""
    out_dir = Path(out_dir)
    by_slide: dict[str, str] = {}
    for sample_id, pointer in sorted(items.items()):
        slide_id = slide_id_of(Path(pointer))
        if slide_id in by_slide:
            raise ValueError(
                f"samples {by_slide[slide_id]!r} and {sample_id!r} both point to a slide named {slide_id!r}; "
                "CLAM's layout keys files by slide name"
            )
        by_slide[slide_id] = sample_id
    digest = parameters_hash(patcher)
    summary = PatchOnlySummary(out_dir)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_one, patcher, digest, out_dir, sid, Path(items[sid])) for sid in sorted(items)]
        for future in futures:
            summary.rows.append(future.result())
            if on_progress:
                on_progress(1)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(summary.rows)
    atomic_write_bytes(out_dir / "slides.csv", buffer.getvalue().encode())
    atomic_write_bytes(
        out_dir / "parameters.json", (json.dumps(patcher.parameters(), indent=2, sort_keys=True) + "\n").encode()
    )
    return summary


def run_patch_only(
    manifest: Path, modality: str, out_dir: Path, options: dict[str, Any], workers: int, console: Any
) -> int:
    """The CLI's ``--patch-only``: returns the exit code (0 when every slide was handled, 1 when some failed)."""
    from rich.table import Table

    from ...cache_schema import Manifest
    from ...cache_schema.errors import CacheError
    from ..progress import sample_progress

    try:
        items = dict(Manifest.read(manifest).modality_items(modality))
        patcher = SlidePatcher(**options)
    except (CacheError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if not items:
        console.print(f"[red]error:[/red] manifest {manifest} has no rows with modality {modality!r}")
        return 2
    with sample_progress(console) as progress:
        task = progress.add_task(f"{modality} / patches", total=len(items))
        summary = write_patch_files(items, patcher, out_dir, workers, lambda n: progress.advance(task, n))
    table = Table(title="Patch-only summary", show_header=False)
    table.add_row("folder", f"{out_dir}/patches (CLAM's layout), {out_dir}/slides.csv")
    for status in ("processed", "already_exist"):
        table.add_row(status, str(summary.count(status)))
    failed = [r for r in summary.rows if r["status"].startswith("failed")]
    table.add_row("failed", str(len(failed)))
    for row in failed[:10]:
        table.add_row(f"  {row['sample_id']}", f"{row['status']}: {row['reason']}")
    console.print(table)
    return 1 if failed else 0
