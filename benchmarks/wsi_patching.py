"""CLAM-compatible segmentation + patching of a synthetic 16k x 16k slide: AdaCoMed vs CLAM itself, same slide.

CLAM's side runs CLAM's unmodified ``create_patches_fp.py --seg --patch`` from its own checkout and environment
(CLAM is GPL-3.0 and never part of this repository), in the same command, and its own printed per-slide
segmentation and patching times are used (they exclude its start-up). AdaCoMed's side times the same two steps
in process: :func:`segment_tissue` (reads the segmentation level) and :func:`patch_coords` plus writing
``patches/<slide>.h5``. Both produce the same coordinates (checked here too). Target: AdaCoMed's time at most
CLAM's. Without a CLAM checkout, CLAM's side is skipped with a message.

    python benchmarks/wsi_patching.py --clam ~/ext/clam --clam-python ~/ext/clam-venv/bin/python [--repeats 3]
    (or set CLAM_DIR and CLAM_PYTHON)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adacomed.cache_schema.clam_h5 import read_patch_coords, write_patch_coords
from adacomed.extract.wsi.patching import patch_coords
from adacomed.extract.wsi.presets import BUILTIN
from adacomed.extract.wsi.segmentation import segment_tissue
from adacomed.extract.wsi.slide import Slide

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import wsi_synthetic as synthetic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "wsi_patching.json"
PRESETS = ("default", "tcga", "bwh_biopsy")


def ours(slide_path: Path, preset: str, out: Path) -> tuple[float, float, np.ndarray]:
    chosen = BUILTIN[preset]
    with Slide(slide_path) as slide:
        start = time.perf_counter()
        tissue = segment_tissue(slide, chosen.segmentation)
        segmented = time.perf_counter()
        grid = patch_coords(slide, tissue, chosen.patch_params())
        write_patch_coords(out / "patches" / f"{slide.slide_id}.h5", grid.coords, grid.clam_attrs)
        patched = time.perf_counter()
    return segmented - start, patched - segmented, grid.coords


def preset_csv(preset: str, folder: Path) -> Path | None:
    if preset == "default":
        return None
    chosen = BUILTIN[preset]
    seg = chosen.segmentation
    header = "seg_level,sthresh,mthresh,close,use_otsu,a_t,a_h,max_n_holes,vis_level,line_thickness,"
    header += "white_thresh,black_thresh,use_padding,contour_fn,keep_ids,exclude_ids"
    row = [seg.seg_level, seg.sthresh, seg.mthresh, seg.close, str(seg.use_otsu).upper(), int(seg.a_t), int(seg.a_h)]
    row += [seg.max_n_holes, -1, 100, 5, 50, str(chosen.use_padding).upper(), chosen.contour_fn, "none", "none"]
    path = folder / f"{preset}.csv"
    path.write_text(header + "\n" + ",".join(str(v) for v in row) + "\n")
    return path


def clam(clam_dir: Path, clam_python: Path, slide_path: Path, preset: str, work: Path) -> tuple[float, float, Path]:
    source = work / "source"
    source.mkdir(parents=True, exist_ok=True)
    link = source / slide_path.name
    if not link.exists():
        os.symlink(slide_path, link)
    out = work / "out"
    cmd = [str(clam_python), "create_patches_fp.py", "--source", str(source), "--save_dir", str(out)]
    cmd += ["--seg", "--patch", "--no_auto_skip", "--patch_size", "256", "--step_size", "256"]
    csv = preset_csv(preset, work)
    if csv is not None:
        cmd += ["--preset", str(csv)]
    proc = subprocess.run(cmd, cwd=clam_dir, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"CLAM failed:\n{proc.stderr[-3000:]}")
    seg = re.search(r"segmentation took ([0-9.eE+-]+) seconds", proc.stdout)
    patch = re.search(r"patching took ([0-9.eE+-]+) seconds", proc.stdout)
    if not (seg and patch):
        raise SystemExit(f"CLAM printed no timings:\n{proc.stdout[-2000:]}")
    return float(seg.group(1)), float(patch.group(1)), out / "patches" / f"{slide_path.stem}.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clam", type=Path, default=os.environ.get("CLAM_DIR"))
    parser.add_argument("--clam-python", type=Path, default=os.environ.get("CLAM_PYTHON"))
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-slide", type=Path, default=None, help="reuse / keep the slide at this path")
    args = parser.parse_args()
    have_clam = bool(args.clam and args.clam_python and (Path(args.clam) / "create_patches_fp.py").is_file())
    if not have_clam:
        print("CLAM side skipped: no CLAM checkout given (--clam DIR --clam-python PATH, or CLAM_DIR / CLAM_PYTHON)")
    results: dict = {"slide": f"synthetic {args.size}x{args.size}, 3 levels (1/4/16), zlib tiles", "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        slide_path = args.keep_slide or tmp_path / "bench16k.tiff"
        if not slide_path.exists():
            synthetic.write_slide(synthetic.multi_contour_recipe(args.size), slide_path)
        for preset in PRESETS:
            row: dict = {"ours_seconds": [], "clam_seconds": []}
            for repeat in range(args.repeats):
                seg, patch, coords = ours(slide_path, preset, tmp_path / f"ours-{preset}-{repeat}")
                row["ours_seconds"].append(seg + patch)
                if have_clam:
                    c_seg, c_patch, h5 = clam(
                        args.clam, args.clam_python, slide_path, preset, tmp_path / f"clam-{preset}"
                    )
                    row["clam_seconds"].append(c_seg + c_patch)
                    clam_coords, _ = read_patch_coords(h5)
                    row["same_coordinates"] = bool(np.array_equal(clam_coords, coords))
            row["patches"] = int(len(coords))
            row["ours_median_s"] = statistics.median(row["ours_seconds"])
            if have_clam:
                row["clam_median_s"] = statistics.median(row["clam_seconds"])
                row["ratio_ours_over_clam"] = row["ours_median_s"] / row["clam_median_s"]
            results["presets"][preset] = row
            line = f"{preset:12s} {row['patches']:5d} patches  ours {row['ours_median_s']:.3f} s"
            if have_clam:
                line += f"  CLAM {row['clam_median_s']:.3f} s  ratio {row['ratio_ours_over_clam']:.2f}"
                line += f"  same coords: {row['same_coordinates']}"
            print(line, flush=True)
    results["machine"] = f"{os.cpu_count()} cores, shared with other jobs (timings noisy; medians of {args.repeats})"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
