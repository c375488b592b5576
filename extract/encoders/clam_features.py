"""Import of patch features computed by CLAM, TRIDENT or any tool writing CLAM's ``h5_files`` layout.

No model: each slide's ``features`` (N, D) and ``coords`` (N, 2) become its bags, and their mean the embedding
stage two reads, exactly as the ``uni`` encoder stores its own. ``D`` is 1024 (UNI, and CLAM's default
``resnet50_trunc``) unless ``--option dim=N`` says otherwise (CONCH: 512); a file of another width is a named error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExtractError, InputError
from .base import TINY_RANDOM, EncodedSamples, Encoder, EncoderSpec, register_encoder

CLAM_H5_SPEC = EncoderSpec(
    "clam-h5",
    "wsi",
    1024,
    "mean",
    reader="clam-h5",
    options=("dim",),
    bags=("features", "coords"),
    rows_per_shard=8,
    version="1",
    description="import CLAM/TRIDENT h5_files (features, coords) as bags + mean slide vector (no model)",
)


class ClamFeaturesEncoder(Encoder):
    def __init__(
        self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto", dim: int | None = None
    ):
        if weights not in (None, "", TINY_RANDOM):
            raise ExtractError(f"{spec.name} has no weights; got --weights {weights!r}")
        super().__init__(spec, "", device, "float32")
        if dim is not None and int(dim) <= 0:
            raise ExtractError(f"{spec.name}: dim must be positive, got {dim}")
        self.embed_dim = int(dim) if dim is not None else spec.embed_dim

    def build_model(self) -> Any:
        return None

    @property
    def model(self) -> Any:  # nothing to load
        return None

    def prepare(self, decoded: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        features, coords = decoded
        if features.shape[1] != self.embed_dim:
            raise InputError(
                f"expected {self.embed_dim}-d features, found {features.shape[1]}-d (pass --option dim=N)", "preprocess"
            )
        return features, coords

    def forward(self, batch: Any) -> Any:
        raise ExtractError(f"{self.spec.name} has no forward; it returns bags through encode_samples")

    def encode_samples(self, samples: list[Any], batch_size: int) -> EncodedSamples:
        rows = [features.mean(axis=0, dtype=np.float64).astype(np.float32) for features, _ in samples]
        bags = [{"features": features, "coords": coords} for features, coords in samples]
        return EncodedSamples(np.stack(rows), bags)

    def preprocessing(self) -> dict[str, Any]:
        return {}

    def weights_identity(self) -> str:
        return "none"


@register_encoder(CLAM_H5_SPEC)
def build_clam_h5(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
    return ClamFeaturesEncoder(CLAM_H5_SPEC, weights, device, dtype, **options)
