"""Shard files: one writer each, immutable once committed.

A shard holds ``ids`` (the sample ids, in row order) and one or more named arrays with the samples on the first
axis (``embeddings`` for encoder caches; images, token ids or grids for small-model inputs). Arrays are stored
contiguous and uncompressed: compression saves ~11-15 % on float embeddings and makes random reads 100x+ slower.

HDF5 is the default format (datasets at known offsets, read through ``np.memmap``); Parquet is the alternative
(``FixedSizeList`` columns, dictionary encoding off; read whole into memory). Both read back to identical arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

ShardFormat = Literal["h5", "parquet"]
FORMATS: dict[str, str] = {"h5": ".h5", "parquet": ".parquet"}
FLOAT16_MAX = float(np.finfo(np.float16).max)


def storage_array(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Cast floats for storage: float16 unless asked for float32 or a finite value exceeds float16's range."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return np.ascontiguousarray(values)
    if storage_dtype == "float32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if storage_dtype != "float16":
        raise ValueError(f"storage dtype {storage_dtype!r} is not one of ['float16', 'float32']")
    largest = float(np.max(np.abs(values), where=np.isfinite(values), initial=0.0)) if values.size else 0.0
    if largest > FLOAT16_MAX:
        return np.ascontiguousarray(values, dtype=np.float32)
    return np.ascontiguousarray(values, dtype=np.float16)


def file_checksum(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """xxh3-64 of a file's bytes, hex."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard_file(
    path: Path, ids: list[str], arrays: dict[str, np.ndarray], fmt: ShardFormat, attrs: dict | None = None
) -> None:
    """Write a complete shard to ``path`` (a temp name: the caller commits it), then fsync it."""
    n = len(ids)
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise ValueError(f"array {name!r} has {arr.shape[0]} rows for {n} ids")
    if fmt == "h5":
        with h5py.File(path, "w", libver="earliest", locking=False) as f:
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            for name, arr in arrays.items():
                # Contiguous (no chunks, no filters): the reader maps it at its file offset.
                dset = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
                if arr.size:
                    dset[...] = arr
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    elif fmt == "parquet":
        columns = {"sample_id": pa.array(ids, type=pa.string())}
        shapes = {}
        for name, arr in arrays.items():
            flat = np.ascontiguousarray(arr).reshape(n, int(np.prod(arr.shape[1:], dtype=np.int64)))
            width = flat.shape[1]
            values = pa.array(flat.reshape(-1)) if flat.size else pa.array([], type=pa.from_numpy_dtype(arr.dtype))
            columns[name] = pa.FixedSizeListArray.from_arrays(values, width)
            shapes[name] = {"shape": list(arr.shape[1:]), "dtype": arr.dtype.str}
        table = pa.table(columns)
        meta = {b"adacomed_shapes": json.dumps(shapes).encode(), b"adacomed_attrs": json.dumps(attrs or {}).encode()}
        table = table.replace_schema_metadata(meta)
        pq.write_table(table, path, use_dictionary=False, compression="none", row_group_size=max(n, 1))
    else:
        raise ValueError(f"shard format {fmt!r} is not one of {list(FORMATS)}")
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class ShardReader:
    """Read access to one committed shard. HDF5 arrays are memory-mapped; Parquet arrays are loaded once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format: ShardFormat = "parquet" if self.path.suffix == ".parquet" else "h5"
        self._arrays: dict[str, np.ndarray] = {}
        if self.format == "h5":
            with h5py.File(self.path, "r", locking=False) as f:
                self.ids = np.asarray([s.decode() if isinstance(s, bytes) else s for s in f["ids"][...]], dtype=object)
                self._layout = {
                    name: (f[name].id.get_offset(), f[name].shape, f[name].dtype) for name in f if name != "ids"
                }
        else:
            table = pq.read_table(self.path)
            shapes = json.loads(table.schema.metadata[b"adacomed_shapes"])
            self.ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
            n = len(self.ids)
            for name, info in shapes.items():
                chunked = table.column(name).combine_chunks()
                flat = chunked.values.to_numpy(zero_copy_only=False)
                values = flat.astype(np.dtype(info["dtype"]), copy=False).reshape([n, *info["shape"]])
                values.setflags(write=False)  # like the HDF5 memory maps: readers get views, never the cache's state
                self._arrays[name] = values
            self._layout = {name: (None, arr.shape, arr.dtype) for name, arr in self._arrays.items()}

    @property
    def array_names(self) -> list[str]:
        return sorted(self._layout)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._layout[name][1])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._layout[name][2])

    def array(self, name: str) -> np.ndarray:
        """The whole array: a read-only memory map (HDF5) or the loaded array (Parquet)."""
        if name not in self._layout:
            raise KeyError(f"shard {self.path.name} has no array {name!r}; it has {self.array_names}")
        if name in self._arrays:
            return self._arrays[name]
        offset, shape, dtype = self._layout[name]
        if offset is None:  # empty dataset: HDF5 allocates no storage
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        self._arrays[name] = arr
        return arr
