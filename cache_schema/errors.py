"""Exceptions of the cache contract. Every message names the thing to fix; none carries patient text."""


class CacheError(Exception):
    """Base class for cache-contract errors."""


class ManifestError(CacheError):
    """A manifest is malformed: the message names the row (sample id) and the column."""


class FingerprintMismatch(CacheError):
    """A cache folder holds a different fingerprint than the one asked for; the message shows the diff."""


class CacheNotFound(CacheError):
    """No committed cache matches the request; the message lists what exists."""


class CacheIncomplete(CacheError):
    """The cache has planned shards that are not committed yet (a run is still going, or crashed)."""


class CorruptShard(CacheError):
    """A committed shard's bytes do not match its commit record."""


class InputError(CacheError):
    """One sample's raw input cannot be used (unreadable file, empty note, wrong shape).

    ``stage`` says where it failed (``read``, ``decode``, ``preprocess``, ``encode``, ``output``); ``reason`` is a
    short description safe to log (no patient text).
    """

    def __init__(self, reason: str, stage: str = "read"):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage

    def __reduce__(self) -> tuple:  # picklable across dask workers
        return (type(self), (self.reason, self.stage))
