"""MIMIC-IV-MM builder on a hand-made synthetic release (tests/mimic_fixture.py) in the releases' exact schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mimic_fixture import (
    EXPECTED_AGE_BINS,
    EXPECTED_LABELS,
    EXPECTED_NOTES,
    EXPECTED_XRAY_FIRST,
    EXPECTED_XRAY_LAST,
    write_synthetic_mimic,
)

from adacomed.cache_schema import Manifest
from adacomed.pipelines.datasets.mimic import build_mimic_iv_mm
from adacomed.pipelines.datasets.mimic.cohort import label_admissions
from adacomed.pipelines.datasets.mimic.media import clean_note, study_times
from adacomed.pipelines.datasets.mimic.sources import MimicError
from adacomed.pipelines.datasets.mimic.variables import DEFAULT_VARIABLES_DIR, load_variables


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_mimic(tmp_path_factory.mktemp("mimic-release"))


@pytest.fixture(scope="module")
def built(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mimic-out")
    return build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, out)


@pytest.fixture(scope="module")
def table(built) -> pd.DataFrame:
    return Manifest.read(built).table.set_index("hadm_id")


def grid(built: Path, hadm: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(built.parent / "timeseries" / f"{hadm}.npz", allow_pickle=False) as data:
        return data["values"], data["hours"], [str(v) for v in data["variables"]]


def test_cohort_is_icu_admissions_with_hand_checked_labels(table):
    assert sorted(table.index) == sorted(EXPECTED_LABELS)  # 20000005 and 20000009 have no ICU stay
    for hadm, expected in EXPECTED_LABELS.items():
        got = table.loc[hadm, ["label_mortality", "label_longstay", "label_readmission"]].to_numpy(dtype=float)
        want = np.array([np.nan if v is None else v for v in expected])
        np.testing.assert_array_equal(got, want, err_msg=f"hadm {hadm}")
    assert table.loc[20000001, "sample_id"] == "hadm-20000001"
    assert table.loc[20000001, "subject_id"] == "10000001"


def test_splits_keep_each_subject_in_one_split(table):
    assert set(table["split"]) <= {"train", "val", "test"}
    assert (table.groupby("subject_id")["split"].nunique() == 1).all()


def test_static_inputs_and_declarations(built, table):
    for hadm, level in EXPECTED_AGE_BINS.items():
        assert table.loc[hadm, "age_bin"] == level
    assert table.loc[20000001, "gender"] == "M"
    info = Manifest.read(built).info
    assert info.cohort == "mimic-iv-mm"
    assert set(info.tasks) == {"mortality", "longstay", "readmission"}
    assert {n: m.kind for n, m in info.modalities.items()} == {"xray": "path", "notes": "text", "timeseries": "path"}
    assert info.small_inputs["age_bin"].kind == "ordinal"
    assert info.small_inputs["age_bin"].options["levels"][-1] == "90+"
    assert info.small_inputs["gender"].options["categories"] == ["F", "M"]
    assert info.small_inputs["timeseries"].kind == "timeseries"


def test_xray_is_last_study_in_window_with_frontal_view(built, table, release):
    chosen = table["xray_path"].dropna().to_dict()
    assert chosen == EXPECTED_XRAY_LAST  # B's hour-48.5 PA is outside; C has only one outside; E's JPEG is missing
    manifest = Manifest.read(built)
    assert manifest.modality_root("xray") == release.cxr_home.resolve()
    assert all(path.is_file() for _, path in manifest.modality_items("xray"))
    summary = json.loads((built.parent / "cohort_summary.json").read_text())
    assert summary["streaming"]["media"]["xray_files_missing"] == 1


def test_notes_cleaned_in_time_order_inside_window(table):
    assert table["note_text"].dropna().to_dict() == EXPECTED_NOTES
    assert clean_note("a\r\n  b\tc \n") == "a b c"


def test_grid_bins_hours_and_ignores_outside(built):
    values, hours, names = grid(built, 20000001)
    col = {n: i for i, n in enumerate(names)}
    assert values.dtype == np.float32 and values.shape == (48, len(names))
    np.testing.assert_array_equal(hours, np.arange(48, dtype=np.float32))
    heart = values[:, col["heart_rate"]]
    assert heart[5] == 85.0  # 80 at hour 5.5 and 90 at 5.75: the mean of row 5
    assert np.isnan(np.delete(heart, 5)).all()  # 999 at hour 7 is out of range
    assert values[3, col["temperature_c"]] == pytest.approx(37.0, abs=1e-4)
    assert values[4, col["sbp"]] == 125.0  # two itemids, one channel
    assert values[2, col["gcs_eye"]] == 4.0  # last mapped value of the hour
    assert values[0, col["creatinine"]] == pytest.approx(1.2)
    assert np.isnan(values[1:, col["creatinine"]]).all()  # the lab at hour -1 is ignored
    ventilation = values[:, col["invasive_ventilation"]]
    np.testing.assert_array_equal(np.flatnonzero(ventilation == 1.0), [10, 11, 12])
    assert (ventilation[np.arange(48) >= 13] == 0).all()
    assert (values[:, col["dialysis"]] == 0).all()  # started at hour 49
    assert (values[:, col["age_bin"]] == 5).all() and (values[:, col["gender_male"]] == 1).all()


def test_grid_second_admission(built):
    values, _, names = grid(built, 20000002)
    col = {n: i for i, n in enumerate(names)}
    heart = values[:, col["heart_rate"]]
    assert heart[47] == 70.0 and np.isnan(heart[:47]).all()  # hour 49 and hour -0.5 are ignored
    assert values[3, col["glucose"]] == 140.0  # lab glucose joins the glucose channel
    assert np.isnan(values[:, col["creatinine"]]).all()  # a lab without hadm_id is not matched
    np.testing.assert_array_equal(np.flatnonzero(values[:, col["dialysis"]] == 1), np.arange(40, 48))


def test_chunked_reading_matches_default(release, built, tmp_path):
    small = build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path, chunksize=7)
    pd.testing.assert_frame_equal(Manifest.read(small).table, Manifest.read(built).table)
    for hadm in EXPECTED_LABELS:
        a, _, names_a = grid(small, hadm)
        b, _, names_b = grid(built, hadm)
        assert names_a == names_b
        np.testing.assert_array_equal(a, b)


def test_options_first_xray_discharge_notes_and_all_modalities(release, tmp_path):
    path = build_mimic_iv_mm(
        release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "first", xray="first",
        note_types=("discharge", "radiology"),
    )  # fmt: skip
    table = Manifest.read(path).table.set_index("hadm_id")
    assert table["xray_path"].dropna().to_dict() == EXPECTED_XRAY_FIRST
    # A's discharge summary is charted inside its 47-hour stay; B's is charted at discharge, outside the window.
    assert table.loc[20000001, "note_text"] == "Discharge summary charted inside a short stay"
    assert table.loc[20000002, "note_text"] == EXPECTED_NOTES[20000002]
    strict = build_mimic_iv_mm(
        release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "all", require_all_modalities=True
    )
    assert Manifest.read(strict).table["hadm_id"].tolist() == [20000002]


def test_summary_reports_counts_and_paper_figures(built):
    summary = json.loads((built.parent / "cohort_summary.json").read_text())
    assert summary["admissions"] == 8 and summary["subjects"] == 5
    assert (summary["tasks"]["mortality"]["positive"], summary["tasks"]["mortality"]["negative"]) == (1, 7)
    assert (summary["tasks"]["longstay"]["positive"], summary["tasks"]["longstay"]["excluded"]) == (1, 2)
    assert summary["tasks"]["readmission"]["pos_neg"] == "1:2.5"
    assert summary["paper_table4"]["mortality"] == {"subjects": 11483, "pos_neg": "1:6.6"}
    assert summary["exclusions"]["no_icu_stay"] == 2
    assert "| longstay |" in (built.parent / "cohort_summary.md").read_text()


def test_readmission_boundary_is_thirty_days_inclusive():
    start = pd.Timestamp("2150-01-01 00:00:00")
    disch = start + pd.Timedelta(days=4)
    rows = []
    for subject, gap in ((1, pd.Timedelta(days=30)), (2, pd.Timedelta(days=30, seconds=1))):
        rows.append((subject, subject * 10, start, disch, "EW EMER."))
        rows.append((subject, subject * 10 + 1, disch + gap, disch + gap + pd.Timedelta(days=2), "URGENT"))
    adm = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "admittime", "dischtime", "admission_type"])
    adm = adm.assign(deathtime=pd.NaT, hospital_expire_flag=0)
    labels = label_admissions(adm, load_variables()).set_index("hadm_id")["label_readmission"]
    assert labels[10] == 1.0 and labels[20] == 0.0


def test_study_time_parsing():
    got = study_times(pd.Series([21500203, 21500101]), pd.Series([93000.125, 5432.5]))
    assert list(got) == [pd.Timestamp("2150-02-03 09:30:00.125"), pd.Timestamp("2150-01-01 00:54:32.5")]
    with pytest.raises(MimicError, match="StudyTime"):
        study_times(pd.Series([21500101]), pd.Series([256000.0]))


def test_missing_table_is_named(release, tmp_path):
    copy = tmp_path / "mimiciv"
    shutil.copytree(release.mimic_iv, copy)
    (copy / "3.1" / "icu" / "chartevents.csv.gz").unlink()
    with pytest.raises(MimicError, match=r"icu/chartevents\.csv\(\.gz\)"):
        build_mimic_iv_mm(copy, release.mimic_cxr, release.mimic_note, tmp_path / "out")
    with pytest.raises(MimicError, match="mimic-cxr-2.0.0-metadata"):
        build_mimic_iv_mm(release.mimic_iv, tmp_path, release.mimic_note, tmp_path / "out")


def test_edited_variable_lists_are_checked(release, tmp_path):
    folder = tmp_path / "variables"
    shutil.copytree(DEFAULT_VARIABLES_DIR, folder)
    with open(folder / "vitals.csv", "a") as fh:
        fh.write("225792,ventilation_as_vital,numerical,,,,,\n")  # a procedureevents item
    with pytest.raises(MimicError, match="not in chartevents"):
        build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "o", variables_dir=folder)
    shutil.copy(DEFAULT_VARIABLES_DIR / "vitals.csv", folder / "vitals.csv")
    types = pd.read_csv(folder / "admission_types.csv")
    types[types["admission_type"] != "URGENT"].to_csv(folder / "admission_types.csv", index=False)
    with pytest.raises(MimicError, match="URGENT"):
        build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "o", variables_dir=folder)


def test_malformed_time_is_a_clear_error_and_the_next_build_runs(release, tmp_path):
    copy = tmp_path / "mimiciv"
    shutil.copytree(release.mimic_iv, copy)
    chart_path = copy / "3.1" / "icu" / "chartevents.csv.gz"
    chart = pd.read_csv(chart_path, dtype=str, keep_default_na=False)
    chart.loc[0, "charttime"] = "yesterday"
    chart.to_csv(chart_path, index=False)
    with pytest.raises(MimicError, match=r"chartevents\.charttime holds 'yesterday'"):
        build_mimic_iv_mm(copy, release.mimic_cxr, release.mimic_note, tmp_path / "bad", chunksize=7)
    assert build_mimic_iv_mm(release.mimic_iv, release.mimic_cxr, release.mimic_note, tmp_path / "good").is_file()
