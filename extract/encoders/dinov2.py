"""DINOv2 image encoders (X-ray): transformers ``Dinov2Model`` with the family's own preprocessing.

The preprocessing (shortest edge 256 bicubic, centre crop 224, rescale 1/255, ImageNet mean/std) is done here in
PIL/torch from declared parameters rather than by the HF image processor, so it is deterministic across
transformers versions and every parameter lands in the fingerprint. When the weights folder ships a
``preprocessor_config.json`` its values are used; explicit options override both.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...cache_schema.fingerprint import canonical_json
from ..errors import ExtractError, WeightsError
from .base import Encoder, EncoderSpec, ImageEncoder, register_encoder, seeded_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL resample codes as HF preprocessor configs store them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
POOLINGS = ("cls", "cls+mean")
TINY_DINOV2_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 14,
    "image_size": 56,
    "use_swiglu_ffn": True,
}
TINY_SEED = 0


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize the shortest edge, centre-crop, rescale, normalise: the BitImageProcessor steps, declared."""

    shortest_edge: int = 256
    resample: str = "bicubic"
    crop_height: int = 224
    crop_width: int = 224
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        """Read a ``preprocessor_config.json`` (BitImageProcessor keys); absent keys keep the defaults."""
        values: dict[str, Any] = {}
        size = config.get("size")
        if isinstance(size, dict) and "shortest_edge" in size:
            values["shortest_edge"] = int(size["shortest_edge"])
        elif isinstance(size, int):
            values["shortest_edge"] = size
        elif size is not None:
            raise WeightsError(f"preprocessor_config.json size {size!r} is not a shortest-edge resize")
        crop = config.get("crop_size")
        if isinstance(crop, dict):
            values["crop_height"], values["crop_width"] = int(crop["height"]), int(crop["width"])
        elif isinstance(crop, int):
            values["crop_height"] = values["crop_width"] = crop
        if "resample" in config:
            values["resample"] = RESAMPLE_NAMES[int(config["resample"])]
        for key in ("rescale_factor",):
            if key in config:
                values[key] = float(config[key])
        for key in ("image_mean", "image_std"):
            if key in config:
                values[key] = tuple(float(v) for v in config[key])
        for key in ("do_resize", "do_center_crop", "do_normalize"):
            if key in config:
                values[key] = bool(config[key])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))

    def __call__(self, image: Image.Image) -> Any:
        """One RGB PIL image -> float32 tensor (3, crop_height, crop_width)."""
        import torch

        if self.do_resize:
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
            image = image.resize(size, resample=getattr(Image.Resampling, self.resample.upper()))
        if self.do_center_crop:
            width, height = image.size
            top, left = (height - self.crop_height) // 2, (width - self.crop_width) // 2
            # PIL pads with black where the box leaves the image (crop larger than the image).
            image = image.crop((left, top, left + self.crop_width, top + self.crop_height))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) * np.float32(self.rescale_factor))
        pixels = pixels.permute(2, 0, 1).contiguous()
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels


