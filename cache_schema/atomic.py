"""Crash-safe file writes, the one home for them: temp file in the same folder, fsync, ``os.replace``, fsync of
the folder. A reader sees the old file or the new one, never a half-written one.

Temp files are named ``.<final name>.<host>.<pid>.<uuid>.tmp``; a writer killed between write and rename leaves
one behind, which :func:`remove_dead_temps` collects once that process is gone.
"""

from __future__ import annotations

import json
import os
import socket
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


def host_name() -> str:
    """This machine's name as temp files and holder records carry it ('/' replaced)."""
    return socket.gethostname().replace("/", "_")


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that id exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(final: Path, tmp_dir: Path | None = None) -> Path:
    """A unique temp path on the same filesystem as ``final`` (host, pid and a uuid, so writers never collide)."""
    folder = tmp_dir if tmp_dir is not None else final.parent
    return folder / f".{final.name}.{host_name()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically. ``durable=False`` skips the fsyncs: still never half-written after
    a crash of this process, but a power loss may lose the write (for many small files that a later, durable
    write marks complete)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(final.parent)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike, payload: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), durable=durable)


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


def remove_dead_temps(folder: str | os.PathLike) -> int:
    """Delete temp files in ``folder`` left by writers of this host that are no longer running; returns the count.

    Temp files of live processes and of other hosts are kept (their writers may still rename them).
    """
    host, removed = host_name(), 0
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 4)  # '.<final name>', host, pid, uuid, 'tmp'
        if len(parts) == 5 and parts[1] == host and parts[2].isdigit() and not pid_alive(int(parts[2])):
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed
