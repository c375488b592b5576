"""The on-disk contract shared by stage one and stage two: manifest, fingerprints, shards, readers, verify.

Imports nothing from ``extract``, ``train`` or ``pipelines``.
"""

from .errors import (
    CacheError,
    CacheIncomplete,
    CacheNotFound,
    CorruptShard,
    FingerprintMismatch,
    ManifestError,
)
from .fingerprint import CACHE_SCHEMA_VERSION, Fingerprint, diff_fingerprints
from .manifest import Manifest, ManifestInfo, ModalitySource, SmallInput, TaskSpec
from .reader import CacheSummary, EmbeddingCache, list_caches, open_cache
from .store import CacheDir, ShardPlan, make_plan
from .verify import verify_cache

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "CacheDir",
    "CacheError",
    "CacheIncomplete",
    "CacheNotFound",
    "CacheSummary",
    "CorruptShard",
    "EmbeddingCache",
    "Fingerprint",
    "FingerprintMismatch",
    "Manifest",
    "ManifestError",
    "ManifestInfo",
    "ModalitySource",
    "ShardPlan",
    "SmallInput",
    "TaskSpec",
    "diff_fingerprints",
    "list_caches",
    "make_plan",
    "open_cache",
    "verify_cache",
]
