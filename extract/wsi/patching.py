"""Patch coordinates over segmented tissue, in two recorded modes.

**CLAM-compatible** (default; reproduces ``create_patches_fp``): for each tissue contour, in contour order, a grid
anchored at the contour's bounding box (level-0 pixels) with step ``step_size`` and side ``patch_size`` at
``patch_level`` (both scaled by the level's integer downsample), stopping at the box's far edge
(``use_padding``) or where a patch would leave the slide; candidates in x-major order; a candidate is kept when
the contour test passes on the contour alone (``four_pt``: any of the four corners of the centred half-size
square on or inside; ``four_pt_hard``: all four; ``center``: the centre; ``basic``: the top-left corner) and
its centre is not strictly inside one of the contour's kept holes. Patches of neighbouring contours may overlap
and are not de-duplicated, as in CLAM.

**Magnification-aware** (``magnification`` set; TRIDENT's manner): the patch side is ``patch_size`` pixels at the
target magnification, i.e. ``round(patch_size * level0_mag / target_mag)`` level-0 pixels; a global grid from
(0, 0) in row-major order; a patch is kept when it overlaps the tissue (contours minus holes, rasterised at the
segmentation level) by more than nothing, or by ``min_tissue_proportion`` of its area; it is read from the
finest level at least as fine as needed and resized to ``patch_size``.

Coordinates are always int64 level-0 top-left corners.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import EmptySegmentation

CONTOUR_FNS = ("four_pt", "four_pt_hard", "center", "basic")


@dataclass(frozen=True)
class PatchParams:
    """How patches are placed. ``magnification=None`` is CLAM's level mode (``patch_level``, ``step_size``)."""

    patch_size: int = 256
    step_size: int = 256
    patch_level: int = 0
    use_padding: bool = True
    contour_fn: str = "four_pt"
    magnification: float | None = None
    overlap: int = 0
    min_tissue_proportion: float = 0.0

    def __post_init__(self) -> None:
        if self.contour_fn not in CONTOUR_FNS:
            raise ValueError(f"contour_fn {self.contour_fn!r} is not one of {CONTOUR_FNS}")
        if self.patch_size < 1 or self.step_size < 1:
            raise ValueError("patch_size and step_size must be positive")
        if self.magnification is not None and self.magnification <= 0:
            raise ValueError(f"magnification must be positive, got {self.magnification}")
        if not 0 <= self.overlap < self.patch_size:
            raise ValueError(f"overlap must be in [0, patch_size), got {self.overlap}")
        if not 0.0 <= self.min_tissue_proportion <= 1.0:
            raise ValueError("min_tissue_proportion must be in [0, 1]")

    @property
    def mode(self) -> str:
        return "clam" if self.magnification is None else "magnification"

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.mode == "clam":
            for key in ("magnification", "overlap", "min_tissue_proportion"):
                values.pop(key)
        else:
            for key in ("step_size", "patch_level", "use_padding", "contour_fn"):
                values.pop(key)
        values["mode"] = self.mode
        return values


@dataclass
class PatchGrid:
    """Where a slide's patches are and how to read them: ``read_size`` px at ``read_level``, then ``patch_size``."""

    coords: np.ndarray  # (N, 2) int64, level-0 top-left
    read_level: int
    read_size: int
    patch_size: int
    patch_size_level0: int
    mode: str
    per_contour: list[int] = field(default_factory=list)
    clam_attrs: dict[str, Any] = field(default_factory=dict)  # the attributes of CLAM's patches/<id>.h5 coords

    def __len__(self) -> int:
        return len(self.coords)


# ------------------------------------------------------------------------------------------------ CLAM mode
def _inside(contour: np.ndarray, x: float, y: float) -> float:
    import cv2

    return cv2.pointPolygonTest(contour, (float(x), float(y)), False)


def _contour_test(contour: np.ndarray, fn: str, ps0: int) -> Any:
    """A function of a candidate's top-left corner: True when it passes CLAM's contour test ``fn``."""
    half = ps0 // 2
    shift = int(half * 0.5)
    if fn == "basic":
        return lambda x, y: _inside(contour, x, y) >= 0
    if fn == "center" or shift == 0:
        return lambda x, y: _inside(contour, x + half, y + half) >= 0
    offsets = ((-shift, -shift), (shift, shift), (shift, -shift), (-shift, shift))
    if fn == "four_pt":
        return lambda x, y: any(_inside(contour, x + half + dx, y + half + dy) >= 0 for dx, dy in offsets)
    return lambda x, y: all(_inside(contour, x + half + dx, y + half + dy) >= 0 for dx, dy in offsets)


def _in_holes(holes: list[np.ndarray], x: float, y: float) -> bool:
    return any(_inside(hole, x, y) > 0 for hole in holes)


def clam_contour_coords(
    contour: np.ndarray, holes: list[np.ndarray], slide_size: tuple[int, int], params: PatchParams, scale: tuple
) -> np.ndarray:
    """One contour's kept top-left corners, in CLAM's x-major candidate order."""
    import cv2

    down_x, down_y = int(scale[0]), int(scale[1])
    ps0_x, ps0_y = params.patch_size * down_x, params.patch_size * down_y
    x0, y0, w, h = cv2.boundingRect(contour)
    stop_x, stop_y = x0 + w, y0 + h
    if not params.use_padding:
        stop_x, stop_y = min(stop_x, slide_size[0] - ps0_x + 1), min(stop_y, slide_size[1] - ps0_y + 1)
    xs = np.arange(x0, stop_x, params.step_size * down_x)
    ys = np.arange(y0, stop_y, params.step_size * down_y)
    test = _contour_test(contour, params.contour_fn, ps0_x)
    centre = ps0_x / 2
    kept = [
        (x, y)
        for x in xs.tolist()
        for y in ys.tolist()
        if test(x, y) and not (holes and _in_holes(holes, x + centre, y + centre))
    ]
    return np.asarray(kept, dtype=np.int64).reshape(-1, 2)


