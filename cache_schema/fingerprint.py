"""Cache keys from declared fingerprints.

A fingerprint is a frozen record of everything that changes the bytes an extraction writes: the encoder and
its weights identity, pooling, preprocessing parameters, dtypes, the output dimension, the schema version and a
hash of the manifest rows it read. It is hashed from canonical JSON, never from pickled objects, so the same
inputs give the same key in any process and any change gives a new key (a new cache, never a silent mix).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# Bump when the shard layout or the meaning of a stored field changes.
CACHE_SCHEMA_VERSION = 1


def canonical_json(value: Any) -> str:
    """Sorted-key, whitespace-free JSON: the one byte string a fingerprint is hashed from."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class Fingerprint:
    """Everything that decides the content of one (modality, encoder) cache.

    Args:
        modality: manifest modality the cache embeds (``xray``, ``notes``, ...).
        encoder: registry name of the encoder (or of the preparation step for small-model inputs).
        encoder_version: the code version of that encoder wrapper; bumped when its output semantics change.
        weights: identity of the weights: ``hf:<repo>@<revision>``, ``sha256:<hash of files>``, or
            ``tiny-random:<config hash>`` for test instances.
        pooling: how token/patch outputs become one vector (``cls``, ``masked-mean``, ...).
        preprocessing: every preprocessing parameter (resize, crop, mean/std, max length, ...).
        inference_dtype: dtype the forward pass runs in (``float32``, ``bfloat16``, ...).
        storage_dtype: dtype requested on disk (``float16`` default, ``float32`` on request).
        dim: output dimension per sample.
        input_hash: hash of the manifest rows (sample ids and pointers) this cache was built from; stage two
            checks it against its manifest without needing the raw files.
        input_files: hash of the pointed-to files' sizes and modification times (``stat:...``) or contents
            (``xxh3:...``), so a changed file is a new cache; empty for text and inline values.
        schema_version: on-disk schema version.
    """

    modality: str
    encoder: str
    encoder_version: str
    weights: str
    pooling: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    inference_dtype: str = "float32"
    storage_dtype: str = "float16"
    dim: int = 0
    input_hash: str = ""
    input_files: str = ""
    schema_version: int = CACHE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fingerprint fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    @property
    def key(self) -> str:
        """16 hex characters of sha256 over the canonical JSON: the cache folder's name."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]


def diff_fingerprints(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Readable lines for every field that differs, nested dicts included (``preprocessing.crop: 224 -> 256``)."""
    lines: list[str] = []
    for name in sorted(set(expected) | set(found)):
        a, b = expected.get(name, "<absent>"), found.get(name, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += diff_fingerprints(a, b, prefix=f"{prefix}{name}.")
        elif a != b:
            lines.append(f"{prefix}{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


def hash_rows(rows: list[tuple[str, str]]) -> str:
    """Order-independent hash of (sample_id, pointer digest) pairs: the ``input_hash`` of a fingerprint."""
    digest = hashlib.sha256()
    for sample_id, pointer in sorted(rows):
        digest.update(sample_id.encode())
        digest.update(b"\0")
        digest.update(pointer.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]
