"""X-ray reader (PNG/JPEG/DICOM) for the image encoders.

The decoder itself is :mod:`adacomed.cache_schema.raw_images`: both stages read the same manifest pointers, so
the large encoders here and the small model's prepared inputs in ``train`` decode the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...cache_schema.raw_images import dicom_grey_to_uint8, grey_to_rgb, is_dicom, read_xray, scale_to_uint8
from .base import InputReader, ReaderSpec, register_reader

__all__ = ["XrayReader", "dicom_grey_to_uint8", "grey_to_rgb", "is_dicom", "read_xray", "scale_to_uint8"]


@register_reader
class XrayReader(InputReader):
    """A radiograph as an 8-bit RGB PIL image (DICOM: rescale, VOI LUT/window, MONOCHROME1 inverted)."""

    spec = ReaderSpec("xray", version="1", description="X-ray images: PNG/JPEG (8/16-bit) and DICOM")

    def read(self, pointer: Any) -> Image.Image:
        return read_xray(Path(pointer))

    def parameters(self) -> dict[str, Any]:
        return {"reader": "read_xray/1"}  # the name caches were keyed with before the reader registry

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        png = folder / "cxr.png"
        Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(png)
        dcm = _write_example_dicom(folder / "cxr.dcm", rng.integers(0, 4096, (96, 80)).astype(np.uint16))
        return [png, dcm]


def _write_example_dicom(path: Path, stored: np.ndarray) -> Path:
    """A 12-bit MONOCHROME1 radiograph with a VOI window: the DICOM path's less common branches."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["adacomed-xray-example"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 1024
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
