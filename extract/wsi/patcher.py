"""From a slide file to where its patches are: open, segment, patch, with every parameter declared once.

:class:`SlidePatcher` is the whole per-slide "reading" of stage one for WSI: its options are CLAM's (a preset by
name or CSV, plus any single field overridden) and the magnification-aware ones; :meth:`SlidePatcher.read` turns
one slide path into a :class:`PatchedSlide` (the slide's identity and resolution, its tissue summary and its patch
grid), and :meth:`SlidePatcher.parameters` lists everything that changes the coordinates, for the cache key.
The pixels are read later, by the encoder's worker processes (:mod:`.patch_reader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideUnreadable
from .patching import PatchGrid, PatchParams, patch_coords
from .presets import Preset, load_preset, parse_ids
from .segmentation import Tissue, segment_tissue
from .slide import BACKENDS, BAD_TILE_POLICIES, Slide, SlideInfo

SEGMENTATION_OPTIONS = (
    "seg_level",
    "sthresh",
    "mthresh",
    "close",
    "use_otsu",
    "a_t",
    "a_h",
    "max_n_holes",
    "keep_ids",
    "exclude_ids",
    "use_padding",
    "contour_fn",
)
PATCH_OPTIONS = ("patch_size", "step_size", "patch_level", "magnification", "overlap", "min_tissue_proportion")
SLIDE_OPTIONS = ("backend", "mpp", "tile_retries", "on_bad_tile")
OPTIONS = ("preset", *SEGMENTATION_OPTIONS, *PATCH_OPTIONS, *SLIDE_OPTIONS)
INT_OPTIONS = ("seg_level", "sthresh", "mthresh", "close", "max_n_holes", "patch_size", "step_size", "patch_level")


@dataclass
class PatchedSlide:
    """One slide, segmented and patched: what the encoder needs to read and embed its patches."""

    path: Path
    info: SlideInfo
    tissue: dict[str, Any]
    grid: PatchGrid
    slide_options: dict[str, Any]  # how a worker re-opens it

    @property
    def slide_id(self) -> str:
        return self.info.slide_id

    @property
    def coords(self) -> np.ndarray:
        return self.grid.coords

    def summary(self) -> dict[str, Any]:
        """Per-slide record (resolution, segmentation, read level and size) kept beside the bag."""
        return {
            **self.info.as_dict(),
            "tissue": self.tissue,
            "patches": len(self.grid),
            "mode": self.grid.mode,
            "read_level": self.grid.read_level,
            "read_size": self.grid.read_size,
            "patch_size": self.grid.patch_size,
            "patch_size_level0": self.grid.patch_size_level0,
        }


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"option {name}={value!r} is not true or false")


class SlidePatcher:
    """Open, segment and patch slides with CLAM's rules (or by magnification); options are validated at once."""

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown slide options {unknown}; known: {', '.join(OPTIONS)}")
        preset = load_preset(options.get("preset"))
        overrides: dict[str, Any] = {}
        for name in SEGMENTATION_OPTIONS:
            if options.get(name) is None:
                continue
            value = options[name]
            if name in ("keep_ids", "exclude_ids"):
                value = parse_ids(value)
            elif name in ("use_otsu", "use_padding"):
                value = _as_bool(name, value)
            elif name in ("a_t", "a_h"):
                value = float(value)
            elif name in INT_OPTIONS:
                value = int(value)
            overrides[name] = value
        self.preset: Preset = preset.with_overrides(**overrides) if overrides else preset
        patch: dict[str, Any] = {}
        for name in PATCH_OPTIONS:
            if options.get(name) is not None:
                value = options[name]
                patch[name] = int(value) if name in INT_OPTIONS or name == "overlap" else float(value)
        self.patch_params: PatchParams = self.preset.patch_params(**patch)
        backend = str(options.get("backend") or "auto")
        if backend not in BACKENDS:
            raise ValueError(f"option backend={backend!r} is not one of {BACKENDS}")
        on_bad_tile = str(options.get("on_bad_tile") or "skip-slide")
        if on_bad_tile not in BAD_TILE_POLICIES:
            raise ValueError(f"option on_bad_tile={on_bad_tile!r} is not one of {BAD_TILE_POLICIES}")
        mpp = options.get("mpp")
        self.slide_options: dict[str, Any] = {
            "backend": backend,
            "mpp": float(mpp) if mpp is not None else None,
            "tile_retries": int(options.get("tile_retries", 2)),
            "on_bad_tile": on_bad_tile,
        }

    def parameters(self) -> dict[str, Any]:
        """Everything that changes which patches a slide gets (and how they are read)."""
        segmentation = self.preset.as_dict()
        segmentation.pop("name")  # the values decide the patches, not what the preset is called
        return {
            "segmentation": segmentation,
            "patching": self.patch_params.as_dict(),
            "slide": dict(self.slide_options),
        }

    def open(self, path: str | Path) -> Slide:
        return Slide(path, **self.slide_options)

    def read(self, pointer: Any) -> PatchedSlide:
        """Segment and patch one slide; a bad slide raises a named :class:`InputError` for the errors table."""
        path = Path(pointer)
        with self.open(path) as slide:
            if self.patch_params.mode == "magnification":
                slide.require_magnification()  # before the segmentation work
            tissue: Tissue = segment_tissue(slide, self.preset.segmentation)
            grid = patch_coords(slide, tissue, self.patch_params)
            info = slide.info()
            options = slide.reopen_options()
        return PatchedSlide(path, info, tissue.summary(), grid, options)


def check_pointer(pointer: Any) -> Path:
    if isinstance(pointer, (str, Path)):
        return Path(pointer)
    raise SlideUnreadable(f"a slide pointer must be a file path, got {type(pointer).__name__}")
