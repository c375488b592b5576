"""One whole-slide image: reading (OpenSlide or tifffile), resolution, and the segmentation and patching it owns.

A :class:`Slide` is the one object a slide's work goes through (TRIDENT's manner): it opens the file with the
best backend, knows its pyramid, its level-0 MPP and magnification (and where each came from), reads regions in
OpenSlide's conventions (level-0 location, size at the level, black outside the slide), retries a corrupt tile
and then either fails the slide or substitutes a white tile and counts it, and hands its pixels to the
segmentation and patching in :mod:`.segmentation` and :mod:`.patching`.

Backends:

* ``openslide``: every format OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...), through the PyPI
  wheels ``openslide-python`` + ``openslide-bin`` (no system library);
* ``tiff``: plain and OME TIFFs through tifffile (pyramids as SubIFDs or as reduced pages, tiled or stripped),
  tile by tile, for the files OpenSlide refuses (a stripped TIFF, an OME pyramid in SubIFDs).
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptTile, MagnificationUnknown, SlideUnreadable

BACKENDS = ("auto", "openslide", "tiff")
BAD_TILE_POLICIES = ("skip-slide", "replace")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
STANDARD_MAGNIFICATIONS = (80.0, 60.0, 40.0, 20.0, 10.0, 5.0, 2.5, 1.25)
PLAUSIBLE_MPP = (0.01, 100.0)  # um/px; a TIFF's default 72 dpi (352 um/px) is no scanner's


def slide_id_of(path: Path) -> str:
    """CLAM's slide id: the file name without its last extension."""
    return Path(path).name.rsplit(".", 1)[0] if "." in Path(path).name else Path(path).name


