"""`adacomed-extract --modality wsi` end to end: bags and slide vectors in the cache, per-slide outcomes, verify,
CLAM export and re-import, patch-only output."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from adacomed.cache_schema import Manifest, ManifestInfo, ModalitySource, TaskSpec, open_cache
from adacomed.cache_schema.clam_h5 import read_clam_features, read_patch_coords
from adacomed.extract.encoders.uni import SLIDE_INFO_FIELDS

sys.path.insert(0, str(Path(__file__).parent))
import wsi_synthetic as synthetic  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def corrupt_tile_at(path: Path, x: int, y: int) -> None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = (y // 256) * (-(-page.shape[1] // 256)) + x // 256
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wsi_cohort")
    slides = root / "slides"
    synthetic.write_slide(synthetic.odd_size_recipe(2000, 1600, seed=3), slides / "a.tiff")
    svs = dataclasses.replace(synthetic.odd_size_recipe(2048, 2048, seed=4), vendor="aperio", magnification=20)
    synthetic.write_slide(svs, slides / "b.svs", compression="jpeg")
    corrupt_tile_at(slides / "b.svs", 650, 820)  # inside the large blob: one patch reads it
    blank = synthetic.SlideRecipe(1500, 1500, shapes=(), salt=0, line=False)
    synthetic.write_slide(blank, slides / "blank.tiff")
    (slides / "junk.svs").write_bytes(b"definitely not a slide" * 64)
    names = ["a.tiff", "b.svs", "blank.tiff", "junk.svs"]
    table = pd.DataFrame(
        {
            "sample_id": ["s_a", "s_b", "s_blank", "s_junk"],
            "subject_id": ["p1", "p2", "p3", "p4"],
            "split": ["train", "train", "val", "test"],
            "label_vital12": [1.0, 0.0, 1.0, 0.0],
            "wsi_path": names,
        }
    )
    info = ManifestInfo(
        cohort="wsi-test",
        modalities={"wsi": ModalitySource("wsi_path", "path", "slides")},
        tasks={"vital12": TaskSpec("label_vital12", "alive")},
    )
    return Manifest(table, info).write(root / "manifest.parquet")


@pytest.fixture(scope="module")
def extracted(cohort: Path) -> tuple[Path, subprocess.CompletedProcess]:
    cache = cohort.parent / "cache"
    proc = run(
        BIN / "adacomed-extract", "--manifest", cohort, "--modality", "wsi", "--weights", "tiny-random",
        "--cache", cache, "--preset", "bwh_biopsy", "-o", "a_t=0.25", "-o", "on_bad_tile=replace",
        "-o", "reader_workers=2", "--batch-size", "16",
    )  # fmt: skip
    return cache, proc


def test_bags_slide_vectors_and_named_outcomes(extracted: tuple[Path, subprocess.CompletedProcess]) -> None:
    cache_root, _ = extracted
    cache = open_cache(cache_root, "wsi")
    assert cache.encoder == "uni" and sorted(cache.ids.tolist()) == ["s_a", "s_b"]
    assert set(cache.bag_names) == {"features", "coords", "tile_replaced", "slide_info"}
    for sample_id in ("s_a", "s_b"):
        bag = cache.read_bag(sample_id)
        features, coords = np.asarray(bag["features"], np.float32), np.asarray(bag["coords"])
        assert features.shape == (len(coords), 32) and coords.dtype == np.int64 and len(coords) > 4
        vector = cache.read([sample_id])[0].astype(np.float32)
        np.testing.assert_allclose(vector, features.mean(0), atol=2e-2)  # float16 storage
    info = dict(zip(SLIDE_INFO_FIELDS, np.asarray(cache.read_bag("s_b")["slide_info"])[0]))
    assert info["mpp"] == pytest.approx(0.5) and info["level0_magnification"] == 20.0  # the SVS's AppMag
    replaced = np.asarray(cache.read_bag("s_b")["tile_replaced"])
    assert replaced.sum() >= 1 and not np.asarray(cache.read_bag("s_a")["tile_replaced"]).any()
    errors = cache.errors().set_index("sample_id")
    assert errors.loc["s_blank", "stage"] == "segment" and "no tissue contour" in errors.loc["s_blank", "reason"]
    assert errors.loc["s_junk", "stage"] == "read" and "junk.svs" in errors.loc["s_junk", "reason"]
    verify = run(BIN / "adacomed-cache", "verify", cache_root)
    assert "ok" in verify.stdout


def test_clam_export_and_import_round_trip(extracted: tuple[Path, subprocess.CompletedProcess]) -> None:
    cache_root, _ = extracted
    cache = open_cache(cache_root, "wsi")
    out = cache_root.parent / "clam_export"
    run(BIN / "adacomed-cache", "export-clam", cache.path, "--out", out)
    features, coords = read_clam_features(out / "h5_files" / "s_a.h5")
    bag = cache.read_bag("s_a")
    np.testing.assert_array_equal(features, np.asarray(bag["features"], np.float32))
    np.testing.assert_array_equal(coords, bag["coords"])
    manifest = Manifest(
        pd.DataFrame({"sample_id": ["s_a", "s_b"], "subject_id": ["p1", "p2"], "split": "train",
                      "h5": ["s_a.h5", "s_b.h5"]}),
        ManifestInfo(cohort="import", modalities={"wsi": ModalitySource("h5", "path", "clam_export/h5_files")}),
    ).write(cache_root.parent / "import.parquet")  # fmt: skip
    imported_root = cache_root.parent / "imported"
    run(BIN / "adacomed-extract", "--manifest", manifest, "--modality", "wsi", "--encoder", "clam-h5",
        "--cache", imported_root, "-o", "dim=32")  # fmt: skip
    imported = open_cache(imported_root, "wsi")
    np.testing.assert_array_equal(np.asarray(imported.read_bag("s_b")["coords"]), cache.read_bag("s_b")["coords"])
    np.testing.assert_allclose(imported.read(["s_a", "s_b"]), cache.read(["s_a", "s_b"]), atol=1e-3)


def test_patch_only_and_magnification_through_the_cli(cohort: Path) -> None:
    out = cohort.parent / "patch_only"
    proc = run(
        BIN / "adacomed-extract", "--manifest", cohort, "--modality", "wsi", "--patch-only", out,
        "--preset", "bwh_biopsy", "-o", "a_t=0.25", "--magnification", "10", check=False,
    )  # fmt: skip
    assert proc.returncode == 1  # two slides failed, by name, and the others were written
    coords, attrs = read_patch_coords(out / "patches" / "a.h5")
    assert attrs["target_magnification"] == 10.0 and attrs["patch_size_level0"] == 512 and len(coords) > 0
    assert (coords % 512 == 0).all()
    slides = pd.read_csv(out / "slides.csv").set_index("sample_id")
    assert slides.loc["s_blank", "status"] == "failed_segment" and slides.loc["s_junk", "status"] == "failed_read"
    assert slides.loc["s_b", "status"] == "processed" and slides.loc["s_b", "magnification"] == 20.0
