"""One cache folder: ``<cache_root>/<modality>/<encoder>/<cache_key>/``.

Layout::

    fingerprint.json            the full fingerprint (diff it to see why a cache is another)
    plan.json                   rows per shard and shard count, fixed by the first writer
    shards/shard-00003-of-00008.<xxh3>.h5   immutable once committed; named by its own checksum
    shards/shard-00003-of-00008.json        the commit record (sidecar): file, rows, bytes, checksum, errors
    claims/shard-00003.claim    "I am computing this shard" (host, pid); an optimisation, never a "done" marker
    _tmp/                       in-progress writes only
    index.json                  written by finalize once every planned shard is committed

Commit protocol per shard: write ``_tmp/<name>.<host>.<pid>.<uuid>.tmp``, fsync, checksum (xxh3-64), rename it
into ``shards/`` under a name that carries its checksum, fsync the folder, then write the sidecar the same way.
The sidecar's rename is the single commit point: a data file no sidecar names does not exist for readers, so a
kill at any moment leaves a committed shard or none. Two writers of one shard write two differently named data
files; whichever sidecar lands last names its own complete file, never the other writer's bytes. Unreferenced
data files and temp files of dead writers are removed later (``collect_garbage``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, fsync_dir, temp_name, write_json_once
from .errors import CacheError, CorruptShard, FingerprintMismatch
from .fingerprint import CACHE_SCHEMA_VERSION, Fingerprint, diff_fingerprints
from .shards import FORMATS, ShardFormat, file_checksum, storage_array, storage_bag, write_shard_file

DEFAULT_ROWS_PER_SHARD = 32768  # ~64 MB at 1024-d float16; ~330 MB at 5120-d
CLAIM_LEASE_SECONDS = 600.0
logger = logging.getLogger("adacomed.cache")


def slug(name: str) -> str:
    """A file-name-safe form of a modality or encoder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cache_path(cache_root: str | os.PathLike, fingerprint: Fingerprint) -> Path:
    return Path(cache_root) / slug(fingerprint.modality) / slug(fingerprint.encoder) / fingerprint.key


@dataclass(frozen=True)
class ShardPlan:
    """Deterministic partition of the sorted sample ids into contiguous shards."""

    n_shards: int
    rows_per_shard: int

    def name(self, index: int) -> str:
        return f"shard-{index:05d}-of-{self.n_shards:05d}"

    def ids_of(self, sorted_ids: Sequence[str], index: int) -> list[str]:
        return list(sorted_ids[index * self.rows_per_shard : (index + 1) * self.rows_per_shard])


