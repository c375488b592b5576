"""open_clip image towers (BiomedCLIP, or any open_clip model) as alternative image encoders.

Weights are reached through open_clip's own loader: ``hf-hub:org/repo`` (offline from the local HF cache),
``local-dir:/path`` (a folder with ``open_clip_config.json`` and the weights), or an open_clip architecture name
with a checkpoint file (``--option architecture=ViT-B-16 --weights /path/model.safetensors``). The image is read
like any X-ray (PNG/JPEG/DICOM) and transformed by the model's own eval preprocessing, whose parameters
(``model.visual.preprocess_cfg``) enter the fingerprint; the output is ``encode_image`` without normalisation.
Unlike the transformers encoders, the fingerprint needs the model built (its preprocessing lives on it).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from ...cache_schema.fingerprint import canonical_json
from ..errors import ExtractError, InputError, WeightsError
from ..readers.image import read_xray
from .base import TINY_RANDOM, Encoder, EncoderSpec, file_sha256, register_encoder, weights_identity

TINY_CLIP_NAME = "adacomed-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2},
}
TINY_SEED = 0
OPTIONS = ("architecture",)


class OpenClipImageEncoder(Encoder):
    """The image tower of an open_clip model: ``encode_image(x, normalize=False)``."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: str | None,
        device: str = "cpu",
        dtype: str = "auto",
        architecture: str | None = None,
    ):
        super().__init__(spec, weights, device, dtype)
        if not self.weights:
            raise WeightsError(
                f"{spec.name}: no weights given; pass --weights hf-hub:org/repo, local-dir:/path, "
                "or a checkpoint file with --option architecture=NAME"
            )
        self.architecture = architecture
        self.is_tiny = self.weights == TINY_RANDOM
        self._transform: Any = None
        if self.is_tiny:
            self.embed_dim = TINY_CLIP_CONFIG["embed_dim"]

    def build_model(self) -> Any:
        import open_clip
        import torch

        if self.is_tiny:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"{TINY_CLIP_NAME}.json"
                path.write_text(json.dumps(TINY_CLIP_CONFIG))
                open_clip.add_model_config(path)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(TINY_SEED)
                    model, _, transform = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=None)
        else:
            name, pretrained = self._name_and_checkpoint()
            try:
                model, transform = open_clip.create_model_from_pretrained(
                    name, pretrained=pretrained, weights_only=True
                )
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                raise WeightsError(
                    f"{self.spec.name}: cannot load open_clip weights {self.weights!r} ({exc}); "
                    "hub ids must be in the local HF cache when HF_HUB_OFFLINE=1"
                ) from None
        self._transform = transform
        with torch.inference_mode():
            probe = model.encode_image(torch.zeros(1, 3, *model.visual.preprocess_cfg["size"]))
        self.embed_dim = int(probe.shape[-1])
        return model.to(self.device).eval()

    def _name_and_checkpoint(self) -> tuple[str, str | None]:
        if self.weights.startswith(("hf-hub:", "local-dir:")):
            return self.weights, None
        if self.architecture is None:
            raise ExtractError(f"{self.spec.name}: a checkpoint file needs --option architecture=<open_clip name>")
        return self.architecture, self.weights

    def load_input(self, pointer: Any) -> Any:
        image = read_xray(Path(pointer))
        if self._transform is None:
            self.model  # noqa: B018 - the transform comes with the model
        try:
            return self._transform(image)
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot preprocess image ({type(exc).__name__})", "preprocess") from None

    def collate(self, samples: list[Any]) -> Any:
        import torch

        return torch.stack(samples)

    def forward(self, batch: Any) -> Any:
        return self.model.encode_image(batch, normalize=False)

    def preprocessing(self) -> dict[str, Any]:
        cfg = dict(self.model.visual.preprocess_cfg)
        return {"reader": "read_xray/1", **json.loads(canonical_json({k: v for k, v in cfg.items()}))}

    def weights_identity(self) -> str:
        if self.is_tiny:
            digest = hashlib.sha256(canonical_json({"seed": TINY_SEED, **TINY_CLIP_CONFIG}).encode()).hexdigest()
            return f"{TINY_RANDOM}:{digest[:16]}"
        if self.weights.startswith("hf-hub:"):
            return weights_identity(self.weights[len("hf-hub:") :])
        if self.weights.startswith("local-dir:"):
            return weights_identity(self.weights[len("local-dir:") :])
        return f"{self.architecture}:sha256:{file_sha256(Path(self.weights))}"


def _register(name: str, dim: int, default_weights: str, description: str) -> None:
    spec = EncoderSpec(
        name, "xray", dim, "image-embedding", default_weights=default_weights, version="1", description=description
    )

    @register_encoder(spec)
    def build(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ExtractError(f"{name}: unknown options {sorted(unknown)}; known: {list(OPTIONS)}")
        return OpenClipImageEncoder(spec, weights, device, dtype, **options)


_register(
    "biomedclip",
    512,
    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "BiomedCLIP ViT-B/16 image tower (open_clip), encode_image",
)
_register("open-clip", 0, "", "any open_clip image tower: hf-hub:, local-dir: or --option architecture=")
