"""MMIST ccRCC builder and clinical prompts: hand-checked prompts always, release facts on the real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema.manifest import Manifest
from adacomed.pipelines.datasets.mmist import (
    build_mmist_cohort,
    ct_feature_files,
    read_release,
    slide_file_names,
    wsi_feature_files,
)
from adacomed.pipelines.datasets.prompts import (
    DEFAULT_CODES,
    PromptError,
    load_codes,
    load_template,
    normalise_code,
    render_prompt,
)

RACE = {
    "race_Asian": 0,
    "race_Black or African American": 0,
    "race_Hispanic or Latino": 0,
    "race_White": 1,
    "race_other": 0,
}


def _row(**overrides):
    row = {
        "gender": 1,
        "age_diag": 6.0,
        "grade": 3,
        "cancer_history": float("nan"),
        "ajcc_path_tumor_pt": 7,
        "ajcc_path_nodes_pn": 0,
        "ajcc_clin_metastasis_cm": 1,
        "ajcc_path_metastasis_pm": 0,
        "ajcc_path_tumor_stage": 3,
        "VHL_mutation": 1,
        "PBMR1_mutation": 1,
        "TTN_mutation": 0,
        **RACE,
    }
    row.update(overrides)
    return row


def test_prompt_follows_the_supplement_template_and_says_codes_as_they_are():
    # C3L-00004's release row, rendered by hand from the supplement 4.2 sentence.
    expected = (
        "The patient is a person with sex code 1 of White race, diagnosed at age group code 6, who has a VHL "
        "mutation and a PBMR1 mutation without a TTN mutation. Tumor characteristics include tumor stage code 7 "
        "with node involvement at stage code 0 and pathological metastasis at stage code 0. The overall tumor "
        "stage is code 3 and the tumor grade is code 3."
    )
    assert render_prompt(_row()) == expected


def test_missing_values_are_said_as_unknown_never_invented():
    row = _row(
        age_diag=float("nan"),
        VHL_mutation=-1,
        PBMR1_mutation=-1,
        TTN_mutation=-1,
        ajcc_path_tumor_pt=-1,
        ajcc_path_nodes_pn=-1,
        ajcc_path_metastasis_pm=-1,
        ajcc_path_tumor_stage=-1,
        race_White=0,
        gender=0,
        grade=5,
    )
    expected = (
        "The patient is a person with sex code 0 of unknown race, diagnosed at age unknown, who has unknown VHL "
        "mutation status and unknown PBMR1 mutation status with unknown TTN mutation status. Tumor characteristics "
        "include tumor stage unknown with node involvement at stage unknown and pathological metastasis at stage "
        "unknown. The overall tumor stage is unknown and the tumor grade is code 5."
    )
    assert render_prompt(row) == expected


def test_documented_words_replace_codes_when_a_user_supplies_them(tmp_path: Path):
    codes = load_codes()
    codes["fields"]["sex"]["words"] = {"0": "female", "1": "male"}
    codes["fields"]["overall_stage"]["words"] = {"3": "Stage III"}
    text = render_prompt(_row(VHL_mutation=0, TTN_mutation=1), load_template(), codes)
    assert text.startswith("The patient is a male of White race")
    assert "who has no VHL mutation and a PBMR1 mutation with a TTN mutation." in text
    assert "The overall tumor stage is Stage III and" in text
    custom = tmp_path / "t.txt"
    custom.write_text("Sex {sex}; grade {grade}.\n")
    assert render_prompt(_row(), load_template(custom), codes) == "Sex male; grade code 3."


def test_prompt_errors_name_the_field_not_the_patient_text():
    with pytest.raises(PromptError, match=r"\{shoe_size\}"):
        render_prompt(_row(), "Size {shoe_size}")
    with pytest.raises(PromptError, match="more than one one-hot"):
        render_prompt(_row(race_Asian=1))
    row = _row()
    del row["grade"]
    with pytest.raises(PromptError, match="'grade'"):
        render_prompt(row)


def test_codes_file_marks_every_field_documented_or_not():
    codes = json.loads(DEFAULT_CODES.read_text(encoding="utf-8"))
    for name, spec in codes["fields"].items():
        assert spec["status"] in ("documented", "undocumented"), name
        if spec["status"] == "undocumented":
            assert not spec.get("words"), f"{name}: undocumented codes must not be decoded into words"
    assert normalise_code("6.0") == "6" and normalise_code(-1) is None and normalise_code(math.nan) is None


# ------------------------------------------------------------------------------------------- real release
@pytest.mark.shared
def test_release_counts_and_feature_mapping(mmist_root: Path):
    release = read_release(mmist_root)
    assert len(release.clinical) == 618
    ct = ct_feature_files(release)
    wsi = wsi_feature_files(release)
    assert len(ct) == 239 and len(wsi) == 618
    # Checked by hand: C3L-00610's chosen exam is row 1 of its 4 rows; C3L-00004 has no CT.
    assert ct["C3L-00610"] == "C3L-00610-1.npz"
    assert "C3L-00004" not in ct
    rows = release.ct_rows
    for case in list(ct)[:20]:
        exam = release.ct_choice.set_index("case_id").loc[case, "chosen_exam"]
        k = int(ct[case].rsplit("-", 1)[1].split(".")[0])
        assert rows[rows.case_id == case]["File"].iloc[k - 1] == exam
    assert wsi["C3L-00004"] == "C3L-00004-26.npz"
    code = release.code_dir
    assert np.load(code / "Features/CT Features" / ct["C3L-00610"], allow_pickle=False)["arr_0"].shape == (1, 1, 512, 1)
    assert np.load(code / "Features/WSI Features" / wsi["C3L-00004"], allow_pickle=False)["arr_0"].shape == (1, 1024)
    slides = slide_file_names(release, wsi)
    assert slides["C3L-00004"] == ("C3L-00004-26.svs", None)
    tcga = [case for case in wsi if case.startswith("TCGA")]
    assert all(slides[c][1] is not None and slides[c][0].endswith(".svs") for c in tcga)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("cohort", "n", "balance"),
    [("ct", 239, {"train": (171, 10), "test": (54, 4)}), ("all", 618, {"train": (438, 59), "test": (105, 16)})],
)
def test_manifest_validates_with_labels_splits_and_inputs(mmist_root: Path, tmp_path: Path, cohort, n, balance):
    manifest = Manifest.read(build_mmist_cohort(mmist_root, tmp_path, cohort=cohort))
    table = manifest.table
    assert manifest.info.cohort == f"mmist-ccrcc-{cohort}" and len(table) == n
    assert set(table["split"]) == {"train", "test"}
    for split, (alive, died) in balance.items():
        labels = manifest.labels("vital12")[manifest.split_of() == split]
        assert (int((labels == 1).sum()), int((labels == 0).sum())) == (alive, died)
    assert "survived" in manifest.info.tasks["vital12"].positive
    assert len(manifest.modality_items("ct_features")) == 239
    assert len(manifest.modality_items("wsi_features")) == n
    assert all(path.is_file() for _, path in manifest.modality_items("ct_features")[:5])
    assert len(manifest.modality_items("clinical")) == n
    small = manifest.info.small_inputs
    assert not any(spec.kind == "vector" for spec in small.values())  # default: the clinical fields only
    with_imaging = build_mmist_cohort(mmist_root, tmp_path / "imaging", cohort=cohort, small_inputs="clinical+imaging")
    imaging_inputs = Manifest.read(with_imaging).info.small_inputs
    assert imaging_inputs["ct_vector"].kind == "vector" and imaging_inputs["ct_vector"].options["dim"] == 512
    assert set(imaging_inputs) - set(small) == {"ct_vector", "wsi_vector"}
    assert small["ajcc_path_tumor_pt"].options["levels"] == [str(i) for i in range(1, 12)]
    assert small["race"].kind == "categorical" and small["age_diag"].kind == "numerical"
    row = table.set_index("sample_id").loc["C3L-00610"]
    assert row["ct_features"] == "C3L-00610-1.npz"
    assert pd.isna(row["cancer_history"]) or row["cancer_history"] == "1"
    if cohort == "all":
        assert table["race"].isna().sum() == 5
        assert int(table["age_diag"].isna().sum()) == 17


@pytest.mark.shared
def test_missing_raw_files_are_reported_not_fatal(mmist_root: Path, tmp_path: Path):
    release = read_release(mmist_root)
    ct_root, wsi_root = tmp_path / "ct", tmp_path / "wsi"
    exam = release.ct_choice.set_index("case_id").loc["C3L-00610", "chosen_exam"].lstrip("/")
    (ct_root / exam).mkdir(parents=True)
    wsi_root.mkdir()
    (wsi_root / "C3L-00610-21.svs").write_bytes(b"")  # not this patient's chosen slide (-22): still missing
    tcga = next(case for case in ct_feature_files(release) if case.startswith("TCGA"))
    name, file_id = slide_file_names(release, wsi_feature_files(release))[tcga]
    (wsi_root / file_id).mkdir()
    (wsi_root / file_id / name).write_bytes(b"")  # the gdc-client layout <file id>/<file name>
    path = build_mmist_cohort(mmist_root, tmp_path / "out", cohort="ct", ct_root=ct_root, wsi_root=wsi_root)
    manifest = Manifest.read(path)
    report = pd.read_csv(path.parent / "missing_raw.csv")
    assert (report["modality"] == "ct").sum() == 238
    assert (report["modality"] == "wsi").sum() == 238
    assert "C3L-00610" not in set(report.loc[report.modality == "ct", "sample_id"])
    assert "C3L-00610" in set(report.loc[report.modality == "wsi", "sample_id"])
    assert [sid for sid, _ in manifest.modality_items("ct")] == ["C3L-00610"]
    assert manifest.modality_items("wsi") == [(tcga, (wsi_root / file_id / name).resolve())]
