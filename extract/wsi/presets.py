"""CLAM's segmentation presets, by name or from a preset CSV in CLAM's own columns.

A preset is one row of CLAM's ``presets/*.csv`` columns: ``seg_level, sthresh, mthresh, close, use_otsu, a_t,
a_h, max_n_holes, vis_level, line_thickness, white_thresh, black_thresh, use_padding, contour_fn, keep_ids,
exclude_ids``. The built-in names carry CLAM's documented values; a lab's own CSV works unchanged. Read as CLAM
reads them: ``a_t`` and ``a_h`` are truncated to integers, ``keep_ids`` / ``exclude_ids`` are ``none`` or
comma-separated contour indices; ``vis_level``, ``line_thickness``, ``white_thresh`` and ``black_thresh`` do not
change coordinates and are ignored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .patching import PatchParams
from .segmentation import SegmentationParams

CLAM_COLUMNS = (
    "seg_level",
    "sthresh",
    "mthresh",
    "close",
    "use_otsu",
    "a_t",
    "a_h",
    "max_n_holes",
    "vis_level",
    "line_thickness",
    "white_thresh",
    "black_thresh",
    "use_padding",
    "contour_fn",
    "keep_ids",
    "exclude_ids",
)
DISPLAY_ONLY = ("vis_level", "line_thickness", "white_thresh", "black_thresh")


@dataclass(frozen=True)
class Preset:
    """A named bundle of segmentation parameters and CLAM's two patch options (padding, contour test)."""

    name: str
    segmentation: SegmentationParams
    use_padding: bool = True
    contour_fn: str = "four_pt"

    def patch_params(self, **overrides: Any) -> PatchParams:
        return PatchParams(use_padding=self.use_padding, contour_fn=self.contour_fn, **overrides)

    def with_overrides(self, **values: Any) -> Preset:
        """Override any segmentation field or ``use_padding`` / ``contour_fn`` (unknown names: ``ValueError``)."""
        seg_fields = set(SegmentationParams.__dataclass_fields__)
        unknown = set(values) - seg_fields - {"use_padding", "contour_fn"}
        if unknown:
            raise ValueError(f"unknown preset fields {sorted(unknown)}")
        seg = {k: v for k, v in values.items() if k in seg_fields}
        top = {k: v for k, v in values.items() if k not in seg_fields}
        return replace(self, segmentation=replace(self.segmentation, **seg), **top)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.segmentation.as_dict(),
            "use_padding": self.use_padding,
            "contour_fn": self.contour_fn,
        }


# CLAM's create_patches_fp.py defaults and presets/{tcga,bwh_biopsy,bwh_resection}.csv (documented values).
BUILTIN: dict[str, Preset] = {
    "default": Preset("default", SegmentationParams()),
    "tcga": Preset("tcga", SegmentationParams(a_t=16, a_h=4)),
    "bwh_biopsy": Preset(
        "bwh_biopsy", SegmentationParams(sthresh=15, mthresh=11, close=2, a_t=1, a_h=1, max_n_holes=2)
    ),
    "bwh_resection": Preset("bwh_resection", SegmentationParams(sthresh=15, mthresh=11, close=4)),
}


def _bool(value: str, column: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"column {column}: {value!r} is not TRUE or FALSE")


def parse_ids(value: Any) -> tuple[int, ...]:
    """``none`` / empty -> (); ``"0,2"`` or ``2`` -> (0, 2) / (2,)."""
    text = str(value).strip().strip('"')
    if text.lower() in ("", "none", "nan"):
        return ()
    try:
        return tuple(int(float(part)) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"contour ids {text!r} are not comma-separated integers") from None


def preset_from_row(row: dict[str, str], name: str) -> Preset:
    """One CSV row (CLAM's columns; absent ones keep CLAM's defaults) -> :class:`Preset`."""
    base = BUILTIN["default"]
    seg: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for column, raw in row.items():
        column = (column or "").strip()
        value = (raw or "").strip()
        if column in DISPLAY_ONLY or column in ("", "slide_id", "process", "status"):
            continue
        if column not in CLAM_COLUMNS:
            raise ValueError(f"{name}: unknown column {column!r}; CLAM's columns are {', '.join(CLAM_COLUMNS)}")
        try:
            if column in ("seg_level", "sthresh", "mthresh", "close", "max_n_holes", "a_t", "a_h"):
                seg[column] = int(float(value))  # CLAM truncates a_t and a_h to integers
            elif column == "use_otsu":
                seg[column] = _bool(value, column)
            elif column in ("keep_ids", "exclude_ids"):
                seg[column] = parse_ids(value)
            elif column == "use_padding":
                top[column] = _bool(value, column)
            elif column == "contour_fn":
                top[column] = value
        except ValueError as exc:
            raise ValueError(f"{name}: column {column}: {exc}") from None
    return Preset(name, replace(base.segmentation, **seg), **{"use_padding": base.use_padding, **top})


def read_preset_csv(path: Path) -> Preset:
    """The first row of a CLAM preset CSV."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"preset {path}: no row under the header")
    return preset_from_row(rows[0], Path(path).stem)


def load_preset(name_or_path: str | Path | None) -> Preset:
    """A built-in name (``default``, ``tcga``, ``bwh_biopsy``, ``bwh_resection``; ``tcga.csv`` works too) or a
    path to a CLAM preset CSV."""
    if name_or_path is None or str(name_or_path) == "":
        return BUILTIN["default"]
    text = str(name_or_path)
    key = text[:-4] if text.endswith(".csv") and "/" not in text else text
    if key in BUILTIN and not Path(text).is_file():
        return BUILTIN[key]
    path = Path(text).expanduser()
    if path.is_file():
        return read_preset_csv(path)
    raise ValueError(f"preset {text!r} is neither one of {sorted(BUILTIN)} nor a CSV file")
