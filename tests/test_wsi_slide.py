"""The slide object: backends, resolution, bad slides and tiles, presets, magnification mode, CLAM's patch file."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from adacomed.cache_schema.clam_h5 import read_patch_coords, write_patch_coords
from adacomed.extract.wsi import segmentation
from adacomed.extract.wsi.errors import CorruptTile, EmptySegmentation, MagnificationUnknown, SlideUnreadable
from adacomed.extract.wsi.patch_reader import PatchReaderPool, PatchTransform, ReadSpec
from adacomed.extract.wsi.patcher import SlidePatcher
from adacomed.extract.wsi.patching import PatchParams, patch_coords, tissue_raster
from adacomed.extract.wsi.presets import BUILTIN, load_preset
from adacomed.extract.wsi.slide import Slide, nominal_magnification

sys.path.insert(0, str(Path(__file__).parent))
import wsi_synthetic as synthetic  # noqa: E402

SMALL = synthetic.odd_size_recipe(3000, 2500)  # 0.5 um/px, levels 3000 / 750 / 187


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write_slide(SMALL, tmp_path_factory.mktemp("slides") / "small.tiff")


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = synthetic.multi_contour_recipe(8192)
    return synthetic.write_slide(recipe, tmp_path_factory.mktemp("slides") / "big.tiff")


def test_openslide_and_tifffile_backends_read_the_same_pixels(small_slide: Path) -> None:
    with Slide(small_slide) as by_openslide, Slide(small_slide, backend="tiff") as by_tifffile:
        assert by_openslide.backend == "openslide" and by_openslide.vendor == "generic-tiff"
        assert by_tifffile.backend == "tiff"
        assert by_openslide.level_dimensions == by_tifffile.level_dimensions == ((3000, 2500), (750, 625), (187, 156))
        for slide in (by_openslide, by_tifffile):
            assert slide.mpp == pytest.approx(0.5) and slide.magnification == 20.0
            assert slide.magnification_source == "from mpp"
        for location, level, size in (
            ((700, 900), 0, (300, 200)),
            ((2900, 2400), 0, (256, 256)),
            ((0, 0), 2, (187, 156)),
        ):
            np.testing.assert_array_equal(
                by_openslide.read_region(location, level, size), by_tifffile.read_region(location, level, size)
            )
        outside = by_openslide.read_region((2950, 2450), 0, (100, 100))
        assert (outside[60:, 60:] == 0).all()  # beyond the slide: black, as CLAM sees it


def test_svs_like_file_gives_objective_power_and_mpp(tmp_path: Path) -> None:
    recipe = dataclasses.replace(synthetic.odd_size_recipe(2048, 2048), vendor="aperio", magnification=40, mpp=0.252)
    path = synthetic.write_slide(recipe, tmp_path / "case.svs", compression="jpeg")
    with Slide(path) as slide:
        assert slide.vendor == "aperio" and slide.slide_id == "case"
        assert slide.mpp == pytest.approx(0.252) and slide.magnification == 40.0
        assert slide.magnification_source == "openslide.objective-power"
        assert slide.read_region((900, 900), 0, (64, 64)).shape == (64, 64, 3)


def test_ome_pyramid_and_stripped_tiff_use_tifffile(tmp_path: Path) -> None:
    image = synthetic.PALETTE[synthetic.label_map(synthetic.single_level_recipe(1024, 768))]
    ome = tmp_path / "s.ome.tiff"
    with tifffile.TiffWriter(ome) as tif:
        options = dict(photometric="rgb", tile=(256, 256), compression="zlib")
        tif.write(image, subifds=2, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
        tif.write(image[::4, ::4], subfiletype=1, **options)
    with Slide(ome) as slide:
        assert slide.backend == "tiff" and slide.vendor == "ome-tiff"
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "ome.PhysicalSizeX"
        np.testing.assert_array_equal(slide.read_region((100, 200), 0, (50, 40)), image[200:240, 100:150])
        np.testing.assert_array_equal(slide.read_region((400, 400), 1, (30, 20)), image[::2, ::2][200:220, 200:230])
    stripped = tmp_path / "plain.tif"
    tifffile.imwrite(stripped, image, photometric="rgb", rowsperstrip=64)
    with Slide(stripped) as slide:
        assert slide.backend == "tiff" and slide.level_count == 1 and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((5, 100), 0, (1000, 100)), image[100:200, 5:1005])


def test_unreadable_and_missing_slides_are_named_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all" * 100)
    with pytest.raises(SlideUnreadable, match="junk.svs"):
        Slide(junk)
    with pytest.raises(SlideUnreadable, match="no such file"):
        Slide(tmp_path / "absent.svs")


def _corrupt_one_tile(path: Path) -> tuple[int, int]:
    """Overwrite one level-0 tile's bytes with junk; returns the tile's top-left in level-0 pixels."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        per_row = -(-page.shape[1] // page.tilewidth)
        index = per_row * 3 + 4
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    return (index % per_row) * 256, (index // per_row) * 256


def test_corrupt_tile_is_retried_then_fails_the_slide_or_is_replaced(tmp_path: Path) -> None:
    path = synthetic.write_slide(SMALL, tmp_path / "bad.tiff", compression="jpeg")
    x, y = _corrupt_one_tile(path)
    with Slide(path, tile_retries=1) as slide:
        assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
        with pytest.raises(CorruptTile, match=rf"bad.tiff: region at \({x}, {y}\) level 0 unreadable after 2 tries"):
            slide.read_region((x, y), 0, (256, 256))
    with Slide(path, on_bad_tile="replace") as slide:
        patch = slide.read_region((x, y), 0, (256, 256))
        assert (patch == 255).all() and slide.replaced_regions == 1
        assert slide.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)  # the handle works again after re-opening


