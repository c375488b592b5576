"""The editable variable lists of the MIMIC-IV-MM time series (``pipelines/datasets/mimic/variables/*.csv``).

Three files name which MIMIC-IV items become time-series channels:

* ``vitals.csv`` (read from ``icu/chartevents``) and ``labs.csv`` (from ``hosp/labevents``): columns
  ``itemid, name, kind, multiply, add, min, max, mapping``. ``kind`` is ``numerical`` (``valuenum`` times
  ``multiply`` plus ``add``, e.g. Fahrenheit to Celsius; values outside ``[min, max]`` are dropped as charting
  errors) or ``categorical`` (the text ``value`` mapped to a code by ``mapping``: ``text=code|text=code``,
  matched case-insensitively; unmapped texts are counted, never guessed).
* ``procedures.csv`` (from ``icu/procedureevents``): ``itemid, name, kind`` with kind ``indicator``.

Several itemids may share a ``name`` (e.g. non-invasive and arterial systolic pressure); they fill one channel.
A fourth file, ``admission_types.csv``, says which ``admission_type`` values are planned (for readmission).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .sources import MimicError

DEFAULT_VARIABLES_DIR = Path(__file__).resolve().parent / "variables"
EVENT_KINDS = ("numerical", "categorical")
SOURCE_FILES = {"vitals": "chartevents", "labs": "labevents", "procedures": "procedureevents"}


@dataclass(frozen=True)
class EventItem:
    """One MIMIC itemid feeding one channel."""

    itemid: int
    name: str
    kind: str
    multiply: float = 1.0
    add: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    mapping: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VariableSet:
    """All channels of the grid, in order, and the items of each source table."""

    chart: dict[int, EventItem]
    lab: dict[int, EventItem]
    procedure: dict[int, EventItem]
    channels: tuple[str, ...]
    channel_kinds: dict[str, str]
    planned_admission_types: frozenset[str]
    known_admission_types: frozenset[str]

    def channel_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.channels)}


def _number(raw: object, default: float, where: str) -> float:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise MimicError(f"{where}: {raw!r} is not a number") from None


def _parse_mapping(raw: object, where: str) -> dict[str, float]:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
        raise MimicError(f"{where}: a categorical item needs a mapping 'text=code|text=code'")
    mapping: dict[str, float] = {}
    for pair in str(raw).split("|"):
        text, sep, code = pair.rpartition("=")
        if not sep or not text.strip():
            raise MimicError(f"{where}: mapping entry {pair!r} is not 'text=code'")
        mapping[text.strip().casefold()] = _number(code, math.nan, where)
    return mapping


def _read_items(path: Path, allowed_kinds: tuple[str, ...]) -> list[EventItem]:
    if not path.is_file():
        raise MimicError(f"variable list {path} does not exist (copy it from {DEFAULT_VARIABLES_DIR})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = ["itemid", "name", "kind"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise MimicError(f"{path} lacks column(s) {missing}; expected {required} (+ multiply, add, min, max, mapping)")
    items = []
    seen: set[int] = set()
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        where = f"{path.name} line {row_number}"
        try:
            itemid = int(row["itemid"])
        except ValueError:
            raise MimicError(f"{where}: itemid {row['itemid']!r} is not an integer") from None
        if itemid in seen:
            raise MimicError(f"{where}: itemid {itemid} is listed twice")
        seen.add(itemid)
        kind = row["kind"].strip()
        if kind not in allowed_kinds:
            raise MimicError(f"{where}: kind {kind!r} is not one of {list(allowed_kinds)}")
        name = row["name"].strip()
        if not name:
            raise MimicError(f"{where}: empty name")
        items.append(
            EventItem(
                itemid=itemid,
                name=name,
                kind=kind,
                multiply=_number(row.get("multiply"), 1.0, where),
                add=_number(row.get("add"), 0.0, where),
                low=_number(row.get("min"), -math.inf, where),
                high=_number(row.get("max"), math.inf, where),
                mapping=_parse_mapping(row.get("mapping"), where) if kind == "categorical" else {},
            )
        )
    return items


def _read_admission_types(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    if not path.is_file():
        raise MimicError(f"admission type list {path} does not exist (copy it from {DEFAULT_VARIABLES_DIR})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns[:2]) != ["admission_type", "planned"]:
        raise MimicError(f"{path} must have columns admission_type, planned (yes/no)")
    bad = table[~table["planned"].str.strip().str.lower().isin(["yes", "no"])]
    if len(bad):
        raise MimicError(f"{path}: planned must be yes or no, got {bad['planned'].iloc[0]!r}")
    types = table["admission_type"].str.strip()
    planned = types[table["planned"].str.strip().str.lower() == "yes"]
    return frozenset(planned), frozenset(types)


def load_variables(variables_dir: Path | None = None) -> VariableSet:
    """Read the four lists from ``variables_dir`` (default: the shipped ``pipelines/datasets/mimic/variables``).

    Raises:
        MimicError: a file is missing or malformed (the message names the file and line), or one channel name
            is used with two different kinds.
    """
    folder = Path(variables_dir) if variables_dir is not None else DEFAULT_VARIABLES_DIR
    chart = _read_items(folder / "vitals.csv", EVENT_KINDS)
    lab = _read_items(folder / "labs.csv", EVENT_KINDS)
    procedure = _read_items(folder / "procedures.csv", ("indicator",))
    channels: list[str] = []
    kinds: dict[str, str] = {}
    for item in [*chart, *lab, *procedure]:
        if item.name in kinds and kinds[item.name] != item.kind:
            raise MimicError(f"channel {item.name!r} is listed as both {kinds[item.name]} and {item.kind}")
        if item.name not in kinds:
            channels.append(item.name)
            kinds[item.name] = item.kind
    planned, known = _read_admission_types(folder / "admission_types.csv")
    return VariableSet(
        chart={i.itemid: i for i in chart},
        lab={i.itemid: i for i in lab},
        procedure={i.itemid: i for i in procedure},
        channels=tuple(channels),
        channel_kinds=kinds,
        planned_admission_types=planned,
        known_admission_types=known,
    )


def check_against_dictionaries(variables: VariableSet, d_items: pd.DataFrame, d_labitems: pd.DataFrame) -> None:
    """Every listed itemid must exist in the release's dictionary and live in the table we read it from.

    Raises:
        MimicError: naming the itemids that are unknown or belong to another table (a typo in a variable list).
    """
    known_lab = set(pd.to_numeric(d_labitems["itemid"], errors="coerce").dropna().astype(int))
    unknown_lab = sorted(set(variables.lab) - known_lab)
    if unknown_lab:
        raise MimicError(f"labs.csv lists itemid(s) {unknown_lab} that hosp/d_labitems does not have")
    linksto = dict(
        zip(pd.to_numeric(d_items["itemid"], errors="coerce"), d_items["linksto"].astype(str).str.strip(), strict=True)
    )
    for items, file, table in (
        (variables.chart, "vitals.csv", "chartevents"),
        (variables.procedure, "procedures.csv", "procedureevents"),
    ):
        unknown = sorted(i for i in items if i not in linksto)
        if unknown:
            raise MimicError(f"{file} lists itemid(s) {unknown} that icu/d_items does not have")
        elsewhere = sorted(f"{i} ({linksto[i]})" for i in items if linksto[i] != table)
        if elsewhere:
            raise MimicError(f"{file} lists itemid(s) {elsewhere} that d_items says are not in {table}")
