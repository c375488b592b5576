"""Deterministic synthetic whole-slide images for the WSI tests, the CLAM parity fixtures and the benchmarks.

A slide is drawn once as a small *label map* (one label per pixel of its coarsest pyramid level: glass, tissue,
faint tissue, ...) from shapes given in slide-relative coordinates; every pyramid level is that map upsampled by
nearest neighbour and coloured from a fixed palette, and level 0 is written tile by tile so a 16k x 16k slide
never exists in memory. The files are tiled pyramidal TIFFs that OpenSlide opens (``generic-tiff``, or
``aperio`` with ``vendor="aperio"``): each level is its own top-level page, reduced levels carry
``subfiletype=1``, and the resolution tags give the MPP.

Flat colours and staircase edges: these slides test geometry, area filters and hole rules, not colour
robustness. Shapes are chosen so that CLAM's presets disagree on them:

* one large blob with four holes of decreasing size (``max_n_holes`` and ``a_h`` matter), one tissue island
  inside the largest hole (a top-level contour inside a hole), a medium blob (kept by ``tcga``, not by the
  default), a faint blob whose saturation sits between ``sthresh`` 8 and 15 (kept by the default and ``tcga``,
  not by the ``bwh`` presets), small specks (only ``bwh_biopsy``), a blob cut by the slide edge (``use_padding``),
  a one-pixel line (area 0) and isolated saturated pixels (removed by the median blur).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

GLASS, TISSUE, FAINT, DARK = 0, 1, 2, 3
# Saturations in OpenCV's 8-bit HSV: glass ~5, tissue ~90, faint ~12 (between sthresh 8 and 15), dark ~120.
PALETTE = np.array([[242, 240, 245], [226, 160, 196], [238, 230, 239], [150, 90, 160]], dtype=np.uint8)


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in slide-relative units (0..1 on each axis), painted with ``label`` (holes paint glass)."""

    cx: float
    cy: float
    rx: float
    ry: float
    label: int = TISSUE


@dataclass(frozen=True)
class SlideRecipe:
    """What to draw and how to write it. ``levels`` are the downsamples of levels 1.. relative to level 0."""

    width: int
    height: int
    shapes: tuple[Ellipse, ...]
    levels: tuple[int, ...] = (4, 16)
    mpp: float | None = 0.25
    tile: int = 256
    seed: int = 0
    wobble: float = 0.12  # relative radius noise, so contours are not perfect ellipses
    salt: int = 40  # isolated saturated pixels on the coarse map (median blur removes them)
    line: bool = True  # a one-pixel-wide line: contour area 0
    vendor: str = "generic"  # "generic" (generic-tiff) or "aperio" (an SVS-like file)
    magnification: float | None = None  # written only for vendor="aperio" (AppMag)
    extra: dict = field(default_factory=dict)


def multi_contour_recipe(size: int = 16384, seed: int = 0) -> SlideRecipe:
    """Several contours with holes; at ``size`` 16384 the default preset keeps the large blob only."""
    shapes = (
        Ellipse(0.30, 0.36, 0.21, 0.19),  # large blob: ~33 M level-0 px at 16k
        Ellipse(0.24, 0.33, 0.075, 0.07, GLASS),  # its holes, largest first
        Ellipse(0.40, 0.46, 0.042, 0.040, GLASS),
        Ellipse(0.36, 0.24, 0.027, 0.025, GLASS),
        Ellipse(0.20, 0.48, 0.016, 0.015, GLASS),
        Ellipse(0.24, 0.33, 0.020, 0.020, TISSUE),  # an island inside the largest hole
        Ellipse(0.74, 0.28, 0.13, 0.10),  # medium blob (tcga keeps it, the default does not)
        Ellipse(0.70, 0.76, 0.10, 0.08, FAINT),  # faint blob (sthresh 8 keeps it, 15 does not)
        Ellipse(0.16, 0.84, 0.030, 0.030, DARK),  # specks (bwh_biopsy only)
        Ellipse(0.30, 0.86, 0.022, 0.020),
        Ellipse(0.97, 0.56, 0.09, 0.12),  # cut by the right edge
    )
    return SlideRecipe(size, size, shapes, levels=(4, 16), seed=seed)


def odd_size_recipe(width: int = 6000, height: int = 5000, seed: int = 1) -> SlideRecipe:
    """A non-power-of-two slide: per-axis level downsamples differ (5000 / 312 != 16)."""
    shapes = (
        Ellipse(0.32, 0.40, 0.22, 0.26),
        Ellipse(0.30, 0.42, 0.06, 0.05, GLASS),
        Ellipse(0.38, 0.28, 0.035, 0.03, GLASS),
        Ellipse(0.24, 0.56, 0.03, 0.028, GLASS),
        Ellipse(0.75, 0.30, 0.12, 0.14),
        Ellipse(0.78, 0.78, 0.09, 0.10, FAINT),
        Ellipse(0.12, 0.88, 0.05, 0.05, DARK),
        Ellipse(0.02, 0.10, 0.05, 0.06),  # cut by the left edge
    )
    return SlideRecipe(width, height, shapes, levels=(4, 16), mpp=0.5, seed=seed)


def single_level_recipe(width: int = 2600, height: int = 2000, seed: int = 2) -> SlideRecipe:
    """One level only: CLAM segments at level 0."""
    shapes = (
        Ellipse(0.35, 0.45, 0.25, 0.30),
        Ellipse(0.33, 0.47, 0.07, 0.06, GLASS),
        Ellipse(0.78, 0.40, 0.14, 0.20, DARK),
        Ellipse(0.75, 0.85, 0.08, 0.07),
    )
    return SlideRecipe(width, height, shapes, levels=(), mpp=None, seed=seed, salt=200)


