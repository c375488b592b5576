"""CLAM-compatible tissue segmentation: same mask, same contours (vertex for vertex), same order as CLAM's
``create_patches_fp`` (re-derived from its documented behaviour and checked against its output on synthetic slides;
``tests/test_wsi_clam_parity.py``).

Steps, at the segmentation level (``seg_level=-1``: the level OpenSlide picks for downsample 64):

1. OpenCV HSV of the RGB level; keep the saturation channel; median blur of side ``mthresh``;
2. threshold: ``S > sthresh`` (or Otsu's threshold with ``use_otsu``), then one morphological close with a
   ``close x close`` square when ``close > 0``;
3. contours with their two-level hierarchy (``RETR_CCOMP``, every boundary pixel a vertex): a contour without
   a parent is tissue, its children are its holes;
4. area filters in units of one 512 x 512 level-0 patch at the segmentation level: a tissue contour is kept when
   its area minus all its children's areas is non-zero and above ``a_t`` units; of its children, the
   ``max_n_holes`` largest are considered and those above ``a_h`` units kept;
5. ``keep_ids`` / ``exclude_ids`` select among the kept contours (in the iteration order of the resulting set,
   as CLAM does), and every vertex is scaled to level 0 per axis and truncated to int32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import EmptySegmentation

REFERENCE_PATCH = 512  # a_t and a_h count areas in 512 x 512 level-0 patches
SEG_DOWNSAMPLE = 64  # seg_level=-1 means the level OpenSlide picks for this downsample
MAX_SEG_PIXELS = 1e8  # CLAM aborts above this; here a coarser reading is used instead


@dataclass(frozen=True)
class SegmentationParams:
    """CLAM's segmentation and filter parameters (names and defaults of ``create_patches_fp.py``)."""

    seg_level: int = -1
    sthresh: int = 8
    mthresh: int = 7
    close: int = 4
    use_otsu: bool = False
    a_t: float = 100
    a_h: float = 16
    max_n_holes: int = 8
    keep_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mthresh < 3 or self.mthresh % 2 == 0:
            raise ValueError(f"mthresh must be an odd number >= 3 (a median blur side), got {self.mthresh}")
        if not 0 <= self.sthresh <= 255:
            raise ValueError(f"sthresh must be in 0..255, got {self.sthresh}")
        if self.close < 0 or self.max_n_holes < 0 or self.a_t < 0 or self.a_h < 0:
            raise ValueError("close, max_n_holes, a_t and a_h must not be negative")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["keep_ids"] = list(self.keep_ids)
        values["exclude_ids"] = list(self.exclude_ids)
        return values


@dataclass
class Tissue:
    """Kept tissue contours and their holes, in level-0 pixels (int32 ``(n, 1, 2)`` arrays, OpenCV's layout)."""

    contours: list[np.ndarray]
    holes: list[list[np.ndarray]]
    seg_level: int
    seg_scale: tuple[float, float]  # level-0 pixels per segmentation pixel, per axis
    seg_size: tuple[int, int]  # (width, height) of the mask
    notes: list[str] = field(default_factory=list)  # e.g. a coarser reading than asked for

    def __len__(self) -> int:
        return len(self.contours)

    def summary(self) -> dict[str, Any]:
        return {
            "contours": len(self.contours),
            "holes": [len(h) for h in self.holes],
            "seg_level": self.seg_level,
            "seg_scale": list(self.seg_scale),
            "seg_size": list(self.seg_size),
            "notes": list(self.notes),
        }


def resolve_seg_level(slide: Any, seg_level: int) -> int:
    if seg_level < 0:
        return slide.best_level_for_downsample(SEG_DOWNSAMPLE)
    if seg_level >= slide.level_count:
        raise ValueError(f"seg_level {seg_level} is outside the slide's {slide.level_count} levels")
    return seg_level


def _segmentation_image(slide: Any, level: int) -> tuple[np.ndarray, tuple[float, float], list[str]]:
    """The RGB image segmented and its per-axis level-0 scale; a too-large level is read coarser, not refused."""
    width, height = slide.level_dimensions[level]
    if width * height <= MAX_SEG_PIXELS:
        return slide.read_level(level), slide.level_scales[level], []
    for coarser in range(level + 1, slide.level_count):
        w, h = slide.level_dimensions[coarser]
        if w * h <= MAX_SEG_PIXELS:
            note = f"level {level} ({width}x{height}) too large to segment; used level {coarser} ({w}x{h})"
            return slide.read_level(coarser), slide.level_scales[coarser], [note]
    return _read_downscaled(slide, level)