def make_plan(n_items: int, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> ShardPlan:
    """Pure function of the item count: ``ceil(n / rows_per_shard)`` shards (at least one)."""
    if rows_per_shard <= 0:
        raise ValueError("rows_per_shard must be positive")
    return ShardPlan(n_shards=max(1, math.ceil(n_items / rows_per_shard)), rows_per_shard=rows_per_shard)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CacheDir:
    """Writer-side view of one cache folder: plan, claims, commits, finalize."""

    def __init__(self, cache_root: str | os.PathLike, fingerprint: Fingerprint, fmt: ShardFormat = "h5"):
        if fmt not in FORMATS:
            raise ValueError(f"shard format {fmt!r} is not one of {list(FORMATS)}")
        self.fingerprint = fingerprint
        self.path = cache_path(cache_root, fingerprint)
        self.format: ShardFormat = fmt
        self.shards_dir = self.path / "shards"
        self.tmp_dir = self.path / "_tmp"
        self.claims_dir = self.path / "claims"

    # -------------------------------------------------------------- set-up
    def initialise(self, n_items: int, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> ShardPlan:
        """Create the folder, write the fingerprint, and fix the plan (the first writer's plan wins)."""
        for folder in (self.shards_dir, self.tmp_dir, self.claims_dir):
            folder.mkdir(parents=True, exist_ok=True)
        fp_path = self.path / "fingerprint.json"
        if not write_json_once(fp_path, self.fingerprint.to_dict()):
            found = json.loads(fp_path.read_text())
            lines = diff_fingerprints(self.fingerprint.to_dict(), found)
            if lines:  # only possible on a hash collision or a hand-edited file
                raise FingerprintMismatch(f"{fp_path} differs from the expected fingerprint:\n  " + "\n  ".join(lines))
        plan = make_plan(n_items, rows_per_shard)
        plan_path = self.path / "plan.json"
        payload = {
            "n_shards": plan.n_shards,
            "rows_per_shard": plan.rows_per_shard,
            "n_items": n_items,
            "format": self.format,
        }
        if not write_json_once(plan_path, payload):
            existing = json.loads(plan_path.read_text())
            if existing["n_items"] != n_items:
                raise CacheError(f"{plan_path} was planned for {existing['n_items']} items, this run has {n_items}")
            plan = ShardPlan(n_shards=existing["n_shards"], rows_per_shard=existing["rows_per_shard"])
            if existing["rows_per_shard"] != rows_per_shard or existing.get("format", self.format) != self.format:
                logger.warning(
                    "%s was planned by an earlier run (%d rows per shard, format %s); keeping that plan",
                    plan_path,
                    existing["rows_per_shard"],
                    existing.get("format", self.format),
                )
            self.format = existing.get("format", self.format)
        self.collect_garbage()
        return plan

    def load_plan(self) -> ShardPlan:
        data = json.loads((self.path / "plan.json").read_text())
        self.format = data.get("format", self.format)
        return ShardPlan(n_shards=data["n_shards"], rows_per_shard=data["rows_per_shard"])

    # ------------------------------------------------------------- commits
    def sidecar_path(self, plan: ShardPlan, index: int) -> Path:
        return self.shards_dir / f"{plan.name(index)}.json"

    def read_sidecar(self, plan: ShardPlan, index: int) -> dict[str, Any] | None:
        """The commit record if the shard is committed (record parses, file exists with the recorded size)."""
        path = self.sidecar_path(plan, index)
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        data_file = self.path / record["file"]
        if record.get("cache_key") != self.fingerprint.key:
            return None
        try:
            if data_file.stat().st_size != record["bytes"]:
                return None
        except FileNotFoundError:
            return None
        return record

    def committed(self, plan: ShardPlan) -> dict[int, dict[str, Any]]:
        return {i: rec for i in range(plan.n_shards) if (rec := self.read_sidecar(plan, i)) is not None}

    def commit_shard(
        self,
        plan: ShardPlan,
        index: int,
        ids: list[str],
        arrays: dict[str, np.ndarray],
        errors: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
        bags: dict[str, list[np.ndarray]] | None = None,
    ) -> dict[str, Any]:
        """Write, checksum and atomically commit one shard; returns its commit record (metadata only).

        ``bags`` maps a bag name to one variable-length array per id (e.g. a slide's patch features); float bags
        are cast to the storage dtype in place, sample by sample.
        """
        arrays = {name: storage_array(arr, self.fingerprint.storage_dtype) for name, arr in arrays.items()}
        bags = {name: storage_bag(parts, self.fingerprint.storage_dtype) for name, parts in (bags or {}).items()}
        name = plan.name(index)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.shards_dir / f"{name}{FORMATS[self.format]}", self.tmp_dir)
        try:
            write_shard_file(
                tmp,
                ids,
                arrays,
                self.format,
                attrs={"cache_key": self.fingerprint.key, "shard": name, "schema_version": CACHE_SCHEMA_VERSION},
                bags=bags,
            )
            checksum = file_checksum(tmp)
            size = tmp.stat().st_size
            final = self.shards_dir / f"{name}.{checksum}{FORMATS[self.format]}"
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        fsync_dir(self.shards_dir)
        record = {
            "schema_version": CACHE_SCHEMA_VERSION,
            "cache_key": self.fingerprint.key,
            "shard": name,
            "index": index,
            "file": f"shards/{final.name}",
            "rows": len(ids),
            "bytes": size,
            "checksum": {"algo": "xxh3_64", "value": checksum},
            "arrays": {k: {"shape": list(v.shape[1:]), "dtype": v.dtype.name} for k, v in arrays.items()},
            "bags": {
                k: {"shape": list(v[0].shape[1:]), "dtype": v[0].dtype.name, "rows": int(sum(len(p) for p in v))}
                for k, v in bags.items()
                if v
            },
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "errors": errors or [],
            "created_at": _now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            **(extra or {}),
        }
        atomic_write_json(self.sidecar_path(plan, index), record)
        return record

    # -------------------------------------------------------------- claims
    def _claim_path(self, index: int) -> Path:
        return self.claims_dir / f"shard-{index:05d}.claim"

    def try_claim(self, index: int, lease_seconds: float = CLAIM_LEASE_SECONDS) -> bool:
        """Take the right to compute a shard, so concurrent runs do not duplicate work.

        A claim whose process is gone (same host) or whose lease ran out (no refresh) is stale and is taken over.
        Correctness never depends on claims: commits are atomic and idempotent.
        """
        path = self._claim_path(index)
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_is_stale(path, lease_seconds):
                    return False
                self._take_over_stale(path)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, fh)
            return True
        return False

    def _take_over_stale(self, path: Path) -> None:
        """Move a stale claim away; if what moved was not the stale claim (someone replaced it), put it back."""
        try:
            seen = path.read_bytes()
        except FileNotFoundError:
            return
        aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes() == seen:
            aside.unlink()
            return
        try:  # we moved a fresh claim of another taker: restore it unless a third one already claimed
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink()

    def _claim_is_stale(self, path: Path, lease_seconds: float) -> bool:
        try:
            info = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return True
        if info.get("host") == socket.gethostname() and "pid" in info:
            return not _pid_alive(int(info["pid"]))  # a live owner on this host is never stale, however slow
        return age > lease_seconds

    def refresh_claim(self, index: int) -> None:
        try:
            os.utime(self._claim_path(index))
        except FileNotFoundError:
            pass

    def release_claim(self, index: int) -> None:
        try:
            self._claim_path(index).unlink()
        except FileNotFoundError:
            pass

    def claim_alive(self, index: int, lease_seconds: float = CLAIM_LEASE_SECONDS) -> bool:
        path = self._claim_path(index)
        return path.exists() and not self._claim_is_stale(path, lease_seconds)

    # ------------------------------------------------------------ finalize
    def finalize(self, plan: ShardPlan) -> dict[str, Any] | None:
        """Write ``index.json`` once every planned shard is committed; returns it, or None if work remains."""
        records = self.committed(plan)
        if len(records) != plan.n_shards:
            return None
        shards = [records[i] for i in range(plan.n_shards)]
        rows = sum(rec["rows"] for rec in shards)
        errors = sum(len(rec["errors"]) for rec in shards)
        n_items = json.loads((self.path / "plan.json").read_text())["n_items"]
        # Every planned sample is a row, an error, or both (a prepared input kept as "missing" with its error).
        if rows > n_items or rows + errors < n_items:
            raise CacheError(
                f"{self.path}: committed shards hold {rows} rows and {errors} errors for a plan of {n_items} "
                "samples; the shards were written from different inputs"
            )
        shapes = {
            json.dumps({k: v["shape"] for k, v in {**rec["arrays"], **rec.get("bags", {})}.items()})
            for rec in shards
            if rec["rows"]
        }
        index = {
            "schema_version": CACHE_SCHEMA_VERSION,
            "cache_key": self.fingerprint.key,
            "status": "complete",
            "format": self.format,
            "n_shards": plan.n_shards,
            "rows": sum(rec["rows"] for rec in shards),
            "bytes": sum(rec["bytes"] for rec in shards),
            "n_errors": sum(len(rec["errors"]) for rec in shards),
            "shards": [
                {k: rec[k] for k in ("shard", "file", "rows", "bytes", "checksum", "arrays", "bags") if k in rec}
                for rec in shards
            ],
            "created_at": _now(),
        }
        if len(shapes) > 1:
            raise CacheError(f"{self.path}: shards disagree on array shapes: {sorted(shapes)}")
        atomic_write_json(self.path / "index.json", index)
        for leftover in self.claims_dir.glob("*.claim"):
            leftover.unlink(missing_ok=True)
        self.collect_garbage(plan)
        return index

    def collect_garbage(self, plan: ShardPlan | None = None, min_age_seconds: float = CLAIM_LEASE_SECONDS) -> int:
        """Remove temp files of dead writers and data files no commit record names; returns how many.

        A temp file is removed when its writer (host and pid are in its name) is a dead process on this host, or
        when it is older than ``min_age_seconds``. An unreferenced data file (the loser of a duplicate commit,
        or a kill between the data rename and the sidecar) is removed once older than ``min_age_seconds``, so a
        writer between its two renames is never robbed of its file.
        """
        removed = 0
        now = time.time()
        host = socket.gethostname().replace("/", "_")
        candidates = list(self.tmp_dir.glob("*.tmp")) + list(self.shards_dir.glob(".*.tmp"))
        for tmp in candidates:
            parts = tmp.name.rsplit(".", 4)  # .<final name>.<host>.<pid>.<uuid>.tmp
            dead = len(parts) == 5 and parts[1] == host and parts[2].isdigit() and not _pid_alive(int(parts[2]))
            try:
                old = now - tmp.stat().st_mtime > min_age_seconds
            except FileNotFoundError:
                continue
            if dead or old:
                tmp.unlink(missing_ok=True)
                removed += 1
        if plan is not None:
            named = {rec["file"] for rec in self.committed(plan).values()}
            for data in self.shards_dir.glob("shard-*"):
                if data.suffix == ".json" or f"shards/{data.name}" in named:
                    continue
                try:
                    if now - data.stat().st_mtime > min_age_seconds:
                        data.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def check_shard(cache_dir: Path, record: dict[str, Any]) -> None:
    """Re-hash one committed shard; raise :class:`CorruptShard` naming it when the bytes differ."""
    path = cache_dir / record["file"]
    if not path.exists():
        raise CorruptShard(f"{path}: committed shard is missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptShard(f"{path}: size {size} bytes, commit record says {record['bytes']}")
    found = file_checksum(path)
    if found != record["checksum"]["value"]:
        raise CorruptShard(f"{path}: xxh3_64 {found}, commit record says {record['checksum']['value']}")
