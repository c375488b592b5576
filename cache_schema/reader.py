"""The public reader API: the only way stage two (or anyone) reads a cache.

from adacomed.cache_schema import open_cache
cache = open_cache("cache/", "xray")            # the one committed (xray, *) cache, or name the encoder
cache.ids, cache.dim, cache.dtype                 # sample ids in row order, output dim, stored dtype
cache.read_all()                                  # (N, D) numpy; a zero-copy memory map for one HDF5 shard
cache.read(["s001", "s007"])                      # rows for those ids, in that order
cache.torch(["s001"])                             # the same as a torch tensor
cache.errors()                                    # per-sample failures (sample_id, stage, reason)
cache.bag_names, cache.read_bag("s001")           # per-sample bags (a slide's patch features and coords)
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import CacheIncomplete, CacheNotFound, CorruptShard
from .fingerprint import Fingerprint
from .shards import ShardReader
from .store import slug


@dataclass(frozen=True)
class CacheSummary:
    """One cache folder as ``adacomed-cache ls`` shows it."""

    path: Path
    modality: str
    encoder: str
    key: str
    status: str  # complete | partial | empty
    rows: int
    n_shards_committed: int
    n_shards_planned: int
    n_errors: int


def _sidecar_of(path: Path, data_file: str) -> dict[str, Any]:
    """The commit record of a data file ``shards/shard-00003-of-00008.<checksum>.h5``."""
    shard = Path(data_file).name.split(".", 1)[0]
    return json.loads((path / "shards" / f"{shard}.json").read_text())


def sidecars(path: Path) -> list[dict[str, Any]]:
    """Every parseable commit record of a cache folder, in shard order."""
    return _sidecars(path)


def _sidecars(path: Path) -> list[dict[str, Any]]:
    records = []
    for sidecar in sorted((path / "shards").glob("shard-*.json")):
        try:
            records.append(json.loads(sidecar.read_text()))
        except json.JSONDecodeError:
            continue
    return records


def summarise(path: Path) -> CacheSummary:
    fp = json.loads((path / "fingerprint.json").read_text())
    planned = 0
    if (path / "plan.json").exists():
        planned = json.loads((path / "plan.json").read_text())["n_shards"]
    records = _sidecars(path)
    if (path / "index.json").exists():
        status = "complete"
    elif records:
        status = "partial"
    else:
        status = "empty"
    return CacheSummary(
        path=path,
        modality=fp["modality"],
        encoder=fp["encoder"],
        key=path.name,
        status=status,
        rows=sum(r["rows"] for r in records),
        n_shards_committed=len(records),
        n_shards_planned=planned,
        n_errors=sum(len(r.get("errors", [])) for r in records),
    )


def list_caches(cache_root: str | os.PathLike) -> list[CacheSummary]:
    """Every cache folder (complete or not) under a cache root."""
    root = Path(cache_root)
    return [summarise(fp.parent) for fp in sorted(root.glob("*/*/*/fingerprint.json"))]


def open_cache(
    cache_root: str | os.PathLike,
    modality: str,
    encoder: str | None = None,
    key: str | None = None,
    allow_partial: bool = False,
) -> EmbeddingCache:
    """Open the committed cache of one modality (and encoder, and key when several exist).

    Raises:
        CacheNotFound: nothing matches, or several match and the call did not say which (all are listed).
        CacheIncomplete: the match is not finalised and ``allow_partial`` is False.
    """
    root = Path(cache_root)
    pattern = f"{slug(modality)}/{slug(encoder) if encoder else '*'}/{key or '*'}/fingerprint.json"
    candidates = [summarise(fp.parent) for fp in sorted(root.glob(pattern))]
    if not candidates:
        existing = [f"{c.modality}/{c.encoder}/{c.key} ({c.status})" for c in list_caches(root)]
        raise CacheNotFound(
            f"no cache for modality={modality!r} encoder={encoder!r} key={key!r} under {root}; "
            f"existing: {existing or 'none'}"
        )
    usable = [c for c in candidates if c.status == "complete" or allow_partial]
    if not usable:
        c = candidates[0]
        raise CacheIncomplete(
            f"cache {c.path} is {c.status}: {c.n_shards_committed}/{c.n_shards_planned} shards committed; "
            "rerun the extraction to finish it, or pass allow_partial"
        )
    if len(usable) > 1:
        listing = "\n  ".join(f"{c.encoder}/{c.key}: {c.rows} rows, {c.status}" for c in usable)
        raise CacheNotFound(f"several caches match modality={modality!r}; name encoder= and key=:\n  {listing}")
    return EmbeddingCache(usable[0].path, allow_partial=allow_partial)


class EmbeddingCache:
    """Read-only view of one cache folder (all committed shards, in shard order)."""

    def __init__(self, path: str | os.PathLike, allow_partial: bool = False):
        self.path = Path(path)
        self.fingerprint = Fingerprint.from_dict(json.loads((self.path / "fingerprint.json").read_text()))
        index_path = self.path / "index.json"
        if index_path.exists():
            index = json.loads(index_path.read_text())
            files = [s["file"] for s in index["shards"]]
            self.complete = True
        elif allow_partial:
            files = [r["file"] for r in _sidecars(self.path)]
            self.complete = False
        else:
            raise CacheIncomplete(f"cache {self.path} has no index.json (not finalised)")
        self._records = [_sidecar_of(self.path, f) for f in files]
        for record in self._records:
            data = self.path / record["file"]
            size = data.stat().st_size if data.exists() else None
            if size != record["bytes"]:
                raise CorruptShard(
                    f"{data}: {'missing' if size is None else f'{size} bytes'}, its commit record "
                    f"says {record['bytes']} bytes; run `adacomed-cache verify` and re-extract"
                )
        self._shards = [ShardReader(self.path / f) for f in files]
        ids = [s.ids for s in self._shards]
        self.ids: np.ndarray = np.concatenate(ids) if ids else np.empty(0, dtype=object)
        self._shard_of = np.concatenate(
            [np.full(len(s.ids), i, dtype=np.int32) for i, s in enumerate(self._shards)] or [np.empty(0, np.int32)]
        )
        self._row_of = np.concatenate(
            [np.arange(len(s.ids), dtype=np.int64) for s in self._shards] or [np.empty(0, np.int64)]
        )
        self._position = {sid: i for i, sid in enumerate(self.ids.tolist())}

    # ----------------------------------------------------------- metadata
    @property
    def modality(self) -> str:
        return self.fingerprint.modality

    @property
    def encoder(self) -> str:
        return self.fingerprint.encoder

    @property
    def key(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._position

    @property
    def array_names(self) -> list[str]:
        names = {n for s in self._shards for n in s.array_names}
        return sorted(names)

    def shape(self, array: str = "embeddings") -> tuple[int, ...]:
        """Per-sample shape of an array (``(dim,)`` for embeddings)."""
        for shard in self._shards:
            if array in shard.array_names:
                return shard.shape(array)[1:]
        raise KeyError(f"cache {self.path} has no array {array!r}; it has {self.array_names}")

    @property
    def dim(self) -> int:
        return int(self.shape("embeddings")[0])

    def dtype(self, array: str = "embeddings") -> np.dtype:
        """The dtype reads return: the stored one, promoted if shards differ (a float32 overflow shard)."""
        dtypes = [s.dtype(array) for s in self._shards if array in s.array_names]
        return np.result_type(*dtypes) if dtypes else np.dtype(np.float32)

    # --------------------------------------------------------------- reads
    def read_all(self, array: str = "embeddings") -> np.ndarray:
        """Every row in id order. One HDF5 shard gives a read-only memory map (no copy); several are concatenated."""
        if len(self._shards) == 1:
            return self._shards[0].array(array)
        dtype = self.dtype(array)
        out = np.empty((len(self.ids), *self.shape(array)), dtype=dtype)
        start = 0
        for shard in self._shards:
            n = len(shard.ids)
            out[start : start + n] = shard.array(array)
            start += n
        return out

    def positions(self, ids: Sequence[str] | Iterable[str]) -> np.ndarray:
        """Row positions of ids; KeyError naming the first id not in the cache."""
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        try:
            if len(ids) < 2:  # itemgetter returns a bare value for one key and needs at least one
                found = [self._position[i] for i in ids]
            else:
                found = operator.itemgetter(*ids)(self._position)  # one C loop over the dict
            return np.fromiter(found, dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise KeyError(f"sample {exc.args[0]!r} is not in cache {self.path}") from None

    def read(self, ids: Sequence[str], array: str = "embeddings") -> np.ndarray:
        """Rows for ``ids`` in the given order (a copy)."""
        return self._gather(self.positions(ids), array)

    def read_positions(self, positions: np.ndarray, array: str = "embeddings") -> np.ndarray:
        """Rows at integer positions (0 <= position < len(cache)), in the given order (a copy)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self.ids)):
            raise IndexError(f"positions must be in [0, {len(self.ids)}) for cache {self.path}")
        return self._gather(positions, array)

    def _gather(self, positions: np.ndarray, array: str) -> np.ndarray:
        if len(self._shards) == 1:
            return np.asarray(self._shards[0].array(array)[positions])
        shard_of = self._shard_of[positions]
        rows = self._row_of[positions]
        out = np.empty((len(positions), *self.shape(array)), dtype=self.dtype(array))
        order = np.argsort(shard_of, kind="stable")  # group the batch by shard, one gather per shard
        starts = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, starts):
            if len(group):
                out[group] = self._shards[int(shard_of[group[0]])].array(array)[rows[group]]
        return out

    def torch(self, ids: Sequence[str] | None = None, array: str = "embeddings", dtype: Any = None) -> Any:
        """Like :meth:`read` (or :meth:`read_all` when ``ids`` is None) as a torch tensor (float32 by default)."""
        import torch

        values = self.read_all(array) if ids is None else self.read(ids, array)
        if isinstance(values, np.memmap) or not values.flags.writeable:
            values = np.array(values)  # read-only memory map: torch needs its own copy
        tensor = torch.from_numpy(values)
        if dtype is not None:
            return tensor.to(dtype)
        return tensor.float() if tensor.is_floating_point() else tensor

    # ---------------------------------------------------------------- bags
    @property
    def bag_names(self) -> list[str]:
        """Names of the per-sample variable-length arrays (``features``, ``coords`` for slides); empty if none."""
        return sorted({n for s in self._shards for n in s.bag_names})

    def read_bag(self, sample_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One sample's bags, e.g. ``{"features": (N, 1024), "coords": (N, 2)}`` (memory-mapped for HDF5).

        Raises:
            KeyError: the sample is not in the cache, or the cache has no bag of that name.
        """
        position = int(self.positions([sample_id])[0])
        shard = self._shards[int(self._shard_of[position])]
        row = int(self._row_of[position])
        wanted = self.bag_names if names is None else list(names)
        missing = sorted(set(wanted) - set(self.bag_names))
        if missing:
            raise KeyError(f"cache {self.path} has no bag {missing[0]!r}; it has {self.bag_names or 'none'}")
        return {name: shard.bag(name, row) for name in wanted}

    # -------------------------------------------------------------- errors
    def errors(self) -> pd.DataFrame:
        """Per-sample failures recorded by the writers: ``sample_id, stage, reason, shard``."""
        rows = [{**err, "shard": rec["shard"]} for rec in self._records for err in rec.get("errors", [])]
        return pd.DataFrame(rows, columns=["sample_id", "stage", "reason", "shard"])