def _read_downscaled(slide: Any, level: int) -> tuple[np.ndarray, tuple[float, float], list[str]]:
    """Read ``level`` in bands and shrink it (area averaging) until it fits the pixel budget."""
    import cv2

    width, height = slide.level_dimensions[level]
    factor = int(np.ceil(np.sqrt(width * height / MAX_SEG_PIXELS)))
    out_w, out_h = width // factor, height // factor
    rows = []
    band = factor * 256
    for top in range(0, out_h * factor, band):
        rows_here = min(band, out_h * factor - top)
        part = slide.read_region((0, int(round(top * slide.level_scales[level][1]))), level, (width, rows_here))
        rows.append(cv2.resize(part[:, : out_w * factor], (out_w, rows_here // factor), interpolation=cv2.INTER_AREA))
    image = np.concatenate(rows, axis=0)
    width0, height0 = slide.level_dimensions[0]
    note = f"level {level} ({width}x{height}) too large to segment; read it shrunk {factor}x to {out_w}x{out_h}"
    return image, (width0 / out_w, height0 / out_h), [note]


def tissue_mask(rgb: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """The binary (0/255) tissue mask of an RGB image: saturation, median blur, threshold, close."""
    import cv2

    saturation = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2HSV)[..., 1])
    blurred = cv2.medianBlur(saturation, params.mthresh)
    if params.use_otsu:
        _, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        _, mask = cv2.threshold(blurred, params.sthresh, 255, cv2.THRESH_BINARY)
    if params.close > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((params.close, params.close), np.uint8))
    return mask


def filter_contours(
    contours: list[np.ndarray], hierarchy: np.ndarray, min_tissue: float, min_hole: float, max_n_holes: int
) -> tuple[list[int], list[list[int]]]:
    """Indices of the kept tissue contours (ascending) and, per kept contour, of its kept holes (largest first)."""
    import cv2

    parents = hierarchy[:, 3]
    areas = [cv2.contourArea(c) for c in contours]
    kept: list[int] = []
    kept_holes: list[list[int]] = []
    for index in np.flatnonzero(parents == -1):
        children = [int(j) for j in np.flatnonzero(parents == index)]
        net = areas[index] - np.array([areas[j] for j in children]).sum()
        if net == 0 or not net > min_tissue:
            continue
        kept.append(int(index))
        largest = sorted(children, key=lambda j: areas[j], reverse=True)[:max_n_holes]
        kept_holes.append([j for j in largest if areas[j] > min_hole])
    return kept, kept_holes


def _select(count: int, keep_ids: tuple[int, ...], exclude_ids: tuple[int, ...]) -> list[int]:
    """``keep_ids`` minus ``exclude_ids`` (or all minus excluded) in the iteration order of that set."""
    chosen = set(keep_ids) - set(exclude_ids) if keep_ids else set(range(count)) - set(exclude_ids)
    return list(chosen)


def segment_tissue(slide: Any, params: SegmentationParams) -> Tissue:
    """Segment the slide's tissue; raises :class:`EmptySegmentation` when no contour is kept."""
    import cv2

    level = resolve_seg_level(slide, params.seg_level)
    rgb, scale, notes = _segmentation_image(slide, level)
    mask = tissue_mask(rgb, params)
    reference = int(REFERENCE_PATCH**2 / (scale[0] * scale[1]))
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    kept: list[int] = []
    kept_holes: list[list[int]] = []
    if hierarchy is not None and len(contours):
        kept, kept_holes = filter_contours(
            list(contours), hierarchy[0], params.a_t * reference, params.a_h * reference, params.max_n_holes
        )
    selected = _select(len(kept), params.keep_ids, params.exclude_ids)
    out_of_range = [i for i in selected if not 0 <= i < len(kept)]
    if out_of_range:
        raise EmptySegmentation(
            f"slide {slide.path.name}: keep_ids {sorted(out_of_range)} name contours that do not exist "
            f"({len(kept)} kept by the filters)"
        )
    factor = np.array(scale, dtype=np.float64)
    tissue = Tissue(
        contours=[(contours[kept[i]] * factor).astype(np.int32) for i in selected],
        holes=[[(contours[j] * factor).astype(np.int32) for j in kept_holes[i]] for i in selected],
        seg_level=level,
        seg_scale=(float(scale[0]), float(scale[1])),
        seg_size=(int(mask.shape[1]), int(mask.shape[0])),
        notes=notes,
    )
    if not tissue.contours:
        found = 0 if hierarchy is None else int((hierarchy[0][:, 3] == -1).sum())
        raise EmptySegmentation(
            f"slide {slide.path.name}: no tissue contour kept ({found} found at level {level}, none above "
            f"a_t={params.a_t:g} x 512^2 level-0 px); try a smaller a_t (e.g. --preset bwh_biopsy) or sthresh"
        )
    return tissue
