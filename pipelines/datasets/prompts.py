"""Clinical table row -> text prompt, for the text encoders that embed the clinical table (supplement 4.2).

Two forms: the MMIST builder's template + codes file (below), and :func:`render_table_template` for a
bring-your-own table (``adacomed-data from-table``, a modality of ``kind: template``): ``{column}`` placeholders
over the table's own columns and optional value maps.

The template and the code decodings are data files a user can replace: ``templates/mmist_clinical_prompt.txt``
(``{placeholder}`` per field) and ``templates/mmist_codes.json`` (per placeholder: the source column, the words
for documented codes, the phrase for undocumented codes, the phrase for a missing value). A code the release
does not document is said as it is ("code 7"); a missing value is said as unknown; nothing is invented.
Errors name the field and the offending code, never the rendered text (it is patient data).
"""

from __future__ import annotations

import difflib
import json
import math
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES / "mmist_clinical_prompt.txt"
DEFAULT_CODES = TEMPLATES / "mmist_codes.json"


class PromptError(ValueError):
    """A template, codes file or row that cannot produce a prompt."""


def load_template(path: Path | str | None = None) -> str:
    """Read a prompt template (``{field}`` placeholders); the default is the supplement 4.2 MMIST template."""
    path = Path(path) if path is not None else DEFAULT_TEMPLATE
    if not path.is_file():
        raise PromptError(f"prompt template {path} does not exist")
    return path.read_text(encoding="utf-8").strip()


def load_codes(path: Path | str | None = None) -> dict[str, Any]:
    """Read a codes file (see ``templates/mmist_codes.json``) and check every field is usable."""
    path = Path(path) if path is not None else DEFAULT_CODES
    if not path.is_file():
        raise PromptError(f"codes file {path} does not exist")
    try:
        codes = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PromptError(f"codes file {path} is not valid JSON: {exc}") from exc
    fields = codes.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise PromptError(f"codes file {path} has no 'fields' object")
    for name, spec in fields.items():
        if "column" not in spec and "one_hot" not in spec:
            raise PromptError(f"codes file {path}: field {name!r} needs 'column' or 'one_hot'")
    return codes


def template_fields(template: str) -> list[str]:
    """The placeholder names a template uses, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def normalise_code(value: Any, missing_codes: list[Any] | tuple[Any, ...] = (-1,)) -> str | None:
    """A cell as a code string ('6.0' and 6 -> '6'), or None when blank or a declared missing code."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return None if text in {str(m) for m in missing_codes} else text
    number = float(value)
    if math.isnan(number):
        return None
    if any(number == float(m) for m in missing_codes):
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def field_phrase(name: str, spec: Mapping[str, Any], row: Mapping[str, Any], missing_codes: list[Any]) -> str:
    """The words one field contributes to the prompt."""
    missing_phrase = spec.get("missing_phrase", "unknown")
    if "one_hot" in spec:
        chosen = [words for column, words in spec["one_hot"].items() if normalise_code(_cell(row, column, name)) == "1"]
        if len(chosen) > 1:
            raise PromptError(f"field {name!r}: more than one one-hot column is set ({len(chosen)})")
        return chosen[0] if chosen else missing_phrase
    code = normalise_code(_cell(row, spec["column"], name), missing_codes)
    if code is None:
        return missing_phrase
    words = spec.get("words", {})
    if code in words:
        return words[code]
    if "code_phrase" not in spec:
        raise PromptError(f"field {name!r}: code {code!r} has no words and the field has no 'code_phrase'")
    return spec["code_phrase"].format(code=code)


def render_prompt(row: Mapping[str, Any], template: str | None = None, codes: Mapping[str, Any] | None = None) -> str:
    """Fill ``template`` from one clinical row (release column names) using ``codes``' decodings.

    Args:
        row: a mapping from release column names to cell values (a pandas row works).
        template: template text; default the supplement 4.2 MMIST template.
        codes: parsed codes file; default ``templates/mmist_codes.json``.
    """
    template = load_template() if template is None else template
    codes = load_codes() if codes is None else codes
    fields = codes["fields"]
    missing_codes = list(codes.get("missing_codes", [-1]))
    values: dict[str, str] = {}
    for name in template_fields(template):
        if name not in fields:
            raise PromptError(
                f"template placeholder {{{name}}} has no entry in the codes file; known: {sorted(fields)}"
            )
        values[name] = field_phrase(name, fields[name], row, missing_codes)
    return template.format(**values)


