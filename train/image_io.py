"""Small-model X-ray input: decode the image pointer, grey, letterbox to 256 x 256 uint8.

Supplement 4.2: keep the aspect ratio (the longer side becomes 256), zero-pad to 256 x 256; cropping and
normalisation happen later, inside the model, so an epoch never decodes a file. The padding is centred.
Decoding (PNG/JPEG, DICOM with modality and VOI LUTs, MONOCHROME1 inverted) is the contract's
:mod:`adacomed.cache_schema.raw_images`, the same decoder the large image encoders use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..cache_schema.errors import InputError
from ..cache_schema.raw_images import read_xray

IMAGE_SIZE = 256


class ImageReadError(ValueError):
    """The file is not a readable image; the message names the cause (never any patient data)."""


def read_grey(path: Path) -> np.ndarray:
    """A 2-D uint8 grey image from PNG/JPEG/any Pillow format or DICOM."""
    try:
        return np.asarray(read_xray(path).convert("L"))
    except InputError as exc:
        raise ImageReadError(exc.reason) from None


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
