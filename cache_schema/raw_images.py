"""Decoding of image pointers: PNG/JPEG (8/16-bit grey or RGB) and DICOM into one 8-bit RGB PIL image.

It lives in the contract because both stages read the same manifest pointers: the large encoders (stage one)
and the small model's prepared inputs (stage two) must see the same pixels, and ``extract`` and ``train`` never
import each other. Every image encoder starts from the same display-ready picture, so a DICOM and the PNG
exported from it give close embeddings: DICOM pixels go through the modality LUT (rescale) and the VOI LUT
(window) the scanner declared, MONOCHROME1 is inverted so bone is bright, and the result is scaled to 0-255.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# Modes PIL hands back for 16/32-bit single-channel images; they are scaled by their own min/max.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_xray(path: Path | str) -> Image.Image:
    """Read one X-ray file into an RGB 8-bit image; raise :class:`InputError` naming the file and the cause."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except FileNotFoundError:
        raise InputError(f"image file not found: {path.name}", "read") from None
    except OSError as exc:
        raise InputError(f"cannot read image file {path.name}: {exc.strerror or exc}", "read") from None
    has_magic = head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC
    if has_magic or path.suffix.lower() == ".dcm":
        return _read_dicom(path, force=not has_magic)
    return _read_bitmap(path)


def is_dicom(path: Path | str) -> bool:
    """True when the file carries the DICOM preamble magic or the ``.dcm`` suffix."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC
    except OSError:
        return False


# ----------------------------------------------------------------- bitmaps
def _read_bitmap(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb8(img)
    except UnidentifiedImageError:
        raise InputError(f"{path.name} is not a readable image (PNG/JPEG/DICOM expected)", "decode") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise InputError(f"cannot decode image {path.name}: {exc}", "decode") from None


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB uint8; wide grey modes are stretched by their own min/max."""
    if img.mode in _WIDE_GREY_MODES:
        return grey_to_rgb(scale_to_uint8(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA").convert("RGB")  # drop alpha without blending
    return img.convert("RGB")


def scale_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map ``[low, high]`` (default: the array's own min/max) to 0-255; a flat image becomes 0."""
    values = np.asarray(values, dtype=np.float64)
    low = float(np.min(values)) if low is None else low
    high = float(np.max(values)) if high is None else high
    if not np.isfinite(low) or not np.isfinite(high):
        raise InputError("image holds non-finite pixel values", "decode")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")


# ------------------------------------------------------------------- DICOM
def _read_dicom(path: Path, force: bool) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=force)
    except InvalidDicomError as exc:
        raise InputError(f"{path.name} is not a valid DICOM file: {exc}", "decode") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise InputError(f"cannot parse DICOM {path.name}: {exc}", "decode") from None
    if "PixelData" not in ds:
        raise InputError(f"DICOM {path.name} has no pixel data", "decode")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for codecs and malformed data
        raise InputError(f"cannot decode DICOM pixels of {path.name}: {type(exc).__name__}: {exc}", "decode") from None

    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1 and pixels.ndim == 3:
        pixels = pixels[0]  # multi-frame: the first frame is the projection radiograph
    elif samples == 3 and pixels.ndim == 4:
        pixels = pixels[0]
    if samples == 3:  # colour DICOM: 8-bit stays as stored; deeper data is scaled by its own range
        rgb = pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    if pixels.ndim != 2:
        raise InputError(f"DICOM {path.name} pixel array has unexpected shape {pixels.shape}", "decode")
    try:
        grey = dicom_grey_to_uint8(pixels, ds)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"cannot apply the LUTs of DICOM {path.name}: {exc}", "decode") from None
    return grey_to_rgb(grey)


def dicom_grey_to_uint8(pixels: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT, then VOI LUT/window, then 0-255, then MONOCHROME1 inversion.

    With a VOI transform the 0-255 scale spans the VOI output range (so the window is the display range, as a
    viewer would show it); without one it spans the image's own min/max.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, ds)
    if has_voi(ds):
        values = apply_voi_lut(values, ds)
        low, high = _voi_output_range(values, ds)
        grey = scale_to_uint8(values, low, high)
    else:
        grey = scale_to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        grey = 255 - grey
    return grey


def has_voi(ds: Any) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_output_range(values: np.ndarray, ds: Any) -> tuple[float, float]:
    """The range the VOI transform maps into: a LUT's outputs over its whole input domain, or a window's bounds."""
    from pydicom.pixels import apply_voi_lut

    lut_items = ds.get("VOILUTSequence")
    if lut_items:
        entries, first_mapped = int(lut_items[0].LUTDescriptor[0]), int(lut_items[0].LUTDescriptor[1])
        domain = np.arange(first_mapped, first_mapped + (entries or 65536), dtype=np.int64)
    else:
        domain = np.array([-1e12, 1e12], dtype=np.float64)  # a window clips these to its output bounds
    try:
        bounds = np.asarray(apply_voi_lut(domain, ds), dtype=np.float64)
        low, high = float(bounds.min()), float(bounds.max())
    except (ValueError, IndexError, OverflowError, TypeError, AttributeError):
        low, high = float(np.min(values)), float(np.max(values))
    if not high > low:
        low, high = float(np.min(values)), float(np.max(values))
    return low, high