def nominal_magnification(mpp: float) -> float:
    """The standard objective magnification nearest (in log scale) to ``10 / mpp`` (0.25 um/px -> 40x)."""
    target = 10.0 / mpp
    return min(STANDARD_MAGNIFICATIONS, key=lambda m: abs(math.log(target / m)))


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is, recorded with every bag: backend, vendor, pyramid, resolution and their sources."""

    slide_id: str
    backend: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    mpp_source: str
    magnification: float | None
    magnification_source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "slide_id": self.slide_id,
            "backend": self.backend,
            "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "magnification": self.magnification,
            "magnification_source": self.magnification_source,
        }


class Slide:
    """A whole-slide image open for reading; use as a context manager or call :meth:`close`.

    Args:
        path: the slide file.
        backend: ``auto`` (OpenSlide when it recognises the file, else tifffile for TIFFs), ``openslide``, ``tiff``.
        mpp: level-0 microns per pixel, overriding the file's (for files that do not record it).
        magnification: level-0 objective magnification, overriding the file's.
        tile_retries: re-open the file and re-read a failing region this many times before giving up on it.
        on_bad_tile: ``skip-slide`` raises :class:`CorruptTile`; ``replace`` returns a white region and counts it
            in :attr:`replaced_regions`.
    """

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        mpp: float | None = None,
        magnification: float | None = None,
        tile_retries: int = 2,
        on_bad_tile: str = "skip-slide",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        if on_bad_tile not in BAD_TILE_POLICIES:
            raise ValueError(f"on_bad_tile {on_bad_tile!r} is not one of {BAD_TILE_POLICIES}")
        self.path = Path(path)
        self.slide_id = slide_id_of(self.path)
        self.tile_retries = int(tile_retries)
        self.on_bad_tile = on_bad_tile
        self.replaced_regions = 0
        self._options = {"backend": backend, "mpp": mpp, "magnification": magnification}
        if not self.path.is_file():
            raise SlideUnreadable(f"slide {self.path.name}: no such file")
        self._reader = _open_backend(self.path, backend)
        self.backend = self._reader.name
        self.level_dimensions: tuple[tuple[int, int], ...] = self._reader.level_dimensions
        self.level_count = len(self.level_dimensions)
        self.level_downsamples: tuple[float, ...] = self._reader.level_downsamples
        width0, height0 = self.level_dimensions[0]
        # Per-axis downsample of each level, estimated from its size (what CLAM uses everywhere).
        self.level_scales: tuple[tuple[float, float], ...] = tuple(
            (width0 / w, height0 / h) for w, h in self.level_dimensions
        )
        file_mpp, self.mpp_source = self._reader.mpp()
        self.mpp = float(mpp) if mpp is not None else file_mpp
        if mpp is not None:
            self.mpp_source = "given"
        file_mag, self.magnification_source = self._reader.objective_power()
        if magnification is not None:
            self.magnification, self.magnification_source = float(magnification), "given"
        elif file_mag is not None:
            self.magnification = file_mag
        elif self.mpp is not None:
            self.magnification, self.magnification_source = nominal_magnification(self.mpp), "from mpp"
        else:
            self.magnification, self.magnification_source = None, "unknown"

    # ---------------------------------------------------------------------------------------- identity
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def vendor(self) -> str:
        return self._reader.vendor

    def info(self) -> SlideInfo:
        return SlideInfo(
            self.slide_id,
            self.backend,
            self.vendor,
            self.level_dimensions,
            self.level_downsamples,
            self.mpp,
            self.mpp_source,
            self.magnification,
            self.magnification_source,
        )

    def require_magnification(self) -> float:
        """Level-0 magnification, or :class:`MagnificationUnknown` naming the slide and the way out."""
        if self.magnification is None:
            raise MagnificationUnknown(
                f"slide {self.path.name}: level-0 magnification unknown (the file records neither MPP nor objective "
                "power); pass its mpp or magnification as reader options, or patch in CLAM-compatible level mode"
            )
        return self.magnification

    def best_level_for_downsample(self, downsample: float) -> int:
        """OpenSlide's rule: the level with the largest downsample not above ``downsample`` (level 0 if none)."""
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            if level_ds <= downsample:
                best = level
            else:
                break
        return best

    # ---------------------------------------------------------------------------------------- pixels
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``(h, w, 3)`` uint8 at ``level`` whose top-left is ``location`` in level-0 pixels; black outside."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} is outside the slide's {self.level_count} levels")
        attempts = self.tile_retries + 1
        for _attempt in range(attempts):
            try:
                return self._reader.read_region((int(location[0]), int(location[1])), level, size)
            except Exception as exc:  # noqa: BLE001 - any decoder error is a bad region of this slide
                error = exc
                self._reopen()  # OpenSlide's errors stick to the handle: a fresh one for the retry or the next read
        if self.on_bad_tile == "replace":
            self.replaced_regions += 1
            return np.full((int(size[1]), int(size[0]), 3), 255, dtype=np.uint8)
        raise CorruptTile(
            f"slide {self.path.name}: region at ({location[0]}, {location[1]}) level {level} unreadable after "
            f"{attempts} tries ({type(error).__name__}: {str(error)[:120]})"
        )

    def read_level(self, level: int) -> np.ndarray:
        """The whole level as one RGB array (for segmentation at a coarse level)."""
        width, height = self.level_dimensions[level]
        return self.read_region((0, 0), level, (width, height))

    def _reopen(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001 - a broken handle may fail to close; it is replaced anyway
            pass
        self._reader = _open_backend(self.path, self.backend)

    # ------------------------------------------------------------------------------ segmentation, patches
    def segment(self, params: Any = None) -> Any:
        """CLAM-compatible tissue segmentation (see :func:`.segmentation.segment_tissue`)."""
        from .segmentation import SegmentationParams, segment_tissue

        return segment_tissue(self, params or SegmentationParams())

    def patch_coords(self, tissue: Any, params: Any = None) -> Any:
        """Patch coordinates over ``tissue`` (see :func:`.patching.patch_coords`)."""
        from .patching import PatchParams, patch_coords

        return patch_coords(self, tissue, params or PatchParams())

    # ---------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reopen_options(self) -> dict[str, Any]:
        """What another process needs to open the same slide the same way."""
        return {
            "path": str(self.path),
            **self._options,
            "tile_retries": self.tile_retries,
            "on_bad_tile": self.on_bad_tile,
        }


# =================================================================================================== backends
def _open_backend(path: Path, backend: str) -> Any:
    # OpenSlide reads an OME pyramid's SubIFDs as a single level: tifffile sees the whole pyramid.
    if backend == "auto" and path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        backend = "tiff"
    if backend in ("auto", "openslide"):
        try:
            import openslide
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            if backend == "openslide":
                raise SlideUnreadable(f"slide {path.name}: openslide is not installed ({exc})") from None
        else:
            fmt = openslide.OpenSlide.detect_format(str(path))
            if fmt is not None:
                try:
                    return _OpenSlideReader(path, fmt)
                except openslide.OpenSlideError as exc:
                    if backend == "openslide" or not path.name.lower().endswith(TIFF_SUFFIXES):
                        raise SlideUnreadable(f"slide {path.name}: OpenSlide cannot open it ({exc})") from None
            elif backend == "openslide":
                raise SlideUnreadable(f"slide {path.name}: not a format OpenSlide reads")
    try:
        return _TiffReader(path)
    except SlideUnreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on foreign or damaged files
        raise SlideUnreadable(
            f"slide {path.name}: neither OpenSlide nor tifffile can read it ({type(exc).__name__}: {str(exc)[:160]})"
        ) from None


def _mpp_from_resolution(value: Any, unit: Any) -> float | None:
    """MPP from a TIFF XResolution (pixels per unit) and ResolutionUnit (2 inch, 3 centimetre)."""
    try:
        if isinstance(value, tuple):
            value = value[0] / value[1]
        pixels_per_unit = float(value)
        unit_code = int(getattr(unit, "value", unit))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if pixels_per_unit <= 0 or unit_code not in (2, 3):
        return None
    microns = 25400.0 if unit_code == 2 else 10000.0
    return _plausible(microns / pixels_per_unit)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not PLAUSIBLE_MPP[0] < mpp < PLAUSIBLE_MPP[1]:
        return None
    return float(mpp)


class _OpenSlideReader:
    name = "openslide"

    def __init__(self, path: Path, fmt: str):
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.vendor = fmt
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)

    def mpp(self) -> tuple[float | None, str]:
        props = self._slide.properties
        for key in ("openslide.mpp-x", "aperio.MPP", "openslide.mirax.MPP"):
            try:
                value = _plausible(float(props[key]))
            except (KeyError, ValueError):
                continue
            if value is not None:
                return value, key
        value = _mpp_from_resolution(props.get("tiff.XResolution"), _unit_code(props.get("tiff.ResolutionUnit")))
        return (value, "tiff.XResolution") if value is not None else (None, "unknown")

    def objective_power(self) -> tuple[float | None, str]:
        for key in ("openslide.objective-power", "aperio.AppMag"):
            try:
                value = float(self._slide.properties[key])
            except (KeyError, ValueError):
                continue
            if value > 0:
                return value, key
        return None, "unknown"

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        image = self._slide.read_region(location, level, (int(size[0]), int(size[1])))
        return np.asarray(image.convert("RGB"))

    def close(self) -> None:
        self._slide.close()


