"""Reading a slide's patches in parallel worker processes, in order, batch by batch.

Each worker process keeps its own open :class:`~.slide.Slide` (opened on first use, after the process started,
and re-used until a task names another slide), reads a batch of regions, resizes them to the grid's patch size
(magnification mode) and applies the encoder's CPU transform (resize + centre crop), and returns uint8 pixels:
four times less to ship between processes than float tensors, normalised later on the model's side. The pool
lives as long as its owner (one encoder), so a run pays for starting it once, not per slide.

Batches come back in submission order with a bounded number in flight, so the model is fed while the next
batches are read and memory stays at ``prefetch`` batches.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .slide import Slide

RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos")


@dataclass(frozen=True)
class PatchTransform:
    """CPU part of an encoder's preprocessing: shortest side to ``resize`` then a centre ``crop`` (torchvision's
    ``Resize(int)`` + ``CenterCrop`` on a PIL image). ``resize=0`` keeps the size; ``crop=0`` skips the crop."""

    resize: int = 224
    crop: int = 224
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in RESAMPLING:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {RESAMPLING}")

    @property
    def output_size(self) -> int | None:
        return self.crop or self.resize or None

    def __call__(self, patch: np.ndarray) -> np.ndarray:
        from PIL import Image

        image = Image.fromarray(patch)
        if self.resize:
            width, height = image.size
            if width <= height:
                size = (self.resize, int(self.resize * height / width))
            else:
                size = (int(self.resize * width / height), self.resize)
            if size != image.size:
                image = image.resize(size, resample=getattr(Image.Resampling, self.interpolation.upper()))
        if self.crop:
            width, height = image.size
            top = int(round((height - self.crop) / 2.0))
            left = int(round((width - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(image)


@dataclass(frozen=True)
class ReadSpec:
    """What a worker needs to read one slide's patches (plain data: it crosses process boundaries)."""

    slide: dict[str, Any]  # Slide.reopen_options()
    read_level: int
    read_size: int
    patch_size: int
    transform: PatchTransform


# ------------------------------------------------------------------------------------- worker process side
_OPEN: dict[str, Any] = {"key": None, "slide": None}


def _worker_slide(options: dict[str, Any]) -> Slide:
    key = repr(sorted(options.items()))
    if _OPEN["key"] != key:
        if _OPEN["slide"] is not None:
            _OPEN["slide"].close()
        _OPEN["slide"], _OPEN["key"] = None, None
        _OPEN["slide"] = Slide(**options)
        _OPEN["key"] = key
    return _OPEN["slide"]


def read_batch(spec: ReadSpec, coords: np.ndarray, slide: Slide | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read, resize and transform the patches at ``coords``; returns (pixels (B, H, W, 3) uint8, replaced (B,) bool)."""
    from PIL import Image

    slide = slide if slide is not None else _worker_slide(spec.slide)
    out: list[np.ndarray] = []
    replaced = np.zeros(len(coords), dtype=bool)
    size = (spec.read_size, spec.read_size)
    for index, (x, y) in enumerate(coords.tolist()):
        before = slide.replaced_regions
        patch = slide.read_region((x, y), spec.read_level, size)
        replaced[index] = slide.replaced_regions != before
        if spec.read_size != spec.patch_size:
            patch = np.asarray(Image.fromarray(patch).resize((spec.patch_size, spec.patch_size), Image.BILINEAR))
        out.append(spec.transform(patch))
    return np.stack(out), replaced


def _worker_init() -> None:
    # One reader per core: keep BLAS/OpenMP pools of libraries a worker may import to one thread.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - a dependency of the package
        pass


# ------------------------------------------------------------------------------------------------ the pool
class PatchReaderPool:
    """``num_workers`` readers (0: read in this process). Use as a context manager or call ``close``.

    ``kind``: ``process`` (default: worker processes, started with ``spawn`` so no lock or thread state of this
    process is inherited), ``thread`` (threads, one open slide each; OpenSlide and PIL release the GIL while
    decoding), or ``auto`` (processes, or threads inside a daemonic process such as a dask worker, which may not
    start children).
    """

    def __init__(self, num_workers: int = 2, prefetch: int | None = None, kind: str = "auto"):
        if num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if kind not in ("auto", "process", "thread"):
            raise ValueError(f"kind {kind!r} is not one of auto, process, thread")
        if kind == "auto":
            kind = "thread" if multiprocessing.current_process().daemon else "process"
        self.kind = kind
        self.num_workers = num_workers
        self.prefetch = prefetch or max(2, 2 * num_workers)
        self._executor: Any = None
        self._local = threading.local()

    def _pool(self) -> Any:
        if self._executor is None:
            if self.kind == "process":
                self._executor = ProcessPoolExecutor(
                    self.num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
                )
            else:
                self._executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="patch-reader")
        return self._executor

    def warm_up(self) -> None:
        """Start the workers now (a spawned worker takes a few seconds to import), e.g. while segmenting."""
        if self.num_workers and self.kind == "process":
            pool = self._pool()
            for future in [pool.submit(_worker_init) for _ in range(self.num_workers)]:
                future.result()

    def _thread_read(self, spec: ReadSpec, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = repr(sorted(spec.slide.items()))
        if getattr(self._local, "key", None) != key:
            if getattr(self._local, "slide", None) is not None:
                self._local.slide.close()
            self._local.slide, self._local.key = Slide(**spec.slide), key
        return read_batch(spec, coords, self._local.slide)

    def batches(
        self, spec: ReadSpec, coords: np.ndarray, batch_size: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(start, pixels, replaced)`` for consecutive batches of ``coords``, in order."""
        starts = range(0, len(coords), batch_size)
        if self.num_workers == 0:
            with Slide(**spec.slide) as slide:
                for start in starts:
                    pixels, replaced = read_batch(spec, coords[start : start + batch_size], slide)
                    yield start, pixels, replaced
            return
        pool = self._pool()
        pending: deque[tuple[int, Future]] = deque()
        try:
            for start in starts:
                task = read_batch if self.kind == "process" else self._thread_read
                pending.append((start, pool.submit(task, spec, coords[start : start + batch_size])))
                if len(pending) >= self.prefetch:
                    first, future = pending.popleft()
                    yield first, *future.result()
            while pending:
                first, future = pending.popleft()
                yield first, *future.result()
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> PatchReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
