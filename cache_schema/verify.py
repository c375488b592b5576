"""Integrity checks of committed caches: every shard re-hashed against its commit record."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptShard
from .reader import sidecars
from .store import check_shard


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify_cache`: ``damaged`` (a shard's bytes are wrong) or ``unfinished``."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def verify_cache(path: str | os.PathLike) -> list[Problem]:
    """Problems found in one cache folder (empty list = healthy). Names each damaged shard."""
    path = Path(path)
    problems: list[Problem] = []
    index_path = path / "index.json"
    if index_path.exists():
        records = json.loads(index_path.read_text())["shards"]
    else:
        problems.append(Problem("unfinished", f"{path}: not finalised (no index.json); checked committed shards"))
        records = sidecars(path)
    for record in records:
        try:
            check_shard(path, record)
        except CorruptShard as exc:
            problems.append(Problem("damaged", str(exc)))
    return problems
