"""Whole-slide images: open (OpenSlide formats, plain / OME TIFF), segment and patch the way CLAM does.

``read`` gives a :class:`~adacomed.extract.wsi.patcher.PatchedSlide` (the slide's resolution, tissue summary and
patch grid); the pixels are read later by the encoder's worker processes. Options (``--option k=v``): ``preset``
(``default``, ``tcga``, ``bwh_biopsy``, ``bwh_resection`` or a CLAM preset CSV), any of CLAM's segmentation
fields (``sthresh``, ``mthresh``, ``close``, ``use_otsu``, ``a_t``, ``a_h``, ``max_n_holes``, ``seg_level``,
``keep_ids``, ``exclude_ids``, ``use_padding``, ``contour_fn``), CLAM's patching (``patch_size``, ``step_size``,
``patch_level``), the magnification-aware mode (``magnification``, ``overlap``, ``min_tissue_proportion``), and
the slide's handling (``backend``, ``mpp``, ``tile_retries``, ``on_bad_tile``: ``skip-slide`` or ``replace``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError
from ..wsi.patcher import OPTIONS, PatchedSlide, SlidePatcher, check_pointer
from .base import InputReader, ReaderSpec, register_reader


@register_reader
class SlideReader(InputReader):
    spec = ReaderSpec(
        "slide",
        version="1",
        description="whole-slide images (OpenSlide formats, TIFF / OME-TIFF), CLAM-compatible segmentation + patches",
        options=OPTIONS,
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        try:
            self.patcher = SlidePatcher(**options)
        except ValueError as exc:
            raise ExtractError(f"reader 'slide': {exc}") from None

    def read(self, pointer: Any) -> PatchedSlide:
        return self.patcher.read(check_pointer(pointer))

    def parameters(self) -> dict[str, Any]:
        return {"reader": f"{self.spec.name}/{self.spec.version}", **self.patcher.parameters()}

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        """Two 8192 x 8192 pyramidal TIFFs (0.25 um/px) whose tissue passes CLAM's default filters (a_t = 100)."""
        folder.mkdir(parents=True, exist_ok=True)
        return [write_example_slide(folder / f"example-{seed}.tiff", seed) for seed in (0, 1)]


def write_example_slide(path: Path, seed: int, size: int = 8192) -> Path:
    """A flat-coloured synthetic slide: one large wobbly tissue blob with a hole, drawn at 1/16 and upsampled.

    Levels 1, 1/4, 1/16 as separate pages (OpenSlide's generic-tiff), 256 px zlib tiles; a tile is encoded once
    per distinct content, so writing takes about a second.
    """
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    coarse = size // 16
    yy, xx = (np.mgrid[0:coarse, 0:coarse].astype(np.float64) + 0.5) / coarse
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    radius = 0.42 + 0.04 * np.sin(3 * angle + rng.uniform(0, 6.28)) + 0.02 * np.sin(5 * angle)
    tissue = np.hypot(xx - 0.5, yy - 0.5) < radius
    hole = np.hypot(xx - rng.uniform(0.35, 0.65), yy - rng.uniform(0.35, 0.65)) < 0.08
    stain = np.array([[242, 240, 245], [226 - 30 * seed, 160, 196 - 20 * seed]], dtype=np.uint8)
    labels = (tissue & ~hole).astype(np.uint8)
    resolution = 1e4 / 0.25  # pixels per cm at level 0
    with tifffile.TiffWriter(path) as tif:
        for factor in (16, 4, 1):
            width = coarse * factor
            tiles, known = [], {}
            for top in range(0, width, 256):
                for left in range(0, width, 256):
                    rows = (np.arange(top, top + 256) // factor).clip(max=coarse - 1)
                    cols = (np.arange(left, left + 256) // factor).clip(max=coarse - 1)
                    block = labels[rows][:, cols]
                    key = block.tobytes() if block.min() == block.max() else None
                    if key is None or key not in known:
                        data = imagecodecs.zlib_encode(np.ascontiguousarray(stain[block]).tobytes(), level=1)
                        if key is not None:
                            known[key] = data
                    tiles.append(known.get(key) if key is not None else data)
            tif.write(
                iter(tiles),
                shape=(width, width, 3),
                dtype=np.uint8,
                photometric="rgb",
                tile=(256, 256),
                compression="zlib",
                resolution=(resolution / (size / width),) * 2,
                resolutionunit="CENTIMETER",
                subfiletype=0 if factor == 16 else 1,
                metadata=None,
            )
    return path
