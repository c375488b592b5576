"""The synthetic demo cohort: reproducible bytes, readable files, honest missingness, plausible and learnable labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from adacomed.cache_schema import Manifest
from adacomed.pipelines import demo_media
from adacomed.pipelines.datasets.demo import DEMO_MODALITIES, build_demo_cohort, clinical_prompt
from adacomed.pipelines.datasets.demo_records import ALARMING

SUBJECTS = 40
PATH_MODALITIES = {"xray": "xray_path", "timeseries": "timeseries_path", "wsi": "wsi_path", "ct": "ct_path"}


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", subjects=SUBJECTS, seed=0, show_progress=False)


@pytest.fixture(scope="module")
def manifest(cohort: Path) -> Manifest:
    return Manifest.read(cohort)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(cohort: Path, tmp_path: Path) -> None:
    again = build_demo_cohort(tmp_path / "again", subjects=SUBJECTS, seed=0, show_progress=False)
    assert again.read_bytes() == cohort.read_bytes()
    assert _file_hashes(again.parent) == _file_hashes(cohort.parent)

    other = build_demo_cohort(
        tmp_path / "other", subjects=SUBJECTS, seed=1, modalities=["xray", "notes"], show_progress=False
    )
    assert other.read_bytes() != cohort.read_bytes()
    ours, theirs = _file_hashes(cohort.parent / "xray"), _file_hashes(other.parent / "xray")
    shared = set(ours) & set(theirs)
    assert shared and all(ours[name] != theirs[name] for name in shared)


def test_leaving_modalities_out_keeps_the_other_files_identical(cohort: Path, tmp_path: Path) -> None:
    subset = build_demo_cohort(
        tmp_path / "subset", subjects=SUBJECTS, seed=0, modalities=["timeseries", "notes"], show_progress=False
    )
    assert _file_hashes(subset.parent / "timeseries") == _file_hashes(cohort.parent / "timeseries")
    full, partial = Manifest.read(cohort), Manifest.read(subset)
    assert set(partial.info.modalities) == {"timeseries", "notes"}
    assert "xray_path" not in partial.table.columns and "xray" not in partial.info.small_inputs
    pd.testing.assert_series_equal(full.table["note_text"], partial.table["note_text"])
    pd.testing.assert_frame_equal(full.table.filter(like="label_"), partial.table.filter(like="label_"))


def test_manifest_declarations(manifest: Manifest) -> None:
    info, table = manifest.info, manifest.table
    assert info.cohort == "demo"
    assert set(info.modalities) == set(DEMO_MODALITIES)
    assert {name: source.kind for name, source in info.modalities.items()} == {
        "xray": "path",
        "notes": "text",
        "timeseries": "path",
        "wsi": "path",
        "ct": "path",
        "clinical": "text",
    }
    assert set(info.tasks) == {"mortality", "longstay", "readmission", "vital12"}
    assert all(spec.positive for spec in info.tasks.values())
    assert table["sample_id"].iloc[0] == "demo-0001"
    assert table["sample_id"].is_unique and set(table["split"]) == {"train", "val", "test"}
    assert table.groupby("subject_id")["split"].nunique().max() == 1, "a subject must not straddle splits"
    assert table["subject_id"].nunique() == SUBJECTS and len(table) > SUBJECTS  # some second admissions

    kinds = {name: small.kind for name, small in info.small_inputs.items()}
    assert kinds["xray"] == "image" and kinds["notes"] == "text" and kinds["timeseries"] == "timeseries"
    assert kinds["age_diag"] == "numerical" and kinds["gender"] == "categorical" and kinds["grade"] == "ordinal"
    for small in info.small_inputs.values():
        values = table[small.column].dropna()
        if small.kind == "ordinal":
            assert set(values) <= set(small.options["levels"]), small.column
        if small.kind == "categorical":
            assert set(values) <= set(small.options["categories"]), small.column
    reference = [
        "gender", "age_diag", "grade", "cancer_history", "ajcc_path_tumor_pt", "ajcc_path_nodes_pn",
        "ajcc_clin_metastasis_cm", "ajcc_path_metastasis_pm", "ajcc_path_tumor_stage", "race_Asian",
        "race_Black or African American", "race_Hispanic or Latino", "race_White", "race_other",
        "VHL_mutation", "PBMR1_mutation", "TTN_mutation",
    ]  # fmt: skip
    assert set(reference) <= set(table.columns)


def test_every_file_opens_with_its_library(manifest: Manifest) -> None:
    suffixes = set()
    for sample_id, path in manifest.modality_items("xray"):
        suffixes.add(path.suffix)
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2") and ds.pixel_array.ndim == 2
            assert ds.PatientID == sample_id
        else:
            with Image.open(path) as image:
                image.load()
                assert image.mode in ("L", "I;16", "I") and 180 <= min(image.size) and max(image.size) <= 320
    assert suffixes == {".png", ".dcm"}
    for _, path in manifest.modality_items("timeseries"):
        with np.load(path, allow_pickle=False) as arrays:
            values, hours, variables = arrays["values"], arrays["hours"], arrays["variables"]
        assert values.dtype == np.float32 and values.shape == (48, len(variables)) and len(variables) >= 12
        assert hours.dtype == np.float32 and np.array_equal(hours, np.arange(48, dtype=np.float32))
        assert variables.dtype.kind == "U" and np.isnan(values).any() and not np.isnan(values).all()
    for _, path in manifest.modality_items("wsi"):
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages) == 3 and len(tif.series[0].levels) == 3
            assert [page.shape[:2] for page in tif.pages] == [(1024, 1024), (512, 512), (256, 256)]
            assert [int(page.subfiletype) for page in tif.pages] == [0, 1, 1]
            assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
            assert tif.pages[0].tags["XResolution"].value == (20000, 1)  # 0.5 um/px in pixels per cm
            assert tif.pages[1].asarray().dtype == np.uint8
    for _, path in manifest.modality_items("ct"):
        image = nib.load(path)
        assert image.shape == (48, 48, 32) and image.get_data_dtype() == np.int16
        assert np.allclose(image.header.get_zooms(), (1.5, 1.5, 3.0))
        assert np.asarray(image.dataobj).min() <= -900  # air around the body, in HU
    for _, text in manifest.modality_items("notes") + manifest.modality_items("clinical"):
        assert isinstance(text, str) and len(text) > 40


def test_missing_modalities_are_empty_pointers(manifest: Manifest) -> None:
    table = manifest.table
    for modality, column in PATH_MODALITIES.items():
        present = table[column].dropna()
        assert (present != "").all()
        on_disk = {path.name for path in manifest.modality_root(modality).iterdir()}
        assert on_disk == set(present), f"{modality}: files and pointers disagree"
        assert len(manifest.modality_items(modality)) == len(present)
    assert 0.35 < table["wsi_path"].notna().mean() < 0.85
    assert 0.45 < table["ct_path"].notna().mean() < 0.9


def test_label_rates_are_plausible(tmp_path: Path) -> None:
    path = build_demo_cohort(tmp_path / "rates", subjects=200, seed=3, modalities=["notes"], show_progress=False)
    table = Manifest.read(path).table
    assert 0.12 <= table["label_mortality"].mean() <= 0.28
    assert 0.07 <= table["label_readmission"].mean() <= 0.23
    assert 0.4 <= table["label_longstay"].mean() <= 0.62
    assert 0.05 <= table["label_longstay"].isna().mean() <= 0.35  # short stays are excluded, not negative
    assert 0.7 <= table["label_vital12"].mean() <= 0.9
    for task in ("mortality", "readmission", "vital12"):
        assert table[f"label_{task}"].notna().all()
    subjects = table.drop_duplicates("subject_id")["split"].value_counts(normalize=True)
    assert 0.6 < subjects["train"] < 0.8 and 0.08 < subjects["val"] < 0.22 and 0.08 < subjects["test"] < 0.22


def _xray_brightness(path: Path) -> float:
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        image = ds.pixel_array.astype(np.float64) / (2 ** int(ds.BitsStored) - 1)
        return float((1 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image).mean())
    with Image.open(path) as pil:
        image = np.asarray(pil).astype(np.float64)
    return float(image.mean() / (65535 if image.max() > 255 else 255))


def _summary_features(manifest: Manifest) -> pd.DataFrame:
    """Crude per-modality summaries a clinician could compute by hand; NaN where the modality is missing."""
    features = pd.DataFrame(index=manifest.sample_ids, dtype=float)
    for sample_id, path in manifest.modality_items("xray"):
        features.loc[sample_id, "xray_brightness"] = _xray_brightness(path)
    for sample_id, path in manifest.modality_items("timeseries"):
        with np.load(path, allow_pickle=False) as arrays:
            values, names = arrays["values"], list(arrays["variables"])
        features.loc[sample_id, "heart_rate"] = np.nanmean(values[:, names.index("heart_rate")])
        features.loc[sample_id, "sbp"] = np.nanmean(values[:, names.index("sbp")])
    for sample_id, text in manifest.modality_items("notes"):
        features.loc[sample_id, "alarming_sentences"] = sum(text.count(sentence) for sentence in ALARMING)
    features["stage"] = manifest.table["ajcc_path_tumor_stage"].to_numpy(dtype=float)
    return features


def test_signal_is_learnable_from_simple_summaries(tmp_path: Path) -> None:
    path = build_demo_cohort(
        tmp_path / "signal", subjects=160, seed=0, modalities=["xray", "timeseries", "notes"], show_progress=False
    )
    manifest = Manifest.read(path)
    features = _summary_features(manifest)
    labels = manifest.labels("mortality").to_numpy()
    # each modality alone moves with the outcome, in the clinically expected direction
    for column, sign in (("xray_brightness", 1), ("heart_rate", 1), ("sbp", -1), ("alarming_sentences", 1)):
        seen = features[column].notna().to_numpy()
        assert roc_auc_score(labels[seen], sign * features[column].to_numpy()[seen]) > 0.55, column
    filled = features.fillna(features.mean())
    standardised = ((filled - filled.mean()) / filled.std()).to_numpy()
    train = (manifest.table["split"] == "train").to_numpy()
    model = LogisticRegression().fit(standardised[train], labels[train])
    held_out_auroc = roc_auc_score(labels[~train], model.predict_proba(standardised[~train])[:, 1])
    assert held_out_auroc > 0.6


@pytest.mark.parametrize(
    ("draw", "measure"),
    [
        (demo_media.chest_xray, lambda image: image.mean()),
        (demo_media.slide_rgb, lambda image: (image[..., 1] < 100).mean()),  # purple nuclei
        (demo_media.ct_volume, lambda volume: ((volume > 0) & (volume < 80)).sum()),  # lesion-like HU
        (demo_media.timeseries_arrays, lambda arrays: np.nanmean(arrays["values"][:, 0])),  # heart rate
    ],
)
def test_each_modality_follows_its_view_of_the_risk(draw, measure) -> None:
    def average(view: float) -> float:
        return float(np.mean([measure(draw(view, np.random.default_rng(seed))) for seed in range(4)]))

    assert average(-1.5) < average(0.0) < average(2.0)


def test_clinical_prompt_reads_the_table_row() -> None:
    row = {
        "gender": 0, "age_diag": 5.0, "grade": 3, "ajcc_path_tumor_pt": 8, "ajcc_path_nodes_pn": -1,
        "ajcc_path_metastasis_pm": 1, "ajcc_path_tumor_stage": 3, "race_Asian": 1,
        "race_Black or African American": 0, "race_Hispanic or Latino": 0, "race_White": 0, "race_other": 0,
        "VHL_mutation": 1, "PBMR1_mutation": 0, "TTN_mutation": -1,
    }  # fmt: skip
    text = clinical_prompt(row)
    assert text.startswith("The patient is a female of Asian race, diagnosed at age group 5,")
    assert "who has a VHL mutation and no PBMR1 mutation with an unknown TTN mutation." in text
    assert "node involvement at stage unknown" in text and "tumor stage 8 " in text
    assert text.endswith("The overall tumor stage is 3 and the tumor grade is 3.")
    assert "unknown race" in clinical_prompt({**row, "race_Asian": 0, "age_diag": float("nan")})


def test_refuses_foreign_folders_and_rebuilds_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="not an earlier demo cohort"):
        build_demo_cohort(foreign, subjects=4, modalities=["notes"], show_progress=False)
    with pytest.raises(ValueError, match="unknown demo modalities"):
        build_demo_cohort(tmp_path / "x", subjects=4, modalities=["mri"], show_progress=False)

    target = tmp_path / "demo"
    first = build_demo_cohort(target, subjects=12, seed=0, modalities=["xray", "notes"], show_progress=False)
    rebuilt = build_demo_cohort(target, subjects=6, seed=0, modalities=["xray", "notes"], show_progress=False)
    assert rebuilt == first
    pointers = set(Manifest.read(rebuilt).table["xray_path"].dropna())
    assert {path.name for path in (target / "xray").iterdir()} == pointers  # no stale files from the first build
