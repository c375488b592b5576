"""`adacomed-extract --modality ct / timeseries` on the demo cohort, DICOM series and the MIMIC-IV-MM builder's output:
bad samples are named in the errors table and the rest is embedded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from extract_helpers import BIN
from mimic_fixture import write_synthetic_mimic

from adacomed.cache_schema import EmbeddingCache, Manifest, ManifestInfo, ModalitySource
from adacomed.extract.readers.ct_volume import phantom_hu, write_dicom_series
from adacomed.extract.runner import ExtractConfig, plan_job, run_local
from adacomed.pipelines.datasets.demo import build_demo_cohort
from adacomed.pipelines.datasets.mimic import build_mimic_iv_mm


def extract(manifest: Path, cache: Path, modality: str, encoder: str, *extra: str) -> EmbeddingCache:
    command = [str(BIN / "adacomed-extract"), "--manifest", str(manifest), "--modality", modality, "--encoder", encoder]
    command += ["--weights", "tiny-random", "--cache", str(cache), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, capture_output=True, text=True, env=env, timeout=300)
    (folder,) = (cache / modality / encoder).iterdir()
    return EmbeddingCache(folder)


def test_demo_ct_and_timeseries_with_a_bad_sample_each(tmp_path: Path) -> None:
    manifest_path = build_demo_cohort(
        tmp_path / "cohort", subjects=8, modalities=["ct", "timeseries"], show_progress=False
    )
    table = Manifest.read(manifest_path).table
    with_ct = table.dropna(subset=["ct_path"])
    broken_ct = with_ct.iloc[0]
    image = nib.Nifti1Image(phantom_hu().astype(np.int16), None)
    image.header["pixdim"][1:4] = [0.0, 0.0, 0.0]  # a volume that does not say its voxel size
    nib.save(image, str(tmp_path / "cohort" / "ct" / broken_ct["ct_path"]))
    broken_ts = table.iloc[1]
    path = tmp_path / "cohort" / "timeseries" / broken_ts["timeseries_path"]
    with np.load(path) as data:
        arrays = dict(data)
    arrays["values"][5, 2] = np.inf
    np.savez(path, **arrays)

    ct = extract(manifest_path, tmp_path / "cache", "ct", "merlin", "--batch-size", "4")
    assert len(ct) == len(with_ct) - 1 and np.isfinite(ct.read_all()).all()
    errors = ct.errors()
    assert errors["sample_id"].tolist() == [broken_ct["sample_id"]]
    assert "no voxel spacing" in errors["reason"].iloc[0]
    config = ExtractConfig(
        manifest_path, "timeseries", tmp_path / "cache", encoder="moirai-large", weights="tiny-random"
    )
    series = EmbeddingCache(run_local(plan_job(config)).cache_path)  # in process: one CLI start per test is enough
    assert len(series) == len(table) - 1
    assert series.errors()["sample_id"].tolist() == [broken_ts["sample_id"]]
    assert "non-finite value" in series.errors()["reason"].iloc[0]


def test_dicom_series_pointers_key_the_cache_on_every_slice(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    write_dicom_series(root / "p1", phantom_hu((32, 32, 10)), uid_seed="p1")
    write_dicom_series(root / "p2", phantom_hu((32, 32, 10), lesion=20.0), uid_seed="p2")
    write_dicom_series(root / "p3", phantom_hu((32, 32, 10)), uid_seed="p3")
    (root / "p3" / "slice-0004.dcm").unlink()  # a missing slice
    nib.save(nib.Nifti1Image(phantom_hu().astype(np.int16), np.diag([1.5, 1.5, 3, 1])), str(root / "p4.nii.gz"))
    table = pd.DataFrame(
        {
            "sample_id": ["p1", "p2", "p3", "p4"],
            "subject_id": ["p1", "p2", "p3", "p4"],
            "split": ["train", "train", "val", "test"],
            "ct_path": ["p1", "p2", "p3", "p4.nii.gz"],
        }
    )
    info = ManifestInfo(cohort="dicom", modalities={"ct": ModalitySource("ct_path", "path", "ct")})
    manifest = Manifest(table, info).write(tmp_path / "manifest.parquet")

    def run() -> tuple[str, EmbeddingCache]:
        config = ExtractConfig(manifest, "ct", tmp_path / "cache", encoder="merlin", weights="tiny-random")
        summary = run_local(plan_job(config))
        return summary.cache_key, EmbeddingCache(summary.cache_path)

    key, cache = run()
    assert len(cache) == 3 and cache.errors()["sample_id"].tolist() == ["p3"]
    assert "missing 1 slice" in cache.errors()["reason"].iloc[0]
    time.sleep(0.01)
    slice_file = root / "p2" / "slice-0003.dcm"
    shutil.copyfile(slice_file, tmp_path / "copy.dcm")
    (tmp_path / "copy.dcm").replace(slice_file)  # the same bytes written anew: another mtime, another input
    assert run()[0] != key


def test_mimic_iv_mm_timeseries_are_embedded(tmp_path: Path) -> None:
    release = write_synthetic_mimic(tmp_path / "release")
    manifest = build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "mimic")
    table = Manifest.read(manifest).table
    cache = extract(manifest, tmp_path / "cache", "timeseries", "moirai-large")
    assert len(cache) == table["timeseries_path"].notna().sum() and len(cache.errors()) == 0
    assert np.isfinite(cache.read_all()).all()
    embeddings = cache.read_all().astype(np.float32)
    assert not np.allclose(embeddings[0], embeddings[1])
