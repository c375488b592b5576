"""Named per-slide outcomes. Each is an :class:`InputError`, so the runner records it in the errors table against
the slide's sample id (stage ``read`` or ``segment``) and the job goes on; none of them ends a run."""

from __future__ import annotations

from ...cache_schema.errors import InputError


class SlideUnreadable(InputError):
    """The file is missing, or no backend can open it (unsupported format, truncated header, ...)."""

    def __init__(self, reason: str, stage: str = "read"):
        super().__init__(reason, stage)


class CorruptTile(InputError):
    """A region stayed unreadable after the retries, and the user chose to skip such slides."""

    def __init__(self, reason: str, stage: str = "read"):
        super().__init__(reason, stage)


class EmptySegmentation(InputError):
    """No tissue contour survived the filters, or no patch fell on the tissue (CLAM silently writes nothing)."""

    def __init__(self, reason: str, stage: str = "segment"):
        super().__init__(reason, stage)


class MagnificationUnknown(InputError):
    """A magnification was asked for, and the slide records neither its MPP nor its objective power."""

    def __init__(self, reason: str, stage: str = "read"):
        super().__init__(reason, stage)
