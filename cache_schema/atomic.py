"""Crash-safe file writes: temp file in the same folder, fsync, ``os.replace``, fsync of the folder."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename durable: POSIX renames are atomic at once but only durable after the folder's fsync."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(final: Path, tmp_dir: Path | None = None) -> Path:
    """A unique temp path on the same filesystem as ``final`` (host, pid and a uuid, so writers never collide)."""
    host = os.uname().nodename.replace("/", "_")
    folder = tmp_dir if tmp_dir is not None else final.parent
    return folder / f".{final.name}.{host}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(final.parent)


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def write_json_once(path: str | os.PathLike, payload: Any) -> bool:
    """Create ``path`` only if absent, atomically (hard link of a complete temp file). True if this call made it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, final)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink()
    fsync_dir(final.parent)
    return created
