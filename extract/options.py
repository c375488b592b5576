"""Option checking shared by the reader and encoder registries: an unknown option is an error naming close matches."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ExtractError


def check_options(owner: str, given: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise :class:`ExtractError` if ``given`` holds an option ``owner`` does not accept (a typo never passes)."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ExtractError(f"{owner}: unknown option {', '.join(hints)}; known: {', '.join(known) or 'none'}")