def test_empty_segmentation_is_a_named_outcome(small_slide: Path) -> None:
    with Slide(small_slide) as slide:
        with pytest.raises(EmptySegmentation, match="no tissue contour kept"):
            slide.segment(BUILTIN["default"].segmentation)  # a_t=100 units exceeds this small slide's tissue
        with pytest.raises(EmptySegmentation, match="keep_ids"):
            slide.segment(dataclasses.replace(BUILTIN["bwh_biopsy"].segmentation, keep_ids=(7,)))


def test_too_large_segmentation_level_is_read_coarser(monkeypatch: pytest.MonkeyPatch, small_slide: Path) -> None:
    monkeypatch.setattr(segmentation, "MAX_SEG_PIXELS", 40_000)  # level 2 (187 x 156 = 29k) still fits
    with Slide(small_slide) as slide:
        tissue = slide.segment(dataclasses.replace(BUILTIN["bwh_biopsy"].segmentation, seg_level=1))
        assert tissue.seg_size == (187, 156) and "used level 2" in tissue.notes[0]
    monkeypatch.setattr(segmentation, "MAX_SEG_PIXELS", 20_000)  # no level fits: level 2 read shrunk
    with Slide(small_slide) as slide:
        tissue = slide.segment(dataclasses.replace(BUILTIN["bwh_biopsy"].segmentation, seg_level=2))
        assert "shrunk 2x" in tissue.notes[0] and tissue.seg_size == (93, 78) and len(tissue) >= 1


def test_presets_by_name_and_from_clam_csv(tmp_path: Path) -> None:
    assert load_preset("tcga") is BUILTIN["tcga"] and load_preset("tcga.csv") is BUILTIN["tcga"]
    assert load_preset(None) is BUILTIN["default"]
    csv = tmp_path / "lab.csv"
    csv.write_text(
        "seg_level,sthresh,mthresh,close,use_otsu,a_t,a_h,max_n_holes,vis_level,line_thickness,white_thresh,"
        "black_thresh,use_padding,contour_fn,keep_ids,exclude_ids\n"
        '-1,15,11,2,FALSE,1.9,1,2,-1,50,5,50,FALSE,four_pt_hard,none,"1,3"\n'
    )
    preset = load_preset(str(csv))
    assert preset.name == "lab" and preset.segmentation.a_t == 1  # CLAM truncates a_t to an integer
    assert preset.segmentation.exclude_ids == (1, 3) and preset.segmentation.sthresh == 15
    assert preset.use_padding is False and preset.contour_fn == "four_pt_hard"
    csv.write_text("sthresh,colour\n9,red\n")
    with pytest.raises(ValueError, match="unknown column 'colour'"):
        load_preset(str(csv))
    with pytest.raises(ValueError, match="neither one of"):
        load_preset("tcgaa")


def test_patcher_options_are_validated_and_fingerprinted() -> None:
    patcher = SlidePatcher(preset="bwh_biopsy", a_t="3", use_padding="false", magnification=20)
    params = patcher.parameters()
    assert params["segmentation"]["a_t"] == 3.0 and params["segmentation"]["use_padding"] is False
    assert params["patching"]["mode"] == "magnification" and params["patching"]["magnification"] == 20.0
    assert SlidePatcher().parameters() != SlidePatcher(sthresh=9).parameters()
    with pytest.raises(ValueError, match="unknown slide options"):
        SlidePatcher(sthresh_up=3)


