"""Bring-your-own cohort: table + mapping -> manifest, and the errors that tell the user what to fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from adacomed.cache_schema.manifest import Manifest
from adacomed.pipelines.datasets.from_table import MappingError, assign_splits, build_from_table, load_mapping

TEMPLATE = Path(__file__).resolve().parents[1] / "pipelines" / "datasets" / "templates" / "example_mapping.yaml"


def _cohort(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "images" / name).write_bytes(b"\x89PNG")
    table = pd.DataFrame(
        {
            "visit": ["V1", "V2", "V3", "V4"],
            "patient": ["P1", "P1", "P2", "P3"],
            "cxr": ["a.png", "b.png", "c.png", "gone.png"],
            "note": ["Chest pain.", "Dyspnoea.", "", "Fever."],
            "age": [71, 64, None, 50],
            "sex": ["F", "M", "F", None],
            "stage": ["II", "III", "I", "II"],
            "died": ["yes", "no", "no", None],
            "set": ["train", "training", "validation", "test"],
        }
    )
    path = tmp_path / "cohort.csv"
    table.to_csv(path, index=False)
    return path


MAPPING = {
    "cohort": "toy-hospital",
    "sample_id": "visit",
    "subject_id": "patient",
    "split": "set",
    "tasks": {
        "mortality": {"column": "died", "positive": "died", "positive_values": ["yes"], "negative_values": ["no"]}
    },
    "modalities": {
        "xray": {"column": "cxr", "kind": "path", "root": "images"},
        "notes": {"column": "note", "kind": "text"},
    },
    "small_inputs": {
        "xray": {"column": "cxr", "kind": "image", "root": "images"},
        "age": {"column": "age", "kind": "numerical"},
        "sex": {"column": "sex", "kind": "categorical"},
        "stage": {"column": "stage", "kind": "ordinal", "levels": ["I", "II", "III", "IV"]},
    },
}


def test_table_becomes_a_valid_manifest_that_round_trips(tmp_path: Path):
    csv = _cohort(tmp_path)
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(yaml.safe_dump(MAPPING))
    path = build_from_table(csv, mapping_file, tmp_path / "out")
    manifest = Manifest.read(path)
    assert manifest.info.cohort == "toy-hospital"
    assert manifest.sample_ids == ["V1", "V2", "V3", "V4"]
    assert manifest.table["subject_id"].tolist() == ["P1", "P1", "P2", "P3"]
    assert manifest.table["split"].tolist() == ["train", "train", "val", "test"]
    labels = manifest.labels("mortality")
    assert labels.iloc[:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(labels.iloc[3])
    xray = dict(manifest.modality_items("xray"))
    assert xray == {f"V{i}": (tmp_path / "images" / n).resolve() for i, n in ((1, "a.png"), (2, "b.png"), (3, "c.png"))}
    assert dict(manifest.modality_items("notes")) == {"V1": "Chest pain.", "V2": "Dyspnoea.", "V4": "Fever."}
    small = manifest.info.small_inputs
    assert small["stage"].options["levels"] == ["I", "II", "III", "IV"]
    assert small["sex"].options["categories"] == ["F", "M"]
    assert (
        small["xray"].kind == "image"
        and (path.parent / small["xray"].options["root"]).resolve() == (tmp_path / "images").resolve()
    )
    assert np.isnan(manifest.table[small["age"].column].iloc[2])
    missing = pd.read_csv(path.parent / "missing_files.csv")
    assert set(missing["sample_id"]) == {"V4"}  # a column shared by two inputs is checked once
    assert Manifest.read(Manifest(manifest.table, manifest.info).write(tmp_path / "copy.parquet")).info == manifest.info


def test_strict_makes_missing_files_an_error(tmp_path: Path):
    with pytest.raises(MappingError, match=r"1 referenced files do not exist \(first samples: \['V4'\]\)"):
        build_from_table(_cohort(tmp_path), {**MAPPING, "strict": True}, tmp_path / "out")


def test_unknown_column_suggests_the_close_match(tmp_path: Path):
    mapping = {**MAPPING, "small_inputs": {"age": {"column": "agee", "kind": "numerical"}}}
    with pytest.raises(
        MappingError, match=r"small input 'age': column 'agee' is not in the table; did you mean \['age'"
    ):
        build_from_table(_cohort(tmp_path), mapping, tmp_path / "out")
    with pytest.raises(MappingError, match=r"'taks'.*'tasks'"):
        load_mapping({"sample_id": "visit", "taks": {}})


def test_bad_labels_name_the_sample_and_the_fix(tmp_path: Path):
    mapping = {**MAPPING, "tasks": {"mortality": {"column": "died"}}}
    with pytest.raises(MappingError, match=r"sample 'V1' \(row 0\).*'yes', not 0/1.*positive_values"):
        build_from_table(_cohort(tmp_path), mapping, tmp_path / "out")
    mapping = {**MAPPING, "tasks": {"mortality": {"column": "died", "positive_values": ["yes"]}}}
    with pytest.raises(MappingError, match=r"sample 'V2'.*'no'"):
        build_from_table(_cohort(tmp_path), mapping, tmp_path / "out")


def test_bad_ordinal_and_split_values_are_named(tmp_path: Path):
    mapping = {**MAPPING, "small_inputs": {"stage": {"column": "stage", "kind": "ordinal", "levels": ["I", "II"]}}}
    with pytest.raises(MappingError, match=r"sample 'V2': ordinal input 'stage' is 'III'"):
        build_from_table(_cohort(tmp_path), mapping, tmp_path / "out")
    csv = _cohort(tmp_path)
    pd.read_csv(csv).assign(set=["train", "train", "holdout", "test"]).to_csv(csv, index=False)
    with pytest.raises(MappingError, match=r"sample 'V3': split column 'set' is 'holdout'.*split_values"):
        build_from_table(csv, MAPPING, tmp_path / "out")
    path = build_from_table(csv, {**MAPPING, "split_values": {"holdout": "val"}}, tmp_path / "out")
    assert Manifest.read(path).table["split"].tolist() == ["train", "train", "val", "test"]


def test_split_ratios_assign_whole_subjects_deterministically():
    subjects = pd.Series([f"P{i // 3}" for i in range(300)])  # 100 subjects, 3 rows each
    ratios = {"train": 0.7, "val": 0.1, "test": 0.2}
    first = assign_splits(subjects, ratios, seed=5)
    assert first == assign_splits(subjects, ratios, seed=5)
    assert first != assign_splits(subjects, ratios, seed=6)
    per_subject = pd.DataFrame({"s": subjects, "split": first}).groupby("s")["split"].nunique()
    assert (per_subject == 1).all()
    counts = pd.Series(first).value_counts() / 3
    assert counts.to_dict() == {"train": 70, "test": 20, "val": 10}


def test_split_ratios_in_a_build(tmp_path: Path):
    mapping = {k: v for k, v in MAPPING.items() if k != "split"} | {"split_ratios": {"train": 0.5, "test": 0.5}}
    manifest = Manifest.read(build_from_table(_cohort(tmp_path), mapping, tmp_path / "out"))
    splits = manifest.table.groupby("subject_id")["split"].nunique()
    assert (splits == 1).all() and set(manifest.table["split"]) == {"train", "test"}


def test_example_mapping_template_is_a_valid_mapping():
    mapping = load_mapping(TEMPLATE)
    assert mapping["sample_id"] == "stay_id" and "mortality" in mapping["tasks"]