def _cell(row: Mapping[str, Any], column: str, field: str) -> Any:
    try:
        return row[column]
    except KeyError:
        raise PromptError(f"field {field!r} reads column {column!r}, which the row does not have") from None


# ---------------------------------------------------------------------------------- bring-your-own templates
TABLE_TEMPLATE_KEYS = ("kind", "template", "values", "missing", "missing_values")


def template_columns(template: str) -> list[str]:
    """The ``{column}`` placeholders of a table template, in order; a format spec or conversion is refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptError(f"template is not valid: {exc} (write a literal brace as {{{{ or }}}})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name:
            raise PromptError("template has an empty placeholder {}; name a column inside the braces")
        if spec or conversion:
            raise PromptError(f"placeholder {{{name}}} has a format spec or conversion; write just {{column}}")
        names.append(name)
    return names


def cell_words(value: Any, words: Mapping[str, str], missing: str, missing_values: set[str]) -> str:
    """One cell as prompt words: its mapped words, else the value itself; missing cells are ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    text = _cell_text(value)
    if text == "" or text in missing_values:
        return missing
    return str(words.get(text, text))


def render_table_template(
    rows: Any,
    template: str,
    values: Mapping[str, Mapping[Any, Any]] | None = None,
    missing: str = "unknown",
    missing_values: list[Any] | tuple[Any, ...] = (),
) -> list[str]:
    """Fill ``template`` once per row of a table (a DataFrame): ``{column}`` placeholders, optional value maps.

    ``values`` maps a column to ``{cell value: words}`` (keys compared as text, so ``2``, ``2.0`` and ``"2"`` are
    one key); an unmapped value is said as it is; a blank cell or one in ``missing_values`` is said as
    ``missing`` ("unknown"). Nothing is invented. Errors name the column, never a cell or the rendered text.
    """
    columns = template_columns(template)
    if not columns:
        raise PromptError("template has no {column} placeholder; it would give every sample the same text")
    available = [str(c) for c in rows.columns]
    for name in dict.fromkeys(columns):
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
            hint = f"; did you mean {close}?" if close else f"; the table has {available}"
            raise PromptError(f"template placeholder {{{name}}} is not a column of the table{hint}")
    maps = {
        str(column): {_cell_text(key): str(said) for key, said in (words or {}).items()}
        for column, words in (values or {}).items()
    }
    unused = sorted(set(maps) - set(columns))
    if unused:
        raise PromptError(f"'values' maps columns {unused} that the template does not use")
    absent = {_cell_text(v) for v in missing_values}
    pieces = list(string.Formatter().parse(template))
    out = []
    for record in rows[list(dict.fromkeys(columns))].to_dict("records"):
        text = []
        for literal, name, _, _ in pieces:
            text.append(literal)
            if name is not None:
                text.append(cell_words(record[name], maps.get(name, {}), missing, absent))
        out.append("".join(text))
    return out


def _cell_text(value: Any) -> str:
    """A cell or map key as text: 2, 2.0 and '2' are '2'; strings are stripped."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value).strip()
        if math.isnan(number):
            return ""
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value).strip()


def prompts_from_mapping(table: Any, entry: Mapping[str, Any], base_dir: Path) -> list[str]:
    """The prompts a ``kind: template`` modality of a from-table mapping asks for, one per table row.

    ``entry`` holds ``template`` (a text file, relative to ``base_dir`` unless absolute) and optionally ``values``,
    ``missing`` and ``missing_values`` (see :func:`render_table_template`).
    """
    unknown = sorted(set(entry) - set(TABLE_TEMPLATE_KEYS))
    if unknown:
        raise PromptError(f"unknown key(s) {unknown}; a template modality takes {list(TABLE_TEMPLATE_KEYS)}")
    if "template" not in entry:
        raise PromptError("needs 'template: <file>' (a text file with {column} placeholders)")
    path = Path(str(entry["template"]))
    path = path if path.is_absolute() else base_dir / path
    values = entry.get("values") or {}
    if not isinstance(values, Mapping) or not all(isinstance(v, Mapping) for v in values.values()):
        raise PromptError("'values' must map a column to {cell value: words}")
    missing_values = entry.get("missing_values") or []
    if not isinstance(missing_values, (list, tuple)):
        raise PromptError("'missing_values' must be a list of cell values that mean not recorded")
    return render_table_template(
        table, load_template(path), values, str(entry.get("missing", "unknown")), list(missing_values)
    )