def clam_patch_grid(slide: Any, tissue: Any, params: PatchParams) -> PatchGrid:
    level = params.patch_level
    if not 0 <= level < slide.level_count:
        raise ValueError(f"patch_level {level} is outside the slide's {slide.level_count} levels")
    scale = slide.level_scales[level]
    parts = [
        clam_contour_coords(contour, holes, slide.dimensions, params, scale)
        for contour, holes in zip(tissue.contours, tissue.holes)
    ]
    coords = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    level_dim = [int(v) for v in slide.level_dimensions[level]]
    attrs = {
        "patch_size": int(params.patch_size),
        "patch_level": int(level),
        "downsample": [float(scale[0]), float(scale[1])],
        "downsampled_level_dim": level_dim,
        "level_dim": level_dim,
        "name": slide.slide_id,
    }
    return PatchGrid(
        coords=coords,
        read_level=level,
        read_size=params.patch_size,
        patch_size=params.patch_size,
        patch_size_level0=params.patch_size * int(scale[0]),
        mode="clam",
        per_contour=[len(p) for p in parts],
        clam_attrs=attrs,
    )


# --------------------------------------------------------------------------------------- magnification mode
def tissue_raster(tissue: Any) -> np.ndarray:
    """The kept tissue (contours filled, kept holes cleared) at the segmentation scale, uint8 0/1."""
    import cv2

    width, height = tissue.seg_size
    raster = np.zeros((height, width), dtype=np.uint8)
    factor = np.array(tissue.seg_scale, dtype=np.float64)

    def down(contour: np.ndarray) -> np.ndarray:
        return np.round(contour / factor).astype(np.int32)

    for contour, holes in zip(tissue.contours, tissue.holes):
        cv2.fillPoly(raster, [down(contour)], 1)
        if holes:
            cv2.fillPoly(raster, [down(h) for h in holes], 0)
    return raster


def magnification_patch_grid(slide: Any, tissue: Any, params: PatchParams) -> PatchGrid:
    level0_mag = slide.require_magnification()
    downsample = level0_mag / float(params.magnification)
    if downsample < 1 - 1e-6:
        raise ValueError(
            f"slide {slide.path.name}: target magnification {params.magnification:g}x is above the slide's "
            f"{level0_mag:g}x; upsampling is not done"
        )
    ps0 = int(round(params.patch_size * downsample))
    step0 = ps0 - int(round(params.overlap * downsample))
    read_level = slide.best_level_for_downsample(downsample * (1 + 1e-3))
    read_size = int(round(ps0 / slide.level_downsamples[read_level]))
    width0, height0 = slide.dimensions
    xs = np.arange(0, width0, step0, dtype=np.int64)
    ys = np.arange(0, height0, step0, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")  # row-major: y outer, x inner
    candidates = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)

    raster = tissue_raster(tissue)
    integral = np.pad(raster.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sx, sy = tissue.seg_scale
    height_s, width_s = raster.shape
    left = np.clip(np.floor(candidates[:, 0] / sx).astype(np.int64), 0, width_s)
    top = np.clip(np.floor(candidates[:, 1] / sy).astype(np.int64), 0, height_s)
    right = np.clip(np.ceil((candidates[:, 0] + ps0) / sx).astype(np.int64), 0, width_s)
    bottom = np.clip(np.ceil((candidates[:, 1] + ps0) / sy).astype(np.int64), 0, height_s)
    inside = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    area = (ps0 / sx) * (ps0 / sy)
    fraction = inside / area
    keep = fraction > 0 if params.min_tissue_proportion == 0 else fraction >= params.min_tissue_proportion
    coords = candidates[keep]
    attrs = {
        "patch_size": int(read_size),
        "patch_level": int(read_level),
        "downsample": [float(v) for v in slide.level_scales[read_level]],
        "downsampled_level_dim": [int(v) for v in slide.level_dimensions[read_level]],
        "level_dim": [int(v) for v in slide.level_dimensions[read_level]],
        "name": slide.slide_id,
        "target_patch_size": int(params.patch_size),
        "patch_size_level0": int(ps0),
        "level0_magnification": float(level0_mag),
        "target_magnification": float(params.magnification),
        "overlap": int(params.overlap),
    }
    return PatchGrid(
        coords=coords.astype(np.int64),
        read_level=read_level,
        read_size=read_size,
        patch_size=params.patch_size,
        patch_size_level0=ps0,
        mode="magnification",
        per_contour=[],
        clam_attrs=attrs,
    )


def patch_coords(slide: Any, tissue: Any, params: PatchParams) -> PatchGrid:
    """The slide's patch grid in the mode ``params`` asks for; raises :class:`EmptySegmentation` when empty."""
    grid = (
        clam_patch_grid(slide, tissue, params)
        if params.mode == "clam"
        else magnification_patch_grid(slide, tissue, params)
    )
    if len(grid) == 0:
        raise EmptySegmentation(
            f"slide {slide.path.name}: {len(tissue.contours)} tissue contour(s) but no patch passed the "
            f"{params.contour_fn if params.mode == 'clam' else 'tissue-overlap'} test"
        )
    return grid
