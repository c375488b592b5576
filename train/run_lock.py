"""One live trainer per run folder: ``<run>/.lock`` names its holder (host, pid), as extraction's shard claims do.

The lock is created with ``O_EXCL``; a background thread touches it every ``HEARTBEAT_SECONDS`` while the run
lives. A lock is stale, and is taken over, when its holder is a process of this host that is gone, or (a holder
on another host, e.g. a preempted cluster job) when it has not been touched for ``LEASE_SECONDS``. A kill -9
leaves the lock behind; the next run on this host sees its pid is dead and takes it over at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..cache_schema.atomic import host_name, pid_alive

LOCK_NAME = ".lock"
HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 300.0


class RunLockedError(RuntimeError):
    """Another live process is writing this run folder."""


def _holder(path: Path) -> tuple[dict, float] | None:
    try:
        return json.loads(path.read_text() or "{}"), path.stat().st_mtime
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return {}, path.stat().st_mtime


def _is_stale(info: dict, mtime: float, lease_seconds: float) -> bool:
    if info.get("host") == host_name() and str(info.get("pid", "")).isdigit():
        return not pid_alive(int(info["pid"])) or int(info["pid"]) == os.getpid()
    return time.time() - mtime > lease_seconds


class RunLock:
    """Context manager holding ``<run_dir>/.lock`` for this process."""

    def __init__(self, run_dir: str | Path, lease_seconds: float = LEASE_SECONDS):
        self.path = Path(run_dir) / LOCK_NAME
        self.created_dir = False
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                seen = _holder(self.path)
                if seen is None:
                    continue
                info, mtime = seen
                if not _is_stale(info, mtime, self.lease_seconds):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", mtime)))
                    raise RunLockedError(
                        f"{self.path.parent} is being written by another live trainer (host {info.get('host')!r}, "
                        f"pid {info.get('pid')}, since {since}); wait for it to finish or stop it, or choose "
                        "another --out"
                    ) from None
                self._take_over(info)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": host_name(), "pid": os.getpid(), "time": time.time()}, fh)
            self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep taking it")

    def _take_over(self, seen: dict) -> None:
        """Move the stale lock aside; if a fresh holder replaced it meanwhile, put that one back."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text() or "{}")
        except json.JSONDecodeError:
            moved = {}
        if moved != seen:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        seen = _holder(self.path)
        if seen is not None and seen[0].get("pid") == os.getpid() and seen[0].get("host") == host_name():
            self.path.unlink(missing_ok=True)
        if self.created_dir:  # a run that failed before writing anything leaves no empty folder behind
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
