"""open_clip image towers (BiomedCLIP, or any open_clip model) as alternative image encoders.

Weights are reached through open_clip's own loader: ``hf-hub:org/repo`` (offline from the local HF cache),
``local-dir:/path`` (a folder with ``open_clip_config.json`` and the weights), or an open_clip architecture name
with a checkpoint file (``--option architecture=ViT-B-16 --weights /path/model.safetensors``). The image is read
like any X-ray (PNG/JPEG/DICOM). The preprocessing and output dim are read from the model's open_clip config
before any weights load; the eval transform is built from exactly those values, which enter the fingerprint.
The output is ``encode_image`` without normalisation.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from ...cache_schema.fingerprint import canonical_json
from ..errors import ExtractError, WeightsError
from .base import Encoder, EncoderSpec, ImageEncoder, file_sha256, register_encoder, seeded_init, weights_identity

TINY_CLIP_NAME = "adacomed-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2},
}
TINY_SEED = 0


class OpenClipImageEncoder(ImageEncoder):
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
        model_cfg, preprocess_overlay = self._read_config()
        self.embed_dim = int(model_cfg["embed_dim"])
        self.preprocess_cfg = _preprocess_cfg(model_cfg, preprocess_overlay)
        self._transform: Any = None

    # ------------------------------------------------------------ config
    def _read_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model config, preprocess overlay), read without building the model."""
        if self.is_tiny:
            return TINY_CLIP_CONFIG, {}
        if self.weights.startswith(("hf-hub:", "local-dir:")):
            config_file = self._config_file()
            try:
                config = json.loads(config_file.read_text())
                return config["model_cfg"], config.get("preprocess_cfg", {})
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                raise WeightsError(f"{self.spec.name}: cannot read {config_file}: {exc}") from None
        if self.architecture is None:
            raise ExtractError(f"{self.spec.name}: a checkpoint file needs --option architecture=<open_clip name>")
        import open_clip

        config = open_clip.get_model_config(self.architecture)
        if config is None:
            raise ExtractError(f"{self.spec.name}: {self.architecture!r} is not an open_clip architecture")
        return config, {}

    def _config_file(self) -> Path:
        if self.weights.startswith("local-dir:"):
            return Path(self.weights[len("local-dir:") :]).expanduser() / "open_clip_config.json"
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.weights[len("hf-hub:") :], "open_clip_config.json"))
        except Exception as exc:  # noqa: BLE001 - offline misses raise several hub error types
            raise WeightsError(
                f"{self.spec.name}: {self.weights} is not in the local HF cache ({type(exc).__name__}); "
                "download it once or pass local-dir:/path"
            ) from None

    # ----------------------------------------------------------- contract
    def build_model(self) -> Any:
        import open_clip

        if self.is_tiny:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"{TINY_CLIP_NAME}.json"
                path.write_text(json.dumps(TINY_CLIP_CONFIG))
                open_clip.add_model_config(path)
                with seeded_init(TINY_SEED):
                    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
        else:
            if self.weights.startswith(("hf-hub:", "local-dir:")):
                name, pretrained = self.weights, None
            else:
                name, pretrained = str(self.architecture), self.weights
            try:
                model = open_clip.create_model(name, pretrained=pretrained, weights_only=True)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                raise WeightsError(
                    f"{self.spec.name}: cannot load open_clip weights {self.weights!r} ({exc}); "
                    "hub ids must be in the local HF cache when HF_HUB_OFFLINE=1"
                ) from None
        if model.visual.output_dim != self.embed_dim:
            raise WeightsError(
                f"{self.spec.name}: the image embedding has {model.visual.output_dim} dims, "
                f"the model's config says {self.embed_dim}"
            )
        return model.to(self.device).eval()

    @property
    def transform(self) -> Any:
        """The eval transform built from the declared preprocessing (never from the model object)."""
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in self.preprocess_cfg.items()}
            self._transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        return self._transform

    def forward(self, batch: Any) -> Any:
        return self.model.encode_image(batch, normalize=False)

    def preprocessing(self) -> dict[str, Any]:
        return dict(self.preprocess_cfg)

    def tiny_recipe(self) -> dict[str, Any]:
        return {"seed": TINY_SEED, **TINY_CLIP_CONFIG}

    def weights_identity(self) -> str:
        if self.is_tiny:
            return super().weights_identity()
        if self.weights.startswith("hf-hub:"):
            return weights_identity(self.weights[len("hf-hub:") :])
        if self.weights.startswith("local-dir:"):
            return weights_identity(self.weights[len("local-dir:") :])
        return f"{self.architecture}:sha256:{file_sha256(Path(self.weights))}"


def _preprocess_cfg(model_cfg: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """open_clip's eval preprocessing for this model: defaults, the tower's image size, the config's overlay."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    merged = merge_preprocess_dict(PreprocessCfg(size=size), overlay)
    return json.loads(canonical_json(dataclasses.asdict(PreprocessCfg(**merged))))


def _register(name: str, dim: int, default_weights: str, description: str) -> None:
    spec = EncoderSpec(
        name,
        "xray",
        dim,
        "image-embedding",
        reader="xray",
        options=("architecture",),
        default_weights=default_weights,
        description=description,
    )

    @register_encoder(spec)
    def build(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
        return OpenClipImageEncoder(spec, weights, device, dtype, **options)


_register(
    "biomedclip",
    512,
    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "BiomedCLIP ViT-B/16 image tower (open_clip), encode_image",
)
_register("open-clip", 0, "", "any open_clip image tower: hf-hub:, local-dir: or --option architecture=")