# --------------------------------------------------------------------------------------------- drawing
def coarse_shape(recipe: SlideRecipe) -> tuple[int, int]:
    """(width, height) of the coarsest level, the grid the label map is drawn on."""
    if not recipe.levels:
        return recipe.width, recipe.height
    last = recipe.levels[-1]
    return recipe.width // last, recipe.height // last


def label_map(recipe: SlideRecipe) -> np.ndarray:
    """The slide's labels at its coarsest level, (height, width) uint8, deterministic in ``recipe.seed``."""
    width, height = coarse_shape(recipe)
    rng = np.random.default_rng(recipe.seed)
    labels = np.zeros((height, width), dtype=np.uint8)
    for shape in recipe.shapes:
        phases = rng.uniform(0, 2 * np.pi, 3)
        reach = 1.0 + recipe.wobble  # the wobble never takes the outline further than this
        x0 = max(0, int((shape.cx - shape.rx * reach) * width) - 1)
        x1 = min(width, int((shape.cx + shape.rx * reach) * width) + 2)
        y0 = max(0, int((shape.cy - shape.ry * reach) * height) - 1)
        y1 = min(height, int((shape.cy + shape.ry * reach) * height) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy = ((yy + 0.5) / height - shape.cy) / shape.ry
        dx = ((xx + 0.5) / width - shape.cx) / shape.rx
        angle = np.arctan2(dy, dx)
        radius = 1.0 + recipe.wobble * (
            0.5 * np.sin(3 * angle + phases[0]) + 0.3 * np.sin(5 * angle + phases[1]) + 0.2 * np.sin(7 * angle)
        )
        labels[y0:y1, x0:x1][dx**2 + dy**2 < radius**2] = shape.label
    if recipe.line:
        row = int(height * 0.93)
        labels[row, int(width * 0.45) : int(width * 0.6)] = DARK
    if recipe.salt:
        ys = rng.integers(0, height, recipe.salt)
        xs = rng.integers(0, width, recipe.salt)
        labels[ys, xs] = DARK
    return labels


def _level_sizes(recipe: SlideRecipe) -> list[tuple[int, int]]:
    sizes = [(recipe.width, recipe.height)]
    sizes += [(recipe.width // d, recipe.height // d) for d in recipe.levels]
    return sizes


def _tiles(labels: np.ndarray, width: int, height: int, tile: int, encode):
    """Row-major encoded tiles of one level: each pixel takes the label of the coarse pixel it falls in.

    Tiles are encoded once per distinct label block (most of a slide is glass), which keeps a 16k slide's level 0
    to a few seconds.
    """
    coarse_h, coarse_w = labels.shape
    known: dict[bytes, bytes] = {}
    for top in range(0, height, tile):
        rows = np.minimum((np.arange(top, top + tile) * coarse_h) // height, coarse_h - 1)
        band = labels[rows]
        for left in range(0, width, tile):
            cols = np.minimum((np.arange(left, left + tile) * coarse_w) // width, coarse_w - 1)
            block_labels = band[:, cols]
            edge = top + tile > height or left + tile > width
            key = block_labels[:: max(1, tile // 64), :: max(1, tile // 64)].tobytes() if not edge else b""
            uniform = not edge and block_labels.min() == block_labels.max()
            if uniform and key in known:
                yield known[key]
                continue
            block = PALETTE[block_labels]
            if edge:  # outside the level: zero padding, as TIFF tiles are
                block = block.copy()
                block[max(0, height - top) :, :] = 0
                block[:, max(0, width - left) :] = 0
            data = encode(block)
            if uniform:
                known[key] = data
            yield data


def _encoder(compression: str):
    import imagecodecs

    if compression == "zlib":
        return lambda block: imagecodecs.zlib_encode(np.ascontiguousarray(block).tobytes(), level=1)
    if compression == "jpeg":
        return lambda block: imagecodecs.jpeg8_encode(block, level=90, colorspace="RGB", outcolorspace="YCBCR")
    raise ValueError(f"unsupported compression {compression!r}")


def write_slide(recipe: SlideRecipe, path: Path, compression: str = "zlib") -> Path:
    """Write the recipe as a tiled pyramidal TIFF at ``path``; returns the path."""
    labels = label_map(recipe)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = _level_sizes(recipe)
    with tifffile.TiffWriter(path, bigtiff=recipe.width * recipe.height > 2**31) as tif:
        for index, (width, height) in enumerate(sizes):
            downsample = recipe.width / width
            options: dict = {}
            if recipe.mpp is not None:
                per_cm = 1e4 / (recipe.mpp * downsample)
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            description = None
            if recipe.vendor == "aperio":
                description = (
                    f"Aperio Image Library v12.0.0 \r\n{recipe.width}x{recipe.height} [0,0 {width}x{height}] "
                    f"({recipe.tile}x{recipe.tile}) -> {width}x{height} JPEG/RGB Q=90"
                )
                if index == 0:
                    description += f"|AppMag = {recipe.magnification or 40:g}"
                    if recipe.mpp is not None:
                        description += f"|MPP = {recipe.mpp:g}"
            tif.write(
                _tiles(labels, width, height, recipe.tile, _encoder(compression)),
                shape=(height, width, 3),
                dtype=np.uint8,
                photometric="rgb",
                tile=(recipe.tile, recipe.tile),
                compression=compression,
                subfiletype=1 if index else 0,
                description=description,
                metadata=None,
                software="adacomed-tests",
                **options,
            )
            if recipe.vendor == "aperio" and index == 0:  # Aperio's second directory is a stripped thumbnail
                thumb_labels = labels[:: max(1, labels.shape[0] // 64), :: max(1, labels.shape[1] // 64)]
                tif.write(PALETTE[thumb_labels], photometric="rgb", description="Aperio thumbnail", metadata=None)
    return path
