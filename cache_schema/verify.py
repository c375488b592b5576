"""Integrity checks of committed caches: every shard re-hashed against its commit record."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CorruptShard
from .store import check_shard


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Problems found in one cache folder (empty list = healthy). Names each damaged shard."""
    path = Path(path)
    problems: list[str] = []
    index_path = path / "index.json"
    if index_path.exists():
        records = json.loads(index_path.read_text())["shards"]
    else:
        problems.append(f"{path}: not finalised (no index.json); checking the committed shards only")
        records = []
        for sidecar in sorted((path / "shards").glob("shard-*.json")):
            try:
                records.append(json.loads(sidecar.read_text()))
            except json.JSONDecodeError:
                problems.append(f"{sidecar}: commit record is not valid JSON")
    for record in records:
        try:
            check_shard(path, record)
        except CorruptShard as exc:
            problems.append(str(exc))
    return problems