def test_magnification_mode_global_grid(big_slide: Path) -> None:
    with Slide(big_slide) as slide:  # 0.25 um/px: 40x
        tissue = slide.segment(BUILTIN["tcga"].segmentation)
        grid = patch_coords(slide, tissue, PatchParams(magnification=20))
        assert (grid.patch_size_level0, grid.read_level, grid.read_size, grid.patch_size) == (512, 0, 512, 256)
        assert (grid.coords % 512 == 0).all()
        order = np.lexsort((grid.coords[:, 0], grid.coords[:, 1]))
        np.testing.assert_array_equal(order, np.arange(len(grid)))  # row-major
        strict = patch_coords(slide, tissue, PatchParams(magnification=20, min_tissue_proportion=0.9))
        assert 0 < len(strict) < len(grid)
        assert {tuple(c) for c in strict.coords} <= {tuple(c) for c in grid.coords}
        raster = tissue_raster(tissue)
        for x, y in strict.coords[:: max(1, len(strict) // 20)]:
            window = raster[y // 16 : (y + 512) // 16, x // 16 : (x + 512) // 16]
            assert window.mean() >= 0.85
        coarse = patch_coords(slide, tissue, PatchParams(magnification=5))
        assert (coarse.patch_size_level0, coarse.read_level, coarse.read_size) == (2048, 1, 512)
    assert nominal_magnification(0.265) == 40.0 and nominal_magnification(0.5) == 20.0


def test_magnification_needs_a_known_resolution(tmp_path: Path) -> None:
    path = synthetic.write_slide(synthetic.single_level_recipe(800, 600), tmp_path / "nompp.tiff")
    patcher = SlidePatcher(preset="bwh_biopsy", magnification=20)
    with pytest.raises(MagnificationUnknown, match="nompp.tiff: level-0 magnification unknown"):
        patcher.read(path)
    patched = SlidePatcher(preset="bwh_biopsy", a_t=0, magnification=20, mpp=0.25).read(path)
    assert patched.info.magnification == 40.0 and patched.info.mpp_source == "given"


def test_clam_patch_file_round_trip(tmp_path: Path, small_slide: Path) -> None:
    patched = SlidePatcher(preset="bwh_biopsy").read(small_slide)
    out = write_patch_coords(tmp_path / "patches" / "small.h5", patched.coords, patched.grid.clam_attrs)
    coords, attrs = read_patch_coords(out)
    np.testing.assert_array_equal(coords, patched.coords)
    assert attrs["patch_size"] == 256 and attrs["patch_level"] == 0 and attrs["downsample"] == [1.0, 1.0]
    assert attrs["level_dim"] == [3000, 2500] and attrs["name"] == "small"
    assert not list(out.parent.glob(".*.tmp"))


def test_patch_transform_matches_torchvision() -> None:
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224)])(Image.fromarray(patch))
    np.testing.assert_array_equal(PatchTransform()(patch), np.asarray(reference))
    wide = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224)])(Image.fromarray(wide))
    np.testing.assert_array_equal(PatchTransform()(wide), np.asarray(reference))


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_parallel_readers_return_the_in_process_pixels_in_order(kind: str, small_slide: Path) -> None:
    patched = SlidePatcher(preset="bwh_biopsy").read(small_slide)
    spec = ReadSpec(patched.slide_options, 0, 256, 256, PatchTransform())
    coords = patched.coords[:24]
    with PatchReaderPool(0) as pool:
        expected = np.concatenate([b[1] for b in pool.batches(spec, coords, 5)])
    with PatchReaderPool(2, kind=kind) as pool:
        batches = list(pool.batches(spec, coords, 5))
    assert [b[0] for b in batches] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), expected)


def test_patch_only_writes_clam_layout_and_reruns_only_changed_parameters(tmp_path: Path, small_slide: Path) -> None:
    from adacomed.extract.wsi.patch_only import write_patch_files

    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"garbage" * 50)
    items = {"s1": small_slide, "s2": junk}
    out = tmp_path / "clam"
    summary = write_patch_files(items, SlidePatcher(preset="bwh_biopsy"), out)
    rows = {r["sample_id"]: r for r in summary.rows}
    assert rows["s1"]["status"] == "processed" and rows["s1"]["patches"] > 0 and rows["s1"]["mpp"] == 0.5
    assert rows["s2"]["status"] == "failed_read" and "junk.svs" in rows["s2"]["reason"]
    coords, attrs = read_patch_coords(out / "patches" / "small.h5")
    assert len(coords) == rows["s1"]["patches"] and attrs["patch_size"] == 256
    assert (out / "slides.csv").read_text().startswith("sample_id,slide_id,status")
    again = write_patch_files(items, SlidePatcher(preset="bwh_biopsy"), out)
    assert [r["status"] for r in again.rows] == ["already_exist", "failed_read"]
    changed = write_patch_files(items, SlidePatcher(preset="bwh_biopsy", step_size=128), out)
    assert changed.rows[0]["status"] == "processed" and changed.rows[0]["patches"] > rows["s1"]["patches"]


def test_demo_slides_have_tissue_with_the_demo_settings(tmp_path: Path) -> None:
    """pipelines/demo_job.sh patches the demo slides with bwh_biopsy and a_t=0.25: every demo slide must pass."""
    from adacomed.pipelines import demo_media

    patcher = SlidePatcher(preset="bwh_biopsy", a_t=0.25)
    rng = np.random.default_rng(11)
    for index, view in enumerate((-2.0, 0.0, 2.0, -1.0, 1.0)):
        path = tmp_path / f"demo{index}.tiff"
        path.write_bytes(demo_media.wsi_tiff_bytes(view, rng))
        patched = patcher.read(path)
        assert patched.tissue["contours"] >= 1 and len(patched.coords) >= 2
        assert patched.info.mpp == pytest.approx(0.5) and patched.info.magnification == 20.0
