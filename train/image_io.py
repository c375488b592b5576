"""Small-model X-ray input: decode PNG/JPEG (Pillow) or DICOM (pydicom), grey, letterbox to 256 x 256 uint8.

Supplement 4.2: keep the aspect ratio (the longer side becomes 256), zero-pad to 256 x 256; cropping and
normalisation happen later, inside the model, so an epoch never decodes a file. The padding is centred. DICOM:
modality LUT, VOI LUT (window), MONOCHROME1 inverted so bone is bright, then min-max to 0..255. Stage one has its
own reader in ``extract``; this is a deliberately small private copy because ``train`` never imports ``extract``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 256


class ImageReadError(ValueError):
    """The file is not a readable image; the message names the cause (never any patient data)."""


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Min-max a grey array to uint8 (an 8-bit image is kept as it is)."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ImageReadError("pixel values contain NaN or inf")
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels - low) / (high - low) * 255.0).astype(np.uint8)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken or unsupported files
        raise ImageReadError(f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame: the first frame
    if pixels.ndim != 2:
        raise ImageReadError(f"DICOM pixel data has shape {pixels.shape}; expected one grey frame")
    pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float64)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return _to_uint8(pixels)


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _to_uint8(np.asarray(image))
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"unreadable image ({type(exc).__name__}: {exc})") from exc


def read_grey(path: Path) -> np.ndarray:
    """A 2-D uint8 grey image from PNG/JPEG/any Pillow format or DICOM."""
    if not path.is_file():
        raise ImageReadError("file not found")
    return _read_dicom(path) if _is_dicom(path) else _read_pillow(path)


def letterbox(grey: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect kept), then zero-pad, centred, to ``size x size`` uint8."""
    height, width = grey.shape
    if height == 0 or width == 0:
        raise ImageReadError("image has zero size")
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = np.asarray(Image.fromarray(grey).resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def load_xray(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode and letterbox one X-ray: uint8 [size, size]."""
    return letterbox(read_grey(path), size)
