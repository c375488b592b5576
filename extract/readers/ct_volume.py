"""CT volumes: NIfTI files and DICOM series (a folder of slices), read into one HU array with its world affine.

Reading gives a :class:`CTVolume`: float32 Hounsfield units indexed (i, j, k) and the 4x4 affine from voxel
indices to RAS+ millimetres (nibabel's convention). What a CT encoder then does with it (orientation, spacing,
intensity window, crop) is that encoder's own preprocessing, built from the helpers at the end of this module.

DICOM series: the slices of one ``SeriesInstanceUID`` in a folder, ordered by their position along the slice
normal (``ImagePositionPatient`` projected on ``ImageOrientationPatient``'s cross product), rescale slope and
intercept applied per slice. A series with a missing slice (a gap in the positions), a duplicated slice (two
slices at one position), mixed orientations, sizes or series, or without ``PixelSpacing`` /
``ImagePositionPatient`` / ``ImageOrientationPatient`` is a named per-sample error, never a silently warped
volume. A volume whose voxel spacing is absent, zero or not finite is an error too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import InputReader, ReaderSpec, register_reader

CT_READER_VERSION = "1"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Slice positions closer than this (mm) are one position: a duplicated slice.
DUPLICATE_TOLERANCE_MM = 1e-3
# A gap wider than this many times the typical slice step means slices are missing.
GAP_FACTOR = 1.5
# Steps may vary this much (relative) around the typical step before the series counts as irregular.
STEP_TOLERANCE = 0.1
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class CTVolume:
    """HU values (i, j, k) float32 and the voxel -> RAS+ mm affine (4, 4) float64."""

    values: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def read_ct_volume(pointer: Any) -> CTVolume:
    """A NIfTI file (``.nii``/``.nii.gz``) or a DICOM series folder -> :class:`CTVolume`.

    Raises:
        InputError: unreadable or inconsistent input; the message names the file and the cause.
    """
    path = Path(pointer)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.exists():
        raise InputError(f"CT volume {path.name} does not exist", "read")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        raise InputError(
            f"{path.name} is a single DICOM file; a CT series is the folder of its slices (point at the folder)",
            "read",
        )
    raise InputError(f"{path.name}: a CT volume is a .nii/.nii.gz file or a DICOM series folder", "read")


# --------------------------------------------------------------------------------------------------- NIfTI
def read_nifti(path: Path) -> CTVolume:
    """A 3-D NIfTI (a trailing axis of length 1 is dropped); scaling slope/intercept applied by nibabel."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        values = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise InputError(f"cannot read NIfTI {path.name} ({type(exc).__name__})", "read") from None
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise InputError(f"NIfTI {path.name} has shape {values.shape}; a CT volume is 3-D", "read")
    affine = np.asarray(image.affine, dtype=np.float64)
    zooms = _stored_zooms(path, image)
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"NIfTI {path.name} has no voxel spacing (pixdim {zooms})", "read")
    return _checked(CTVolume(values, affine), path.name)


