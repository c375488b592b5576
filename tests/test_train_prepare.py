"""prepare_small_inputs on a small hand-made manifest: every input kind, train-only statistics, errors, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adacomed.cache_schema import CacheNotFound, Manifest, ManifestInfo, SmallInput, TaskSpec
from adacomed.train import prepare as prepare_module
from adacomed.train.prepare import load_prepared_inputs, prepare_small_inputs
from adacomed.train.small_model import SmallModel

NOTES = [
    "Patient admitted with chest pain.\nNo acute distress.",
    "Shortness of breath;   bilateral effusions noted.",
    "Fever and cough, started antibiotics.",
    None,
    "Secret val note mentioning zebra pancreas",
    "Test note: chest pain resolved.",
]


def _write_inputs(folder: Path) -> None:
    images = folder / "images"
    images.mkdir()
    Image.fromarray(np.full((100, 50), 200, dtype=np.uint8)).save(images / "tall.png")  # 2:1 -> 256 x 128
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(images / "rgb.jpg")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(images / "deep.png")
    (images / "broken.png").write_bytes(b"not a png at all")
    Image.fromarray(np.full((30, 60), 90, dtype=np.uint8)).save(images / "wide.png")
    series = folder / "series"
    series.mkdir()
    for i in range(6):
        hours = np.arange(60, dtype=np.float32) - 2  # two rows before admission, then 58 hourly rows
        values = np.stack([np.full(60, float(i)), np.full(60, 100.0 + i)], axis=1).astype(np.float32)  # hr, sbp
        values[::3, 1] = np.nan
        variables = np.array(["hr", "sbp"])
        if i == 1:  # another file's column order: matched by name
            values, variables = values[:, ::-1].copy(), variables[::-1].copy()
        np.savez(series / f"s{i}.npz", values=values, hours=hours, variables=variables)
    vectors = folder / "vectors"
    vectors.mkdir()
    for i in range(6):
        np.savez(vectors / f"v{i}.npz", np.full((1, 1, 6, 1), i, dtype=np.float32))


def _manifest(folder: Path, splits: list[str] | None = None) -> Manifest:
    table = pd.DataFrame(
        {
            "sample_id": [f"p{i}" for i in range(6)],
            "subject_id": [f"s{i}" for i in range(6)],
            "split": splits or ["train", "train", "train", "train", "val", "test"],
            "label_mortality": [1.0, 0.0, 0.0, 1.0, 0.0, np.nan],
            "xray_path": ["tall.png", "rgb.jpg", "deep.png", "broken.png", "wide.png", None],
            "note": NOTES,
            "series_path": [f"s{i}.npz" for i in range(5)] + [None],
            "gender": ["F", "M", "F", None, "M", "X"],  # X appears only in test
            "stage": ["I", "III", "II", "I", "IV", "II"],
            "grade": [2, 1, 3, np.nan, 9, 2],  # 9 only in val: not a train level
            "age": [50.0, 60.0, 70.0, 80.0, 1000.0, np.nan],
            "ct_file": [f"v{i}.npz" for i in range(6)],
            "emb": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 1.0], [2.0, 3.0]],
        }
    )
    info = ManifestInfo(
        cohort="handmade",
        tasks={"mortality": TaskSpec(column="label_mortality", positive="died")},
        small_inputs={
            "xray": SmallInput(column="xray_path", kind="image", options={"root": "images"}),
            "notes": SmallInput(column="note", kind="text"),
            "timeseries": SmallInput(column="series_path", kind="timeseries", options={"root": "series"}),
            "gender": SmallInput(column="gender", kind="categorical"),
            "stage": SmallInput(column="stage", kind="ordinal", options={"levels": ["I", "II", "III", "IV"]}),
            "grade": SmallInput(column="grade", kind="ordinal"),
            "age": SmallInput(column="age", kind="numerical"),
            "ct": SmallInput(column="ct_file", kind="vector", options={"root": "vectors"}),
            "emb": SmallInput(column="emb", kind="vector"),
        },
    )
    manifest = Manifest(table, info)
    manifest.write(folder / "manifest.parquet")
    return Manifest.read(folder / "manifest.parquet")


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    _write_inputs(tmp_path)
    return tmp_path


def test_prepare_writes_every_kind_with_train_statistics(cohort: Path) -> None:
    manifest = _manifest(cohort)
    prepared = prepare_small_inputs(manifest, cohort / "cache", vocab_size=200, time_steps=48, show_progress=False)
    a = prepared.arrays
    assert prepared.sample_ids == [f"p{i}" for i in range(6)]

    image = a["xray.image"]
    assert image.dtype == np.uint8 and image.shape == (6, 256, 256)
    assert a["xray.present"].tolist() == [True, True, True, False, True, False]
    assert (image[0][:, 64:192] == 200).all() and (image[0][:, :64] == 0).all() and (image[0][:, 192:] == 0).all()
    assert (image[4][64:192] == 90).all() and (image[4][:64] == 0).all()  # 30 x 60 -> 128 x 256, centred
    assert image[2].max() == 255 and image[2].min() == 0  # 16-bit rescaled
    errors = prepared.errors
    assert errors[errors.stage == "prepare.image"].sample_id.tolist() == ["p3"]

    tokens, mask = a["notes.tokens"], a["notes.mask"]
    assert tokens.shape == (6, 256) and mask.dtype == bool
    assert a["notes.present"].tolist() == [True, True, True, False, True, True]
    assert (tokens[~mask] == 0).all() and (tokens[mask] > 0).all()
    assert (prepared.cache_paths["notes"] / "tokenizer.json").is_file()
    tokenizer_text = (prepared.cache_paths["notes"] / "tokenizer.json").read_text()
    assert "zebra" not in tokenizer_text and "pancreas" not in tokenizer_text  # vocabulary from train notes only
    assert "chest" in tokenizer_text
    assert not any("zebra" in reason or "pain" in reason for reason in errors.reason)

    values, observed = a["timeseries.values"], a["timeseries.mask"]
    assert values.shape == (6, 48, 2) and observed.shape == (6, 48, 2)
    train_values = np.array([0.0, 1.0, 2.0, 3.0])  # each train series is constant i
    hr = (np.array([0.0, 1.0, 2.0, 3.0, 4.0]) - train_values.mean()) / train_values.std()
    np.testing.assert_allclose(values[:5, 0, 0], hr, rtol=1e-6)  # sample 1's columns were stored swapped
    np.testing.assert_allclose(values[:5, 2, 1], hr, rtol=1e-6)  # sbp = 100 + i: the same standardised values
    assert observed[0, :, 1].tolist() == [(t + 2) % 3 != 0 for t in range(48)]  # hours < 0 dropped
    assert not a["timeseries.present"][5] and not observed[5].any()

    categorical = a["tabular.categorical"]
    assert categorical[:, 0].tolist() == [1, 2, 1, 0, 2, 0]  # F=1, M=2 from train; missing and unseen X -> 0
    fingerprint = json.loads((prepared.cache_paths["tabular"] / "fingerprint.json").read_text())
    stage, grade = (fingerprint["preprocessing"]["ordinal_order"].index(f) for f in ("stage", "grade"))
    ordinal = a["tabular.ordinal"]
    assert ordinal[:, stage].tolist() == [1, 3, 2, 1, 4, 2]  # declared levels I-IV -> codes 1-4
    assert ordinal[[0, 1, 2, 5], grade].tolist() == [2, 1, 3, 2]  # train levels 1, 2, 3
    assert ordinal[3, grade] == 0 and ordinal[4, grade] == 0  # missing, and 9 unseen in train: code 0
    std = np.std([50.0, 60.0, 70.0, 80.0])
    np.testing.assert_allclose(a["tabular.numerical"][:5, 0], (np.array([50, 60, 70, 80, 1000]) - 65) / std, rtol=1e-6)
    assert np.isnan(a["tabular.numerical"][5, 0])

    np.testing.assert_array_equal(a["ct.values"][:, 0], np.arange(6, dtype=np.float32))
    assert a["ct.values"].shape == (6, 6) and a["ct.present"].all()
    np.testing.assert_array_equal(a["emb.values"][1], [3.0, 4.0])

    config = prepared.model_config(hidden_dim=16)
    assert set(config.inputs) == {"xray", "notes", "timeseries", "tabular", "ct", "emb"}
    assert config.inputs["tabular"].n_categories == [3] and config.inputs["tabular"].n_levels[stage] == 5
    assert config.inputs["timeseries"].n_variables == 2 and config.inputs["ct"].dim == 6
    model = SmallModel(config)
    logits = model(prepared.batch([0, 3, 5]))
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_prepare_reuses_a_complete_cache_and_keys_on_the_split(cohort: Path, monkeypatch) -> None:
    manifest = _manifest(cohort)
    first = prepare_small_inputs(manifest, cohort / "cache", vocab_size=200, show_progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (cohort / "cache").rglob("*") if p.is_file()}

    def no_build(*args, **kwargs):
        raise AssertionError("a complete cache with the same fingerprint was rebuilt")

    monkeypatch.setattr(prepare_module, "_build", no_build)
    again = prepare_small_inputs(_manifest(cohort), cohort / "cache", vocab_size=200, show_progress=False)
    loaded = load_prepared_inputs(_manifest(cohort), cohort / "cache", vocab_size=200)
    assert {p: p.stat().st_mtime_ns for p in (cohort / "cache").rglob("*") if p.is_file()} == stamps
    for key, array in first.arrays.items():
        np.testing.assert_array_equal(again.arrays[key], array)
        np.testing.assert_array_equal(loaded.arrays[key], array)

    moved = _manifest(cohort, splits=["train", "train", "train", "val", "train", "test"])
    with pytest.raises(CacheNotFound, match="tabular|notes|timeseries|xray|ct|emb"):
        load_prepared_inputs(moved, cohort / "cache", vocab_size=200)
    monkeypatch.undo()
    rebuilt = prepare_small_inputs(moved, cohort / "cache", vocab_size=200, show_progress=False)
    assert rebuilt.cache_paths["tabular"] != first.cache_paths["tabular"]
    std = np.std([50.0, 60.0, 70.0, 1000.0])  # p3 left train, p4 joined it
    np.testing.assert_allclose(rebuilt.arrays["tabular.numerical"][0, 0], (50 - 295.0) / std, rtol=1e-6)


def test_prepare_with_a_given_tokenizer(cohort: Path) -> None:
    manifest = _manifest(cohort)
    prepared = prepare_small_inputs(manifest, cohort / "cache", vocab_size=200, show_progress=False)
    tokenizer_file = prepared.cache_paths["notes"] / "tokenizer.json"
    other = prepare_small_inputs(manifest, cohort / "cache2", tokenizer=str(tokenizer_file.parent), show_progress=False)
    np.testing.assert_array_equal(other.arrays["notes.tokens"], prepared.arrays["notes.tokens"])
    assert other.cache_paths["notes"].name != prepared.cache_paths["notes"].name  # another tokenizer identity
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        prepare_small_inputs(manifest, cohort / "cache3", tokenizer=str(cohort / "nowhere"), show_progress=False)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    from adacomed.train.image_io import load_xray

    pixels = np.zeros((64, 128), dtype=np.uint16)
    pixels[:, :64] = 4000  # left half: high value = dark in MONOCHROME1
    _write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    _write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    inverted, plain = load_xray(tmp_path / "m1.dcm"), load_xray(tmp_path / "m2.dcm")
    assert inverted.shape == (256, 256) and inverted.dtype == np.uint8
    band = slice(64, 192)  # 64 x 128 -> 128 x 256, centred vertically
    assert (plain[band, :124] == 255).all() and (plain[band, 132:] == 0).all()  # bilinear blends the edge only
    assert (inverted[band, :124] == 0).all() and (inverted[band, 132:] == 255).all()
    assert (plain[:64] == 0).all() and (inverted[:64] == 0).all()  # padding stays zero


@pytest.mark.shared
def test_mmist_precomputed_features_become_vectors(mmist_root: Path, tmp_path: Path) -> None:
    features = mmist_root / "Code" / "Features"
    ct = sorted((features / "CT Features").glob("*.npz"))[:3]
    wsi = sorted((features / "WSI Features").glob("*.npz"))[:3]
    table = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "subject_id": ["a", "b", "c"],
            "split": ["train", "train", "val"],
            "ct": [p.name for p in ct],
            "wsi": [p.name for p in wsi[:2]] + [None],
        }
    )
    info = ManifestInfo(
        small_inputs={
            "ct_features": SmallInput(column="ct", kind="vector", options={"root": str(features / "CT Features")}),
            "wsi_features": SmallInput(column="wsi", kind="vector", options={"root": str(features / "WSI Features")}),
        }
    )
    prepared = prepare_small_inputs(Manifest(table, info, base_dir=tmp_path), tmp_path / "cache", show_progress=False)
    assert prepared.arrays["ct_features.values"].shape == (3, 512)
    assert prepared.arrays["wsi_features.values"].shape == (3, 1024)
    assert prepared.arrays["wsi_features.present"].tolist() == [True, True, False]
    with np.load(ct[0], allow_pickle=False) as data:
        np.testing.assert_array_equal(prepared.arrays["ct_features.values"][0], data["arr_0"].reshape(-1))
    assert prepared.errors.empty


def _series_manifest(folder: Path, files: dict[str, dict[str, np.ndarray]], splits: list[str]) -> Manifest:
    (folder / "series").mkdir(exist_ok=True)
    for name, arrays in files.items():
        np.savez(folder / "series" / f"{name}.npz", **arrays)
    ids = list(files)
    table = pd.DataFrame({"sample_id": ids, "subject_id": ids, "split": splits, "series": [f"{n}.npz" for n in ids]})
    info = ManifestInfo(
        small_inputs={"vitals": SmallInput(column="series", kind="timeseries", options={"root": "series"})}
    )
    return Manifest(table, info, base_dir=folder)


def test_timeseries_keeps_only_the_window_and_bins_per_hour(tmp_path: Path) -> None:
    hours = np.arange(0, 52, 2, dtype=np.float32)  # a 2-hourly grid, rows at 48 and 50 h are past the window
    values = (100.0 + hours)[:, None].astype(np.float32)
    irregular = np.array([0.2, 0.7, 3.5, 47.9, 48.0, 50.0], dtype=np.float32)  # two rows inside hour 0
    files = {
        "a": {"values": values, "hours": hours, "variables": np.array(["hr"])},
        "b": {
            "values": np.array([[1.0], [3.0], [5.0], [7.0], [1e6], [1e6]], dtype=np.float32),
            "hours": irregular,
            "variables": np.array(["hr"]),
        },
    }
    manifest = _series_manifest(tmp_path, files, ["train", "test"])
    prepared = prepare_small_inputs(manifest, tmp_path / "cache", show_progress=False)
    grid, observed = prepared.arrays["vitals.values"], prepared.arrays["vitals.mask"]
    assert grid.shape == (2, 48, 1)
    assert observed[0, :, 0].tolist() == [t % 2 == 0 for t in range(48)]  # odd hours: no row, masked
    fingerprint = json.loads((prepared.cache_paths["vitals"] / "fingerprint.json").read_text())
    mean, std = fingerprint["preprocessing"]["mean"][0], fingerprint["preprocessing"]["std"][0]
    train_hours = np.arange(0, 48, 2)  # the fitted statistics never see hours 48 and 50 either
    assert mean == pytest.approx((100.0 + train_hours).mean()) and std == pytest.approx((100.0 + train_hours).std())
    np.testing.assert_allclose(grid[0, 46, 0] * std + mean, 146.0, rtol=1e-5)  # the last row inside 48 h
    np.testing.assert_allclose(grid[1, [0, 3, 47], 0] * std + mean, [2.0, 5.0, 7.0], rtol=1e-5)  # 0 h: mean of 1, 3
    assert observed[1, :, 0].sum() == 3 and np.abs(grid[1]).max() < 100  # nothing at or after 48 h leaked in


def test_fit_ids_restrict_what_is_learned(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "subject_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "train", "test"],
            "age": [10.0, 20.0, 90.0, 50.0],
        }
    )
    info = ManifestInfo(small_inputs={"age": SmallInput(column="age", kind="numerical")})
    manifest = Manifest(table, info, base_dir=tmp_path)
    everything = prepare_small_inputs(manifest, tmp_path / "cache", show_progress=False)
    fitted = prepare_small_inputs(manifest, tmp_path / "cache", fit_ids=["a", "b"], show_progress=False)
    np.testing.assert_allclose(fitted.arrays["tabular.numerical"][:, 0], (np.array([10, 20, 90, 50]) - 15) / 5)
    assert fitted.cache_paths["tabular"] != everything.cache_paths["tabular"]  # another fit: another cache
    same = prepare_small_inputs(manifest, tmp_path / "cache", fit_ids=["a", "b", "c"], show_progress=False)
    assert same.cache_paths["tabular"] == everything.cache_paths["tabular"]  # every train row: the same cache
    with pytest.raises(ValueError, match=r"fit rows must be manifest train rows.*'d' in split 'test'"):
        prepare_small_inputs(manifest, tmp_path / "cache", fit_ids=["a", "d"], show_progress=False)
    with pytest.raises(KeyError, match="'zz'"):
        prepare_small_inputs(manifest, tmp_path / "cache", fit_ids=["zz"], show_progress=False)
