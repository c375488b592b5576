"""Encoder registry. One import line per encoder module registers it."""

from .base import (
    TINY_RANDOM,
    Encoder,
    EncoderSpec,
    create_encoder,
    default_encoder,
    get_spec,
    list_encoders,
    register_encoder,
)

__all__ = [
    "TINY_RANDOM",
    "Encoder",
    "EncoderSpec",
    "create_encoder",
    "default_encoder",
    "get_spec",
    "list_encoders",
    "register_encoder",
]
