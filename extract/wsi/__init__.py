"""Whole-slide images for stage one: the slide object, CLAM-compatible segmentation and patching, presets, CLAM's
file layouts, and parallel patch reading. Nothing here depends on a model."""

from .errors import CorruptTile, EmptySegmentation, MagnificationUnknown, SlideUnreadable
from .slide import Slide, SlideInfo

__all__ = ["CorruptTile", "EmptySegmentation", "MagnificationUnknown", "Slide", "SlideInfo", "SlideUnreadable"]
