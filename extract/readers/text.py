"""Clinical note cleaning (supplement, "Text Processing": remove line breaks, standardise whitespace).

The cleaning version goes into every text encoder's fingerprint: change what :func:`read_note` does and bump it.
Errors never quote the note.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import InputReader, ReaderSpec, register_reader

NOTE_CLEANING_VERSION = "1"


def read_note(text: Any) -> str:
    """Return the note with line breaks removed and every whitespace run collapsed to one space."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        raise InputError("note is missing", "read")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("note bytes are not valid UTF-8", "decode") from None
    if not isinstance(text, str):
        raise InputError(f"note is not text (got {type(text).__name__})", "decode")
    # str.split() with no argument splits on every Unicode whitespace, line breaks (\r, \n, \u2028) included.
    cleaned = " ".join(text.replace("\x00", " ").split())
    if not cleaned:
        raise InputError("empty note", "preprocess")
    return cleaned


@register_reader
class TextReader(InputReader):
    """Notes and clinical prompts held in the manifest: cleaned text (never logged)."""

    spec = ReaderSpec("text", version=NOTE_CLEANING_VERSION, description="text in the manifest (notes, prompts)")

    def read(self, pointer: Any) -> str:
        return read_note(pointer)

    def parameters(self) -> dict[str, Any]:
        return {"cleaning": f"read_note/{NOTE_CLEANING_VERSION}"}

    @classmethod
    def examples(cls, folder: Path) -> list[Any]:
        return [
            "Patient admitted with chest pain.\nNo fever.",
            "Left renal mass, clear cell carcinoma, grade 3, stage T2.",
        ]
