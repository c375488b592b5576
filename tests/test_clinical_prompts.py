"""Clinical-table prompts from a template over a user's own columns (from-table), and TableLLM's registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adacomed.cache_schema.manifest import Manifest
from adacomed.extract.encoders import TINY_RANDOM, create_encoder, get_spec
from adacomed.pipelines.datasets.from_table import MappingError, build_from_table
from adacomed.pipelines.datasets.prompts import PromptError, render_table_template

TABLE = pd.DataFrame(
    {
        "age": [71, 64.0, None, 50],
        "sex": ["F", "M", "F", None],
        "stage": [2, 3.0, -1, "2"],
        "smoker": ["yes", "no", "NA", "yes"],
    }
)


def test_template_fills_columns_maps_values_and_says_unknown() -> None:
    template = "A {age} year old {sex} patient, stage {stage}, smoker: {smoker}. {{literal braces}}"
    values = {"sex": {"F": "female", "M": "male"}, "stage": {2: "II", "3": "III"}}
    prompts = render_table_template(TABLE, template, values, missing_values=[-1, "NA"])
    assert prompts == [
        "A 71 year old female patient, stage II, smoker: yes. {literal braces}",
        "A 64 year old male patient, stage III, smoker: no. {literal braces}",  # 64.0 and 3.0 are 64 and 3
        "A unknown year old female patient, stage unknown, smoker: unknown. {literal braces}",
        "A 50 year old unknown patient, stage II, smoker: yes. {literal braces}",  # '2' and 2 are one key
    ]
    said = render_table_template(TABLE, "{smoker}", missing="not recorded")
    assert said == ["yes", "no", "NA", "yes"]  # 'NA' is a value unless declared missing: nothing is guessed
    assert render_table_template(TABLE.iloc[2:3], "{age}", missing="not recorded") == ["not recorded"]


@pytest.mark.parametrize(
    "template, values, message",
    [
        ("{sexe} patient", None, r"\{sexe\} is not a column of the table; did you mean \['sex'\]"),
        ("{age:.1f}", None, "format spec"),
        ("no placeholder", None, "no {column} placeholder"),
        ("{age}", {"sex": {"F": "female"}}, r"maps columns \['sex'\] that the template does not use"),
        ("{age", None, "not valid"),
    ],
)
def test_template_errors_name_the_column_not_the_patient(template: str, values: dict | None, message: str) -> None:
    with pytest.raises(PromptError, match=message) as raised:
        render_table_template(TABLE, template, values)
    assert "71" not in str(raised.value)


def test_from_table_builds_a_prompt_modality(tmp_path: Path) -> None:
    table = TABLE.assign(visit=["V1", "V2", "V3", "V4"], split=["train", "train", "val", "test"])
    table.to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "prompt.txt").write_text("Patient: {sex}, {age} years, stage {stage}.\n")
    mapping = {
        "sample_id": "visit",
        "split": "split",
        "modalities": {
            "clinical": {
                "kind": "template",
                "template": "prompt.txt",  # relative to the table's folder, like every path of a mapping
                "values": {"sex": {"F": "female", "M": "male"}},
                "missing_values": [-1],
            }
        },
    }
    manifest = Manifest.read(build_from_table(tmp_path / "cohort.csv", mapping, tmp_path / "out"))
    source = manifest.info.modalities["clinical"]
    assert source.kind == "text"
    texts = dict(manifest.modality_items("clinical"))
    assert texts["V1"] == "Patient: female, 71 years, stage 2."
    assert texts["V3"] == "Patient: female, unknown years, stage unknown."
    mapping["modalities"]["clinical"]["template"] = "missing.txt"
    with pytest.raises(MappingError, match="modality 'clinical': prompt template .*missing.txt does not exist"):
        build_from_table(tmp_path / "cohort.csv", mapping, tmp_path / "out2")
    mapping["modalities"]["clinical"] = {"kind": "template", "template": "prompt.txt", "value": {}}
    with pytest.raises(MappingError, match=r"unknown key\(s\) \['value'\]"):
        build_from_table(tmp_path / "cohort.csv", mapping, tmp_path / "out3")


def test_tablellm_is_a_llama_3_encoder_of_the_clinical_prompt() -> None:
    spec = get_spec("tablellm-8b")
    assert (spec.modality, spec.embed_dim, spec.pooling, spec.reader) == ("clinical", 4096, "masked-mean", "text")
    encoder = create_encoder("tablellm-8b", weights=TINY_RANDOM, max_length=64)
    assert type(encoder.model).__name__ == "LlamaModel"
    assert encoder.model.config.num_key_value_heads < encoder.model.config.num_attention_heads  # grouped queries
    prompts = render_table_template(TABLE, "A {age} year old {sex} patient.", {"sex": {"F": "female", "M": "male"}})
    out = encoder.encode_samples([encoder.load_input(p) for p in prompts], 4).embeddings
    assert out.shape == (4, encoder.embed_dim) and np.isfinite(out).all()