def _unit_code(text: Any) -> int | None:
    if text is None:
        return None
    return {"inch": 2, "centimeter": 3, "cm": 3}.get(str(text).strip().lower())


class _TiffReader:
    """Tile-by-tile reading of plain and OME TIFF pyramids with tifffile (decoded tiles kept in a small LRU)."""

    name = "tiff"
    vendor = "tiff"

    def __init__(self, path: Path, cache_tiles: int = 64):
        import tifffile

        self._file = tifffile.TiffFile(str(path))
        series = self._file.series[0] if self._file.series else None
        if series is None:
            raise SlideUnreadable(f"slide {path.name}: the TIFF holds no image")
        levels = list(series.levels) if len(series.levels) > 1 else [series]
        self._pages = [level.keyframe for level in levels]
        for page in self._pages:
            if page.shape[-1] not in (3, 4) or len(page.shape) != 3 or page.dtype != np.uint8:
                raise SlideUnreadable(
                    f"slide {path.name}: expected 8-bit RGB(A) pages, found shape {page.shape} dtype {page.dtype}"
                )
        self.vendor = "ome-tiff" if self._file.is_ome else "tiff"
        self.level_dimensions = tuple((int(p.shape[1]), int(p.shape[0])) for p in self._pages)
        width0, height0 = self.level_dimensions[0]
        self.level_downsamples = tuple((width0 / w + height0 / h) / 2 for w, h in self.level_dimensions)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_tiles

    def mpp(self) -> tuple[float | None, str]:
        if self._file.is_ome:
            found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', self._file.ome_metadata or "")
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', self._file.ome_metadata or "")
            if found:
                scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm")
                value = _plausible(float(found.group(1)) * scale) if scale else None
                if value is not None:
                    return value, "ome.PhysicalSizeX"
        description = self._pages[0].description or ""
        found = re.search(r"MPP\s*=\s*([0-9.]+)", description)
        if found and _plausible(float(found.group(1))):
            return float(found.group(1)), "description MPP"
        tags = self._pages[0].tags
        resolution, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if resolution is not None and unit is not None:
            value = _mpp_from_resolution(resolution.value, unit.value)
            if value is not None:
                return value, "tiff.XResolution"
        return None, "unknown"

    def objective_power(self) -> tuple[float | None, str]:
        if self._file.is_ome:
            found = re.search(r'NominalMagnification="([0-9.]+)"', self._file.ome_metadata or "")
            if found and float(found.group(1)) > 0:
                return float(found.group(1)), "ome.NominalMagnification"
        found = re.search(r"AppMag\s*=\s*([0-9.]+)", self._pages[0].description or "")
        if found and float(found.group(1)) > 0:
            return float(found.group(1)), "description AppMag"
        return None, "unknown"

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            page = self._pages[level]
            handle = self._file.filehandle
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
        decoded, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if decoded is None:  # an empty (never written) tile: glass
            decoded = np.zeros(shape, dtype=np.uint8)
        array = np.asarray(decoded).reshape(shape[-3:])
        with self._lock:
            self._cache[key] = array
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return array

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        page = self._pages[level]
        scale_x, scale_y = (
            self.level_dimensions[0][0] / self.level_dimensions[level][0],
            self.level_dimensions[0][1] / self.level_dimensions[level][1],
        )
        left, top = int(location[0] // scale_x), int(location[1] // scale_y)
        width, height = int(size[0]), int(size[1])
        out = np.zeros((height, width, 3), dtype=np.uint8)
        level_h, level_w = page.shape[0], page.shape[1]
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, level_w), min(top + height, level_h)
        if x0 >= x1 or y0 >= y1:
            return out
        if page.is_tiled:
            seg_w, seg_h = page.tilewidth, page.tilelength
        else:
            seg_w, seg_h = level_w, page.rowsperstrip or level_h
        per_row = -(-level_w // seg_w)
        for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                tile = self._segment(level, row * per_row + col)
                ty0, tx0 = row * seg_h, col * seg_w
                sy0, sy1 = max(y0, ty0), min(y1, ty0 + tile.shape[0])
                sx0, sx1 = max(x0, tx0), min(x1, tx0 + tile.shape[1])
                if sy0 >= sy1 or sx0 >= sx1:
                    continue
                block = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0, :3]
                out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = block
        return out

    def close(self) -> None:
        self._file.close()
