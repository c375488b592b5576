"""The input-reader contract and registry: one file per input kind, one decorator per reader.

A reader turns one manifest pointer (a resolved path, a text, or inline values) into a decoded sample that an
encoder then preprocesses: an X-ray image, a cleaned note, a slide, a CT volume, a time-series grid. Encoders name
the kind they read (``EncoderSpec.reader``), so an encoder never hard-codes a file format, and each reader ships
tiny ``examples()`` that the registry test feeds to every encoder reading that kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ExtractError
from ..options import check_options


@dataclass(frozen=True)
class ReaderSpec:
    """What a reader is, declared once on its class.

    Args:
        name: registry key, the input kind (``xray``, ``text``, ``slide``, ...).
        version: bump it when the decoded output changes for the same input (it keys every cache read with it).
        description: one line for ``--list-encoders`` and the README.
        options: option names the reader accepts (``--option`` of the encoder that reads this kind).
    """

    name: str
    version: str = "1"
    description: str = ""
    options: tuple[str, ...] = ()


class InputReader(ABC):
    """Reads one manifest pointer; raises :class:`~adacomed.cache_schema.errors.InputError` on a bad sample."""

    spec: ReaderSpec

    def __init__(self, **options: Any):
        check_options(f"reader {self.spec.name!r}", options, self.spec.options)
        self.options = options

    @abstractmethod
    def read(self, pointer: Any) -> Any:
        """One pointer -> the decoded sample. Messages name the file or cause, never patient text."""

    def parameters(self) -> dict[str, Any]:
        """Every reading parameter that changes the output; part of the cache fingerprint."""
        return {"reader": f"{self.spec.name}/{self.spec.version}"}

    @classmethod
    @abstractmethod
    def examples(cls, folder: Path) -> list[Any]:
        """Write at least two tiny valid inputs of this kind into ``folder``; return their manifest pointers."""


R = TypeVar("R", bound=type[InputReader])
_READERS: dict[str, type[InputReader]] = {}


def register_reader(cls: R) -> R:
    """Class decorator: register a reader under ``cls.spec.name``."""
    name = cls.spec.name
    if name in _READERS:
        raise ValueError(f"reader {name!r} is already registered")
    _READERS[name] = cls
    return cls


def list_readers() -> list[str]:
    return sorted(_READERS)


def get_reader_class(name: str) -> type[InputReader]:
    try:
        return _READERS[name]
    except KeyError:
        raise ExtractError(f"unknown input kind {name!r}; registered readers: {list_readers()}") from None


def create_reader(name: str, **options: Any) -> InputReader:
    return get_reader_class(name)(**options)
