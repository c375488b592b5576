"""Synthetic raw files for the demo cohort: x-rays (PNG, DICOM), time series (.npz), slides (TIFF), CT (NIfTI).

Every writer turns one sample's modality-specific view of the latent risk (``view``: higher = sicker) and a
private random generator into bytes. Nothing time-dependent is written (no file dates, zip timestamps, gzip
mtimes or DICOM dates), so a build is bit-for-bit reproducible.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

TIMESERIES_HOURS = 48
# name, baseline, shift per unit of risk, extra drift over 48 h per unit of risk, noise sd, observed fraction
TIMESERIES_VARIABLES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("heart_rate", 82.0, 9.0, 6.0, 4.0, 0.9),
    ("sbp", 124.0, -9.0, -6.0, 6.0, 0.85),
    ("dbp", 70.0, -5.0, -3.0, 4.0, 0.85),
    ("resp_rate", 17.0, 2.5, 1.5, 1.5, 0.8),
    ("spo2", 97.0, -1.5, -1.0, 0.8, 0.9),
    ("temperature", 37.0, 0.35, 0.2, 0.2, 0.3),
    ("gcs", 14.2, -1.2, -0.6, 0.4, 0.2),
    ("glucose", 130.0, 14.0, 5.0, 15.0, 0.12),
    ("creatinine", 1.0, 0.35, 0.2, 0.08, 0.06),
    ("lactate", 1.4, 0.7, 0.4, 0.15, 0.06),
    ("wbc", 9.0, 2.4, 1.0, 0.8, 0.06),
    ("urine_output", 85.0, -18.0, -10.0, 12.0, 0.5),
)
CLIPS = {"spo2": (60.0, 100.0), "gcs": (3.0, 15.0)}

WSI_SIZE = 1024
WSI_LEVELS = 3
WSI_TILE = 256
WSI_PIXELS_PER_CM = 20000.0  # 0.5 um per pixel at level 0
CT_SHAPE = (48, 48, 32)
CT_SPACING_MM = (1.5, 1.5, 3.0)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


# ----------------------------------------------------------------------------------------------- x-ray
def chest_xray(view: float, rng: np.random.Generator) -> np.ndarray:
    """A float image in [0, 1]: body, two dark lung fields with ribs, a bright mediastinum and an opacity.

    The opacity's radius and brightness grow with ``view``; image size and aspect ratio vary per sample.
    """
    height = int(rng.integers(180, 321))
    width = int(np.clip(height * rng.uniform(0.75, 1.3), 180, 320))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy = yy / (height - 1) * 2 - 1
    xx = xx / (width - 1) * 2 - 1 + rng.normal(0, 0.03)
    image = np.full((height, width), 0.05, dtype=np.float32)
    body = (xx / 0.92) ** 2 + ((yy - 0.1) / 1.05) ** 2 < 1
    image[body] = 0.55
    ribs = 0.06 * (np.sin(yy * 22 + rng.uniform(0, 6.3)) > 0.6)
    for side in (-1, 1):
        lung = ((xx - side * 0.42) / 0.3) ** 2 + ((yy + 0.05) / 0.62) ** 2 < 1
        image[lung] = 0.18 + ribs[lung]
    mediastinum = body & (np.abs(xx) < 0.1)
    image[mediastinum] = 0.7
    strength = _sigmoid(1.4 * view - 0.5)
    side = rng.choice((-1, 1))
    cy, cx = rng.uniform(-0.3, 0.35), side * rng.uniform(0.3, 0.5)
    radius = 0.06 + 0.2 * strength
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
    image += (0.1 + 0.45 * strength) * blob
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def xray_png_bytes(view: float, rng: np.random.Generator, sixteen_bit: bool) -> bytes:
    """PNG bytes, 8-bit grey or (full-range) 16-bit grey."""
    image = chest_xray(view, rng)
    if sixteen_bit:
        pil = Image.fromarray(np.round(image * 65535).astype(np.uint16))
    else:
        pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def xray_dicom_bytes(
    view: float, rng: np.random.Generator, sample_id: str, seed: int, monochrome1: bool, voi_window: bool
) -> bytes:
    """A 12-bit CR DICOM; MONOCHROME1 stores inverted grey levels, a VOI window narrows the displayed range."""
    stored = np.round(chest_xray(view, rng) * 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    uid = generate_uid(entropy_srcs=[f"adacomed-demo:{seed}:{sample_id}:sop"])
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"adacomed-demo:{seed}:{sample_id}:study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"adacomed-demo:{seed}:{sample_id}:series"])
    ds.Modality = "CR"
    ds.PatientID = sample_id
    ds.PatientName = "Synthetic^Demo"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.7, 0.7]
    if voi_window:
        ds.WindowCenter = 2048
        ds.WindowWidth = 3600
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ time series
def timeseries_arrays(view: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """48 hourly rows of 12 variables; NaN where not observed (vitals mostly, GCS sometimes, labs rarely).

    Sicker samples start further from normal and drift further over the stay.
    """
    hours = np.arange(TIMESERIES_HOURS, dtype=np.float32)
    progress = hours / (TIMESERIES_HOURS - 1)
    columns = []
    for name, base, shift, drift, noise, observed in TIMESERIES_VARIABLES:
        level = base + shift * view + drift * view * progress
        wander = np.cumsum(rng.normal(0, noise * 0.25, TIMESERIES_HOURS))
        series = level + wander + rng.normal(0, noise, TIMESERIES_HOURS)
        low, high = CLIPS.get(name, (0.0, np.inf))
        series = np.clip(series, low, high)
        seen = rng.random(TIMESERIES_HOURS) < observed
        seen[int(rng.integers(0, 6))] = True  # every variable is measured at least once near admission
        if observed < 0.1 and rng.random() < 0.15 - 0.1 * view:
            seen[:] = False  # some labs are never ordered for low-risk stays
        columns.append(np.where(seen, series, np.nan))
    values = np.stack(columns, axis=1).astype(np.float32)
    variables = np.array([v[0] for v in TIMESERIES_VARIABLES], dtype=np.str_)
    return {"values": values, "hours": hours, "variables": variables}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` with fixed zip timestamps (``np.savez`` stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- WSI
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def slide_rgb(view: float, rng: np.random.Generator, size: int = WSI_SIZE) -> np.ndarray:
    """An H&E-like RGB image: pink tissue blobs with a hole on near-white glass, purple nuclei.

    Nuclear density and darkness grow with ``view``. Shapes are drawn on a coarse grid and upsampled (speed).
    """
    coarse = size // 4
    yy, xx = np.mgrid[0:coarse, 0:coarse].astype(np.float32) / coarse
    wobble = _smooth_noise(rng, coarse, 6) * 0.35
    field = np.full((coarse, coarse), np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ry, rx = rng.uniform(0.15, 0.32, 2)
        field = np.minimum(field, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + wobble)
    hy, hx = rng.uniform(0.4, 0.6, 2)
    hole = ((yy - hy) / 0.07) ** 2 + ((xx - hx) / 0.09) ** 2  # a vessel lumen or tear
    inside = np.maximum(field, 2.0 - hole).astype(np.float32)  # < 1 exactly on tissue
    tissue = np.asarray(Image.fromarray(inside, mode="F").resize((size, size), Image.BILINEAR)) < 1

    image = np.empty((size, size, 3), dtype=np.uint8)
    stain = _smooth_noise(rng, size, 12) * 25.0
    for channel, (glass, eosin) in enumerate(((242, 232), (240, 160), (244, 196))):
        image[..., channel] = np.where(tissue, (eosin - stain).astype(np.uint8), np.uint8(glass))

    strength = _sigmoid(1.3 * view)
    count = int(tissue.sum() * (0.003 + 0.01 * strength))
    ys = rng.integers(0, size, count)
    xs = rng.integers(0, size, count)
    keep = tissue[ys, xs]
    ys, xs = ys[keep], xs[keep]
    nuclei = np.zeros((size, size), dtype=bool)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if dy * dy + dx * dx <= 9:
                nuclei[np.clip(ys + dy, 0, size - 1), np.clip(xs + dx, 0, size - 1)] = True
    nuclei &= tissue
    image[nuclei] = np.round(np.array([110.0, 70.0, 150.0]) - 50.0 * strength).astype(np.uint8)
    return image


def _halve(image: np.ndarray) -> np.ndarray:
    """Box-filter downsampling by two (how slide pyramids are usually built)."""
    return np.asarray(Image.fromarray(image).reduce(2))


def wsi_tiff_bytes(view: float, rng: np.random.Generator) -> bytes:
    """A tiled, zlib-compressed pyramidal TIFF: level 0 then reduced levels, each a top-level page."""
    level = slide_rgb(view, rng)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for index in range(WSI_LEVELS):
            if index:
                level = _halve(level)
            scale = WSI_PIXELS_PER_CM / 2**index
            tif.write(
                level,
                photometric="rgb",
                tile=(WSI_TILE, WSI_TILE),
                compression="zlib",
                compressionargs={"level": 1},
                resolution=(scale, scale),
                resolutionunit="CENTIMETER",
                subfiletype=1 if index else 0,
                metadata=None,
                software="adacomed-demo",
            )
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------------- CT
def ct_volume(view: float, rng: np.random.Generator) -> np.ndarray:
    """An int16 HU volume (x, y, z): body, fat rim, spine, two kidneys and a lesion whose radius follows ``view``."""
    nx, ny, nz = CT_SHAPE
    x, y, z = np.meshgrid(
        (np.arange(nx) - nx / 2) * CT_SPACING_MM[0],
        (np.arange(ny) - ny / 2) * CT_SPACING_MM[1],
        (np.arange(nz) - nz / 2) * CT_SPACING_MM[2],
        indexing="ij",
    )
    volume = np.full(CT_SHAPE, -1000.0, dtype=np.float32)
    body = (x / 34) ** 2 + (y / 28) ** 2 < 1
    volume[body] = -90.0
    volume[(x / 31) ** 2 + (y / 25) ** 2 < 1] = 40.0
    volume[(x / 5) ** 2 + ((y - 14) / 5) ** 2 < 1] = 450.0
    lesion_side = rng.choice((-1, 1))
    radius = 3.0 + 9.0 * _sigmoid(1.4 * view - 0.3)
    for side in (-1, 1):
        kx, ky = side * 16.0, 8.0
        kidney = ((x - kx) / 7) ** 2 + ((y - ky) / 10) ** 2 + (z / 30) ** 2 < 1
        volume[kidney] = 160.0  # enhancing cortex
        if side == lesion_side:
            lz = rng.uniform(-15, 15)
            lesion = (x - kx - side * 4) ** 2 + (y - ky) ** 2 + (z - lz) ** 2 < radius**2
            volume[lesion & body] = 35.0
    volume += rng.normal(0, 12, CT_SHAPE).astype(np.float32)
    return np.clip(np.round(volume), -1024, 3071).astype(np.int16)


def ct_nifti_gz_bytes(view: float, rng: np.random.Generator) -> bytes:
    """A gzipped NIfTI-1 with a 1.5 x 1.5 x 3 mm affine; gzip mtime fixed at 0, fast compression."""
    affine = np.diag([*CT_SPACING_MM, 1.0])
    affine[:3, 3] = [-(n / 2) * s for n, s in zip(CT_SHAPE, CT_SPACING_MM)]
    image = nib.Nifti1Image(ct_volume(view, rng), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