def _stored_zooms(path: Path, image: Any) -> tuple[float, ...]:
    """The voxel sizes the file stores: nibabel replaces a zero pixdim by 1 mm on load, which would invent one."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as stream:
            raw = type(image.header).from_fileobj(stream, check=False)
        return tuple(float(z) for z in raw["pixdim"][1:4])
    except Exception:  # noqa: BLE001 - headers without pixdim (other formats): the loaded zooms are all there is
        return tuple(float(z) for z in image.header.get_zooms()[:3])


# --------------------------------------------------------------------------------------------------- DICOM
def read_dicom_series(folder: Path) -> CTVolume:
    """The slices of one series in ``folder`` (files that are not DICOM images are ignored)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "Rows" not in ds:  # DICOMDIR, structured reports and other non-image objects
            continue
        headers.append((file, ds))
    name = folder.name
    if not headers:
        raise InputError(f"DICOM series {name}/ holds no DICOM image files", "read")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(f"DICOM folder {name}/ mixes {len(series)} series; point at one series' folder", "read")
    if len(headers) < 2:
        raise InputError(f"DICOM series {name}/ has {len(headers)} slice; a CT volume needs at least 2", "read")
    frames = {int(ds.get("NumberOfFrames", 1) or 1) for _, ds in headers}
    if frames != {1}:
        raise InputError(f"DICOM series {name}/ holds multi-frame files; only single-frame slices are read", "read")

    geometry = [_slice_geometry(file, ds, name) for file, ds in headers]
    row_cos, col_cos = geometry[0][1], geometry[0][2]
    for file, (_, rows, cols, spacing, shape) in zip((f for f, _ in headers), geometry):
        same = np.allclose(rows, row_cos, atol=ORIENTATION_TOLERANCE) and np.allclose(
            cols, col_cos, atol=ORIENTATION_TOLERANCE
        )
        if not same:
            raise InputError(f"DICOM series {name}/: slice {file.name} has another orientation", "read")
        if shape != geometry[0][4]:
            raise InputError(f"DICOM series {name}/: slice {file.name} is {shape}, not {geometry[0][4]}", "read")
        if not np.allclose(spacing, geometry[0][3], rtol=1e-4):
            raise InputError(f"DICOM series {name}/: slice {file.name} has another pixel spacing", "read")
    normal = np.cross(row_cos, col_cos)
    positions = np.array([float(np.dot(g[0], normal)) for g in geometry])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    steps = np.diff(positions)
    duplicated = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if len(duplicated):
        first = headers[order[duplicated[0]]][0].name, headers[order[duplicated[0] + 1]][0].name
        raise InputError(
            f"DICOM series {name}/ has a duplicated slice: {first[0]} and {first[1]} are both at "
            f"{positions[duplicated[0]]:.2f} mm along the slice normal",
            "read",
        )
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * step)
    if len(gaps):
        at = positions[gaps[0]]
        missing = int(round(steps[gaps[0]] / step)) - 1
        raise InputError(
            f"DICOM series {name}/ is missing {missing} slice(s) after position {at:.2f} mm "
            f"(gap {steps[gaps[0]]:.2f} mm, slice step {step:.2f} mm)",
            "read",
        )
    if np.any(np.abs(steps - step) > STEP_TOLERANCE * step):
        raise InputError(
            f"DICOM series {name}/ has irregular slice steps ({steps.min():.2f}-{steps.max():.2f} mm)", "read"
        )

    first_position = geometry[order[0]][0]
    last_position = geometry[order[-1]][0]
    row_spacing, col_spacing = geometry[0][3]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * col_spacing  # i runs along a row: one column further
    affine_lps[:3, 1] = col_cos * row_spacing  # j runs down a column: one row further
    affine_lps[:3, 2] = (last_position - first_position) / (len(order) - 1)
    affine_lps[:3, 3] = first_position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # DICOM patient LPS -> RAS

    rows, cols = geometry[0][4]
    values = np.empty((cols, rows, len(order)), dtype=np.float32)
    for k, index in enumerate(order):
        file = headers[index][0]
        values[:, :, k] = _slice_hu(file, name).T
    return _checked(CTVolume(values, affine), f"{name}/")


def _slice_geometry(
    file: Path, ds: Any, series: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], tuple[int, int]]:
    """(position, row cosine, column cosine, (row spacing, column spacing), (rows, columns)) of one slice."""
    missing = [tag for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if tag not in ds]
    if missing:
        raise InputError(
            f"DICOM series {series}/: slice {file.name} has no {', '.join(missing)} (no voxel spacing/geometry)",
            "read",
        )
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
        shape = (int(ds.Rows), int(ds.Columns))
    except (TypeError, ValueError):
        raise InputError(f"DICOM series {series}/: slice {file.name} has unreadable geometry tags", "read") from None
    if position.shape != (3,) or orientation.shape != (6,) or len(spacing) != 2:
        raise InputError(f"DICOM series {series}/: slice {file.name} has malformed geometry tags", "read")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"DICOM series {series}/: slice {file.name} has no pixel spacing ({spacing})", "read")
    row_cos, col_cos = orientation[:3], orientation[3:]
    if not np.isfinite(orientation).all() or np.linalg.norm(np.cross(row_cos, col_cos)) < 0.5:
        raise InputError(f"DICOM series {series}/: slice {file.name} has a degenerate orientation", "read")
    return position, row_cos, col_cos, spacing, shape


def _slice_hu(file: Path, series: str) -> np.ndarray:
    """One slice's pixels in HU: stored values x RescaleSlope + RescaleIntercept."""
    import pydicom

    ds = None
    try:
        ds = pydicom.dcmread(str(file))
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codecs raise RuntimeError/NotImplementedError/ValueError
        syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "unknown")
        raise InputError(
            f"DICOM series {series}/: cannot decode slice {file.name} (transfer syntax {syntax}; {type(exc).__name__})",
            "decode",
        ) from None
    if pixels.ndim != 2:
        raise InputError(f"DICOM series {series}/: slice {file.name} is not a single grey frame", "decode")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _checked(volume: CTVolume, name: str) -> CTVolume:
    if min(volume.values.shape) < 2:
        raise InputError(f"CT volume {name} has shape {volume.values.shape}; every axis needs 2 voxels", "read")
    affine = volume.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"CT volume {name} has no voxel spacing (singular or non-finite affine)", "read")
    if not np.isfinite(volume.values).all():
        raise InputError(f"CT volume {name} holds non-finite values", "read")
    return volume


