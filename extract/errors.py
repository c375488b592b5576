"""Errors of stage one. Messages name the sample and the cause, never the content of a note or prompt."""

from ..cache_schema.errors import InputError  # noqa: F401  (re-exported: one "bad input" type for both stages)


class ExtractError(Exception):
    """Base class for extraction errors."""


class SampleFailed(ExtractError):
    """Raised with ``--on-error fail``: names the sample, the stage and the cause."""

    def __init__(self, sample_id: str, stage: str, reason: str):
        super().__init__(f"sample {sample_id!r} failed at {stage}: {reason}")
        self.sample_id = sample_id
        self.stage = stage
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across dask workers
        return (type(self), (self.sample_id, self.stage, self.reason))


class WeightsError(ExtractError):
    """Weights cannot be found or loaded; the message says where it looked and how to point at them."""
