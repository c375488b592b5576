"""Encoder registry. One import line per encoder module registers it; readers live in ``extract/readers``."""

from .base import (
    TINY_RANDOM,
    EncodedSamples,
    Encoder,
    EncoderSpec,
    create_encoder,
    default_encoder,
    default_modalities,
    get_spec,
    list_encoders,
    register_encoder,
    seeded_init,
)

# Registration order decides each modality's default (the design's choice first): keep it, do not sort.
# isort: off
from . import dinov2  # noqa: F401  (xray: dinov2-giant, -large, -base)
from . import text  # noqa: F401  (notes: me-llama-13b, hf-text, all-minilm-l6-v2; clinical: biomistral-7b)
from . import precomputed  # noqa: F401  (features: precomputed)
from . import openclip  # noqa: F401  (xray alternatives: biomedclip, open-clip)
from . import uni  # noqa: F401  (wsi: uni)
from . import clam_features  # noqa: F401  (wsi import: clam-h5)
from . import merlin  # noqa: F401  (ct: merlin)
from . import moirai  # noqa: F401  (timeseries: moirai-large)
from . import fracast  # noqa: F401  (timeseries alternative: fracast-0, real weights on PyPI)
# isort: on

__all__ = [
    "TINY_RANDOM",
    "EncodedSamples",
    "Encoder",
    "EncoderSpec",
    "create_encoder",
    "default_encoder",
    "default_modalities",
    "get_spec",
    "list_encoders",
    "register_encoder",
    "seeded_init",
]
