"""Clinical table fields -> one tabular group: categorical codes, ordinal ranks, standardised numbers.

Everything is learned from the TRAIN split: the category vocabulary per field (code = 1 + index of the sorted
train values; 0 = missing, and a value never seen in training also maps to 0), the ordinal levels (declared in
``options["levels"]`` in order, else the sorted distinct train values; code = 1 + the level's index, 0 =
missing), and the mean/std of numerical fields (missing = NaN). The small model embeds every categorical and
ordinal code, missing included, as a learned vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cache_schema import Manifest, SmallInput
from .input_groups import Encoded, InputGroup, is_missing
from .small_model import SmallInputSpec


def level_key(value: Any) -> str:
    """Compare levels and categories as text, with 2.0 and 2 the same level."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _sorted_levels(keys: list[str]) -> list[str]:
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


class TabularGroup(InputGroup):
    """All categorical, ordinal and numerical small inputs of a manifest, in declaration order per kind."""

    model_kind = "tabular"

    def __init__(self, name: str, manifest: Manifest, inputs: dict[str, SmallInput]):
        super().__init__(name, manifest, inputs)
        self.categorical = [f for f, s in inputs.items() if s.kind == "categorical"]
        self.ordinal = [f for f, s in inputs.items() if s.kind == "ordinal"]
        self.numerical = [f for f, s in inputs.items() if s.kind == "numerical"]
        self.vocabularies: dict[str, list[str]] = {}
        self.levels: dict[str, list[str]] = {}
        self.declared_levels: dict[str, bool] = {}
        self.moments: dict[str, tuple[float, float]] = {}

    def field_values(self, field: str) -> list[Any]:
        return self.column(self.inputs[field])

    def fit(self) -> None:
        for field in self.categorical:
            values = self.field_values(field)
            self.vocabularies[field] = sorted(
                {level_key(values[r]) for r in self.train_rows if not is_missing(values[r])}
            )
        for field in self.ordinal:
            declared = self.inputs[field].options.get("levels")
            self.declared_levels[field] = declared is not None
            if declared is not None:
                self.levels[field] = [level_key(v) for v in declared]
            else:
                values = self.field_values(field)
                self.levels[field] = _sorted_levels(
                    list({level_key(values[r]) for r in self.train_rows if not is_missing(values[r])})
                )
        for field in self.numerical:
            numbers = pd.to_numeric(pd.Series(self.field_values(field)), errors="coerce").to_numpy(dtype=float)
            train = numbers[self.train_rows]
            train = train[np.isfinite(train)]
            mean = float(train.mean()) if train.size else 0.0
            std = float(train.std()) if train.size else 1.0
            self.moments[field] = (mean, std if std > 1e-8 else 1.0)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "categorical": {f: self.vocabularies[f] for f in self.categorical},
            "categorical_order": self.categorical,
            "ordinal": {f: self.levels[f] for f in self.ordinal},
            "ordinal_order": self.ordinal,
            "numerical": {f: list(self.moments[f]) for f in self.numerical},
            "numerical_order": self.numerical,
            "unseen_category": "missing (0)",
            "ordinal_encoding": "level code (1 + index, 0 = missing)",
        }

    def encode(self, rows: list[int]) -> Encoded:
        n = len(rows)
        arrays: dict[str, np.ndarray] = {}
        errors: list[dict[str, str]] = []
        observed = np.zeros(n, dtype=bool)
        if self.categorical:
            codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, field in enumerate(self.categorical):
                code_of = {key: i + 1 for i, key in enumerate(self.vocabularies[field])}
                values = self.field_values(field)
                for out, row in enumerate(rows):
                    if not is_missing(values[row]):
                        codes[out, j] = code_of.get(level_key(values[row]), 0)
            arrays[f"{self.name}.categorical"] = codes
            observed |= (codes > 0).any(axis=1)
        if self.ordinal:
            levels_codes = np.zeros((n, len(self.ordinal)), dtype=np.int64)
            for j, field in enumerate(self.ordinal):
                levels = self.levels[field]
                code_of = {key: i + 1 for i, key in enumerate(levels)}
                values = self.field_values(field)
                for out, row in enumerate(rows):
                    if is_missing(values[row]):
                        continue
                    code = code_of.get(level_key(values[row]))
                    if code is None:
                        if self.declared_levels[field]:
                            errors.append(
                                self.error(
                                    row,
                                    f"{self.inputs[field].column}: value is not one of the "
                                    f"{len(levels)} declared levels",
                                )
                            )
                        continue  # unseen in training: missing
                    levels_codes[out, j] = code
            arrays[f"{self.name}.ordinal"] = levels_codes
            observed |= (levels_codes > 0).any(axis=1)
        if self.numerical:
            numbers = np.full((n, len(self.numerical)), np.nan, dtype=np.float32)
            for j, field in enumerate(self.numerical):
                mean, std = self.moments[field]
                values = self.field_values(field)
                for out, row in enumerate(rows):
                    value = values[row]
                    if is_missing(value):
                        continue
                    number = float(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0])
                    if not np.isfinite(number):
                        errors.append(self.error(row, f"{self.inputs[field].column}: not a finite number"))
                        continue
                    numbers[out, j] = (number - mean) / std
            arrays[f"{self.name}.numerical"] = numbers
            observed |= np.isfinite(numbers).any(axis=1)
        arrays[f"{self.name}.present"] = observed
        return arrays, errors

    def spec(self, cache_path: Path) -> SmallInputSpec:
        return SmallInputSpec(
            kind="tabular",
            n_categories=[len(self.vocabularies[f]) + 1 for f in self.categorical] or None,
            n_levels=[len(self.levels[f]) + 1 for f in self.ordinal] or None,
            n_numerical=len(self.numerical),
        )
