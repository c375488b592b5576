"""Raw readers: X-ray images (PNG/JPEG/DICOM) and clinical notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adacomed.extract.errors import InputError
from adacomed.extract.readers.text import read_note
from adacomed.extract.readers.xray import read_xray


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    with_pixels: bool = True,
) -> Path:
    """A minimal 12-bit grey DICOM (explicit VR little endian) with optional window, rescale and VOI LUT."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add(DataElement(0x00283006, "OW", voi_lut.astype("<u2").tobytes()))
        ds.VOILUTSequence = [item]
    if with_pixels:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[100, 1000, 1500], [2048, 3000, 4000]])


def grey(path: Path) -> np.ndarray:
    image = read_xray(path)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[..., 0].astype(int)


# ------------------------------------------------------------------ DICOM
def test_dicom_monochrome1_is_inverted_and_window_applied(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", STORED, photometric="MONOCHROME1", window=(2048, 1024))
    out = grey(path)
    # Bright stored pixels (high values) become dark under MONOCHROME1; below the window they saturate white.
    assert out[1, 2] == 0 and out[1, 1] == 0
    assert out[0, 0] == out[0, 1] == out[0, 2] == 255  # 100, 1000, 1500 all lie below 2048 - 512: window clips
    assert 120 <= out[1, 0] <= 135  # the window centre lands mid-grey


def test_dicom_without_window_spans_own_range(tmp_path: Path) -> None:
    out = grey(write_dicom(tmp_path / "x.dcm", STORED))
    assert out[0, 0] == 0 and out[1, 2] == 255
    assert out[0, 0] < out[0, 1] < out[0, 2] < out[1, 0] < out[1, 1] < out[1, 2]


def test_dicom_modality_lut_applied_before_window(tmp_path: Path) -> None:
    # stored 0, 500, 1000 -> -1000, 0, 1000 after rescale; the window (centre 0, width 1000) is in those units.
    stored = np.array([[0, 500, 1000]])
    out = grey(write_dicom(tmp_path / "x.dcm", stored, window=(0, 1000), rescale=(2.0, -1000.0)))
    assert out[0, 0] == 0 and out[0, 2] == 255 and 120 <= out[0, 1] <= 135


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    lut = np.linspace(0, 200, 4096)  # output range 0..200 maps to 0..255
    out = grey(write_dicom(tmp_path / "x.dcm", STORED, voi_lut=lut))
    expected = np.rint(np.round(np.linspace(0, 200, 4096)).astype(int)[STORED] * 255 / 200)
    np.testing.assert_allclose(out, expected, atol=1)


def test_dicom_detected_by_magic_without_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "image_0001", STORED, photometric="MONOCHROME1")
    assert grey(path)[1, 2] == 0


def test_dicom_without_pixel_data_is_decode_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", STORED, with_pixels=False)
    with pytest.raises(InputError) as err:
        read_xray(path)
    assert err.value.stage == "decode" and "x.dcm" in err.value.reason


# ---------------------------------------------------------------- bitmaps
def test_png_16bit_grey_scaled_by_own_min_max(tmp_path: Path) -> None:
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    out = grey(tmp_path / "x.png")
    np.testing.assert_array_equal(out, np.rint((values.astype(float) - 1000) * 255 / 4000))


def test_png_8bit_grey_and_rgba_and_jpeg(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "g.png")
    assert (grey(tmp_path / "g.png") == 77).all()
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
    pixels = np.asarray(read_xray(tmp_path / "c.png"))
    assert pixels.shape == (4, 5, 3) and (pixels[..., 0] == 200).all()
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "x.jpg", quality=95)
    assert np.abs(np.asarray(read_xray(tmp_path / "x.jpg")).astype(int) - 120).max() <= 2


# ----------------------------------------------------------------- errors
def test_missing_file_is_read_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_xray(tmp_path / "absent.png")
    assert err.value.stage == "read" and "absent.png" in err.value.reason


@pytest.mark.parametrize("name", ["garbage.png", "garbage.dcm", "garbage.jpg"])
def test_undecodable_file_is_decode_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError) as err:
        read_xray(tmp_path / name)
    assert err.value.stage == "decode" and name in err.value.reason


def test_truncated_png_is_decode_error(tmp_path: Path) -> None:
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_xray(tmp_path / "x.png")
    assert err.value.stage == "decode"


# ------------------------------------------------------------------ notes
def test_read_note_removes_line_breaks_and_standardises_whitespace() -> None:
    assert read_note("  Chest pain.\r\nNo fever.\n\n\tBP  120/80\u00a0mmHg \u2028end ") == (
        "Chest pain. No fever. BP 120/80 mmHg end"
    )


@pytest.mark.parametrize("text", ["", "   ", "\n\r\t \n"])
def test_empty_note_is_preprocess_error(text: str) -> None:
    with pytest.raises(InputError) as err:
        read_note(text)
    assert err.value.stage == "preprocess" and err.value.reason == "empty note"


def test_missing_or_non_text_note() -> None:
    with pytest.raises(InputError) as err:
        read_note(None)
    assert err.value.stage == "read"
    with pytest.raises(InputError) as err:
        read_note(float("nan"))
    assert err.value.stage == "read"
    with pytest.raises(InputError) as err:
        read_note(12)
    assert err.value.stage == "decode" and "int" in err.value.reason