class Dinov2Encoder(ImageEncoder):
    """A frozen DINOv2 backbone; CLS (``pooler_output``) or CLS concatenated with the patch-token mean."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: str | None,
        device: str = "cpu",
        dtype: str = "auto",
        pooling: str = "cls",
        crop_size: int | None = None,
        shortest_edge: int | None = None,
    ):
        super().__init__(spec, weights, device, dtype)
        if not self.weights:
            raise WeightsError(f"{spec.name}: no weights given; pass --weights /path/to/model or a hub id")
        if pooling not in POOLINGS:
            raise ExtractError(f"{spec.name}: pooling {pooling!r} is not one of {POOLINGS}")
        self.local_dir = None if self.is_tiny else _local_dir(self.weights)
        hidden = TINY_DINOV2_CONFIG["hidden_size"] if self.is_tiny else _config_hidden_size(self.local_dir)
        hidden = hidden or spec.embed_dim
        self.spec = dataclasses.replace(spec, pooling=pooling)
        self.embed_dim = hidden * (2 if pooling == "cls+mean" else 1)
        self.transform = self._declared_preprocessing(crop_size, shortest_edge)

    def _declared_preprocessing(self, crop_size: int | None, shortest_edge: int | None) -> ImagePreprocessing:
        transform = ImagePreprocessing()
        config_file = self.local_dir / "preprocessor_config.json" if self.local_dir else None
        if config_file is not None and config_file.is_file():
            try:
                transform = ImagePreprocessing.from_hf_config(json.loads(config_file.read_text()))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise WeightsError(f"cannot read {config_file}: {exc}") from None
        if crop_size is not None:
            transform = dataclasses.replace(transform, crop_height=int(crop_size), crop_width=int(crop_size))
        if shortest_edge is not None:
            transform = dataclasses.replace(transform, shortest_edge=int(shortest_edge))
        return transform

    # ------------------------------------------------------------ contract
    def build_model(self) -> Any:
        import torch
        from transformers import Dinov2Config, Dinov2Model

        if self.is_tiny:
            with seeded_init(TINY_SEED):
                model = Dinov2Model(Dinov2Config(**TINY_DINOV2_CONFIG))
        else:
            try:
                model = Dinov2Model.from_pretrained(self.weights, dtype=getattr(torch, self.dtype_name))
            except (OSError, ValueError) as exc:
                raise WeightsError(
                    f"{self.spec.name}: cannot load DINOv2 weights from {self.weights!r} ({exc}); pass --weights "
                    "with a local model folder, or a hub id present in the local HF cache (HF_HUB_OFFLINE=1)"
                ) from None
        if model.config.hidden_size * (2 if self.spec.pooling == "cls+mean" else 1) != self.embed_dim:
            raise WeightsError(
                f"{self.spec.name}: weights {self.weights!r} have hidden size {model.config.hidden_size}, "
                f"but the encoder declared {self.embed_dim} ({self.spec.pooling})"
            )
        return model.to(self.device).eval()

    def forward(self, batch: Any) -> Any:
        import torch

        model = self.model
        out = model(pixel_values=batch.to(next(model.parameters()).dtype))
        cls_token = out.pooler_output
        if self.spec.pooling == "cls":
            return cls_token
        patch_mean = out.last_hidden_state[:, 1:].mean(dim=1)
        return torch.cat([cls_token, patch_mean], dim=-1)

    def preprocessing(self) -> dict[str, Any]:
        return self.transform.as_dict()

    def tiny_recipe(self) -> dict[str, Any]:
        return {"seed": TINY_SEED, **TINY_DINOV2_CONFIG}


def _local_dir(weights: str) -> Path | None:
    path = Path(weights).expanduser()
    return path if path.is_dir() else None


def _config_hidden_size(folder: Path | None) -> int | None:
    """``hidden_size`` from a local ``config.json`` (read as JSON, so no model import is needed)."""
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        return int(json.loads((folder / "config.json").read_text())["hidden_size"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"cannot read hidden_size from {folder / 'config.json'}: {exc}") from None


# One data entry per checkpoint of the same architecture; the first registered is the X-ray default.
DINOV2_CHECKPOINTS = (
    ("dinov2-giant", 1536, "facebook/dinov2-giant", "DINOv2 ViT-g/14 (design default for X-ray), CLS token"),
    ("dinov2-large", 1024, "facebook/dinov2-large", "DINOv2 ViT-L/14, CLS token"),
    ("dinov2-base", 768, "facebook/dinov2-base", "DINOv2 ViT-B/14, CLS token"),
)


def _register(name: str, dim: int, hub_id: str, description: str) -> None:
    spec = EncoderSpec(
        name,
        "xray",
        dim,
        "cls",
        reader="xray",
        options=("pooling", "crop_size", "shortest_edge"),
        default_weights=hub_id,
        description=description,
    )

    @register_encoder(spec)
    def build(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
        return Dinov2Encoder(spec, weights, device, dtype, **options)


for _checkpoint in DINOV2_CHECKPOINTS:
    _register(*_checkpoint)
