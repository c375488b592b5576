"""Clinical table row -> text prompt, for the text encoders that embed the clinical table (supplement 4.2).

The template and the code decodings are data files a user can replace: ``templates/mmist_clinical_prompt.txt``
(``{placeholder}`` per field) and ``templates/mmist_codes.json`` (per placeholder: the source column, the words
for documented codes, the phrase for undocumented codes, the phrase for a missing value). A code the release
does not document is said as it is ("code 7"); a missing value is said as unknown; nothing is invented.
Errors name the field and the offending code, never the rendered text (it is patient data).
"""

from __future__ import annotations

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
