"""Shard files: one writer each, immutable once committed.

A shard holds ``ids`` (the sample ids, in row order) and one or more named arrays with the samples on the first
axis (``embeddings`` for encoder caches; images, token ids or grids for small-model inputs). Arrays are stored
contiguous and uncompressed: compression saves ~11-15 % on float embeddings and makes random reads 100x+ slower.

A shard may also hold **bags**: per-sample arrays of varying length (a slide's patch features and coordinates).
Each bag is the samples' arrays concatenated on the first axis (``bags/<name>/values``) with ``n + 1`` row
offsets (``bags/<name>/offsets``, int64): sample ``i`` owns ``values[offsets[i]:offsets[i + 1]]``. In HDF5 both
are contiguous datasets read through memory maps like the rest; in Parquet a bag is a list column.

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
BAG_PREFIX = "bags/"


def bag_values_name(bag: str) -> str:
    return f"{BAG_PREFIX}{bag}/values"


def bag_offsets_name(bag: str) -> str:
    return f"{BAG_PREFIX}{bag}/offsets"


def bag_offsets(parts: list[np.ndarray]) -> np.ndarray:
    """``n + 1`` int64 row offsets of per-sample arrays laid end to end."""
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return offsets


def check_bag(name: str, parts: list[np.ndarray], n: int) -> tuple[tuple[int, ...], np.dtype]:
    """The common trailing shape and dtype of one bag's per-sample arrays; ValueError naming what disagrees."""
    if len(parts) != n:
        raise ValueError(f"bag {name!r} has {len(parts)} arrays for {n} ids")
    if not parts:
        return (), np.dtype(np.float32)
    tail, dtype = parts[0].shape[1:], parts[0].dtype
    for i, part in enumerate(parts):
        if part.ndim < 1 or part.shape[1:] != tail or part.dtype != dtype:
            raise ValueError(
                f"bag {name!r}: sample {i} has shape {part.shape} {part.dtype}, the first has (N, *{tail}) {dtype}"
            )
    return tail, dtype


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


def storage_bag(parts: list[np.ndarray], storage_dtype: str) -> list[np.ndarray]:
    """Cast one bag's per-sample arrays for storage with one dtype for all (float32 if any would overflow).

    The list is updated in place, one sample at a time, so a bag is never held twice in memory.
    """
    if not parts or not np.issubdtype(parts[0].dtype, np.floating):
        return parts
    if storage_dtype not in ("float16", "float32"):
        raise ValueError(f"storage dtype {storage_dtype!r} is not one of ['float16', 'float32']")
    largest = max((float(np.max(np.abs(p), where=np.isfinite(p), initial=0.0)) for p in parts if p.size), default=0.0)
    dtype = np.float32 if storage_dtype == "float32" or largest > FLOAT16_MAX else np.float16
    for i, part in enumerate(parts):
        parts[i] = np.ascontiguousarray(part, dtype=dtype)
    return parts


def file_checksum(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """xxh3-64 of a file's bytes, hex."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard_file(
    path: Path,
    ids: list[str],
    arrays: dict[str, np.ndarray],
    fmt: ShardFormat,
    attrs: dict | None = None,
    bags: dict[str, list[np.ndarray]] | None = None,
) -> None:
    """Write a complete shard to ``path`` (a temp name: the caller commits it), then fsync it.

    ``bags`` maps a bag name to one array per id (see the module docstring); each sample's array is copied into
    place once, never concatenated in memory first.
    """
    n = len(ids)
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise ValueError(f"array {name!r} has {arr.shape[0]} rows for {n} ids")
    bags = bags or {}
    layouts = {name: check_bag(name, parts, n) for name, parts in bags.items()}
    if fmt == "h5":
        with h5py.File(path, "w", libver="earliest", locking=False) as f:
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            for name, arr in arrays.items():
                # Contiguous (no chunks, no filters): the reader maps it at its file offset.
                dset = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
                if arr.size:
                    dset[...] = arr
            for name, parts in bags.items():
                tail, dtype = layouts[name]
                offsets = bag_offsets(parts)
                f.create_dataset(bag_offsets_name(name), data=offsets)
                values = f.create_dataset(bag_values_name(name), shape=(int(offsets[-1]), *tail), dtype=dtype)
                for start, stop, part in zip(offsets[:-1], offsets[1:], parts):
                    if stop > start:
                        values[start:stop] = part
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
        bag_shapes = {}
        for name, parts in bags.items():
            tail, dtype = layouts[name]
            width = int(np.prod(tail, dtype=np.int64))
            flat = np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0, dtype)
            rows = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.from_numpy_dtype(dtype)), width)
            columns[bag_values_name(name)] = pa.LargeListArray.from_arrays(pa.array(bag_offsets(parts)), rows)
            bag_shapes[name] = {"shape": list(tail), "dtype": np.dtype(dtype).str}
        table = pa.table(columns)
        meta = {
            b"adacomed_shapes": json.dumps(shapes).encode(),
            b"adacomed_bags": json.dumps(bag_shapes).encode(),
            b"adacomed_attrs": json.dumps(attrs or {}).encode(),
        }
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
                self._layout = {}

                def note(name: str, obj: object) -> None:  # visititems stops at the first non-None return
                    if isinstance(obj, h5py.Dataset) and name != "ids":
                        self._layout[name] = (obj.id.get_offset(), obj.shape, obj.dtype)

                f.visititems(note)
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
            for name, info in json.loads(table.schema.metadata.get(b"adacomed_bags", b"{}")).items():
                column = table.column(bag_values_name(name)).combine_chunks()
                offsets = column.offsets.to_numpy().astype(np.int64)
                offsets -= offsets[0]
                flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
                values = flat.astype(np.dtype(info["dtype"]), copy=False).reshape([int(offsets[-1]), *info["shape"]])
                for key, arr in ((bag_values_name(name), values), (bag_offsets_name(name), offsets)):
                    arr.setflags(write=False)
                    self._arrays[key] = arr
            self._layout = {name: (None, arr.shape, arr.dtype) for name, arr in self._arrays.items()}

    @property
    def array_names(self) -> list[str]:
        """Per-row arrays (``embeddings``, ...); bags are listed by :attr:`bag_names`."""
        return sorted(n for n in self._layout if not n.startswith(BAG_PREFIX))

    @property
    def bag_names(self) -> list[str]:
        return sorted({n.split("/")[1] for n in self._layout if n.startswith(BAG_PREFIX)})

    def bag(self, name: str, row: int) -> np.ndarray:
        """Sample ``row``'s array of bag ``name`` (a slice of the memory map for HDF5: no copy)."""
        if name not in self.bag_names:
            raise KeyError(f"shard {self.path.name} has no bag {name!r}; it has {self.bag_names}")
        offsets = self.array(bag_offsets_name(name))
        return self.array(bag_values_name(name))[int(offsets[row]) : int(offsets[row + 1])]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._layout[name][1])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._layout[name][2])

    def array(self, name: str) -> np.ndarray:
        """The whole array: a read-only memory map (HDF5) or the loaded array (Parquet)."""
        if name not in self._layout:
            raise KeyError(f"shard {self.path.name} has no array {name!r}; it has {sorted(self._layout)}")
        if name in self._arrays:
            return self._arrays[name]
        offset, shape, dtype = self._layout[name]
        if offset is None:  # empty dataset: HDF5 allocates no storage
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        self._arrays[name] = arr
        return arr