@register_reader
class CTVolumeReader(InputReader):
    """CT volumes: a NIfTI file or the folder of a DICOM series -> :class:`CTVolume` (HU, RAS+ affine)."""

    spec = ReaderSpec(
        "ct-volume",
        version=CT_READER_VERSION,
        description="CT volumes: NIfTI (.nii/.nii.gz) or a DICOM series folder, in HU with their affine",
    )

    def read(self, pointer: Any) -> CTVolume:
        return read_ct_volume(pointer)

    def parameters(self) -> dict[str, Any]:
        return {
            "reader": f"ct-volume/{CT_READER_VERSION}",
            "dicom": "one series, ordered along the slice normal, rescale slope/intercept applied, LPS->RAS",
            "nifti": "nibabel affine, scl_slope/scl_inter applied",
        }

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        import nibabel as nib

        folder.mkdir(parents=True, exist_ok=True)
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        nib.save(nib.Nifti1Image(phantom_hu(lesion=9.0).astype(np.int16), affine), str(folder / "phantom.nii.gz"))
        write_dicom_series(folder / "phantom-dicom", phantom_hu((36, 40, 20), lesion=3.0), uid_seed="example")
        return [folder / "phantom.nii.gz", folder / "phantom-dicom"]


# -------------------------------------------------------------------------------------- geometry helpers
def to_orientation(volume: CTVolume, axcodes: str = "RAS") -> CTVolume:
    """Flip / permute the axes so that i, j, k point along ``axcodes`` (nibabel's convention, as MONAI's)."""
    from nibabel import orientations

    current = orientations.io_orientation(volume.affine)
    target = orientations.axcodes2ornt(tuple(axcodes))
    transform = orientations.ornt_transform(current, target)
    values = orientations.apply_orientation(volume.values, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.values.shape)
    return CTVolume(np.ascontiguousarray(values, dtype=np.float32), affine)


def resample_to_spacing(volume: CTVolume, spacing: tuple[float, float, float]) -> CTVolume:
    """Linear resampling to ``spacing`` mm, keeping the first voxel's centre and the axis directions.

    The output has ``round((n - 1) * old / new + 1)`` voxels per axis and voxel ``i`` samples the input at index
    ``i * new / old``, values beyond the last voxel clamped to it: MONAI ``Spacing`` with bilinear interpolation
    and border padding. Trilinear interpolation is separable, so it runs one axis at a time.
    """
    old = np.asarray(volume.spacing)
    new = np.asarray(spacing, dtype=np.float64)
    values = volume.values
    for axis in np.argsort(new / old)[::-1]:  # the axis that shrinks most first: less work after it
        n = values.shape[axis]
        count = int(np.round((n - 1) * old[axis] / new[axis] + 1.0))  # MONAI rounds after adding 1 (half to even)
        if count == n and np.isclose(old[axis], new[axis]):
            continue
        values = _linear_along(values, axis, np.arange(count) * (new[axis] / old[axis]))
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / old * new
    return CTVolume(values, affine)


def _linear_along(values: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    n = values.shape[axis]
    positions = np.clip(positions, 0.0, n - 1)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    weight_shape = [1] * values.ndim
    weight_shape[axis] = len(positions)
    fraction = (positions - low).astype(np.float32).reshape(weight_shape)
    below = np.take(values, low, axis=axis)
    above = np.take(values, high, axis=axis)
    return below + (above - below) * fraction


def pad_crop(values: np.ndarray, size: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    """Symmetric constant padding up to ``size`` then a centred crop to it (MONAI SpatialPad + CenterSpatialCrop)."""
    pad = []
    for n, target in zip(values.shape, size):
        extra = max(int(target) - n, 0)
        pad.append((extra // 2, extra - extra // 2))
    if any(before or after for before, after in pad):
        values = np.pad(values, pad, mode="constant", constant_values=fill)
    slices = []
    for n, target in zip(values.shape, size):
        start = n // 2 - int(target) // 2
        slices.append(slice(start, start + int(target)))
    return np.ascontiguousarray(values[tuple(slices)])


# ------------------------------------------------------------------------------------------------ writers
def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0),
    uid_seed: str = "adacomed",
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> Path:
    """Write an HU volume (i = column, j = row, k = slice) as an axial CT series, one uncompressed file per slice.

    Stored values are ``(hu - intercept) / slope`` as uint16; UIDs derive from ``uid_seed`` (deterministic).
    Used by the reader's examples and the tests; a minimal but valid CT Image Storage object per slice.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("HU values do not fit uint16 with this slope and intercept")
    stored = stored.astype(np.uint16)
    study = generate_uid(entropy_srcs=[uid_seed, "study"])
    series = generate_uid(entropy_srcs=[uid_seed, "series"])
    for k in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "slice", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.PatientID = uid_seed
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + k * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = float(spacing[2])
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # rows = j, columns = i
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = float(slope), float(intercept)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice-{k:04d}.dcm", enforce_file_format=True)
    return folder


def phantom_hu(shape: tuple[int, int, int] = (40, 36, 24), lesion: float = 6.0) -> np.ndarray:
    """A synthetic abdomen-like HU phantom: air, a soft-tissue body, a bright spine and a low-density lesion."""
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(i / 0.8) ** 2 + (j / 0.7) ** 2 < 1] = 40.0
    hu[(i / 0.12) ** 2 + ((j - 0.45) / 0.12) ** 2 < 1] = 700.0
    hu[((i + 0.35) ** 2 + (j + 0.1) ** 2 + k**2) * 100 < lesion] = -20.0
    return hu
