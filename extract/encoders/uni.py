"""UNI (ViT-L/16, 1024-d) over a slide's patches: a bag of patch features and the slide vector (their mean).

The model is timm's ``vit_large_patch16_224`` built as UNI's authors build it for a local checkpoint
(``init_values=1e-5`` so the LayerScale weights exist, ``num_classes=0`` so the output is the final-normed CLS
token, ``dynamic_img_size=True``), loaded with ``strict=True`` from ``model.safetensors`` or a tensor-only
``pytorch_model.bin`` (``torch.load(weights_only=True)``: no pickled objects). Preprocessing is declared here and
recorded in the cache key: Resize 224 (bilinear, shortest side), CenterCrop 224, ImageNet mean/std set
explicitly (timm's default config for a locally built ViT-L says 0.5/0.5, which is wrong for UNI).

``tiny-random`` is the same ``VisionTransformer`` class with a tiny width and depth and seeded random weights.

Patches are read by worker processes, each with its own open slide (:mod:`..wsi.patch_reader`), and streamed to
the model batch by batch; features land in one preallocated (N, D) float32 array, which is the bag (never copied).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...cache_schema.fingerprint import canonical_json
from ..errors import ExtractError, WeightsError
from ..wsi.patch_reader import PatchReaderPool, PatchTransform, ReadSpec
from ..wsi.patcher import PatchedSlide
from .base import TINY_RANDOM as TINY
from .base import EncodedSamples, Encoder, EncoderSpec, register_encoder

UNI_ARCH = "vit_large_patch16_224"
UNI_KWARGS: dict[str, Any] = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0}
UNI_DIM = 1024
TINY_UNI: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "uni.safetensors", "uni.bin")
TINY_RANDOM = TINY


@dataclass(frozen=True)
class UniPreprocessing:
    """The declared preprocessing (CPU part runs in the reader workers; normalisation next to the model)."""

    resize: int = 224
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def transform(self) -> PatchTransform:
        return PatchTransform(self.resize, self.crop, self.interpolation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "center_crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


# ------------------------------------------------------------------------------------------------ weights
def resolve_checkpoint(weights: str) -> Path:
    """A checkpoint file: the path itself, a known file name inside a folder, or one in the local HF cache."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        candidates = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        if len(candidates) == 1:
            return candidates[0]
        raise WeightsError(f"weights folder {path} holds no single UNI checkpoint ({', '.join(CHECKPOINT_NAMES)})")
    if weights.count("/") == 1 and not weights.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        for name in CHECKPOINT_NAMES[:2]:
            cached = try_to_load_from_cache(weights, name)
            if isinstance(cached, str):
                return Path(cached)
        raise WeightsError(
            f"{weights!r} is not in the local Hugging Face cache (UNI is gated: download it once with "
            f"huggingface-cli download {weights}), or pass --weights /path/to/pytorch_model.bin"
        )
    raise WeightsError(f"UNI weights {weights!r}: no such file or folder")


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors only: safetensors, or ``torch.load(weights_only=True)`` (refuses pickled objects)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; all mean "not a tensor file"
        raise WeightsError(f"cannot load {path.name} as tensors only (weights_only=True): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def build_uni_model(weights: str, size: dict[str, Any] | None = None, seed: int = TINY_SEED) -> Any:
    """UNI's architecture with weights from ``weights``; ``tiny-random``: the same class at a tiny ``size`` with
    seeded random weights. ``size`` (``embed_dim``, ``depth``, ``num_heads``) also shrinks a real load (tests)."""
    import timm
    import torch

    kwargs = {**UNI_KWARGS, "dynamic_img_size": True}
    if weights == TINY_RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(UNI_ARCH, pretrained=False, **kwargs, **(size or TINY_UNI))
        with torch.no_grad():  # LayerScale at 1e-5 would make a random model's output ignore its input
            for name, parameter in model.named_parameters():
                if name.endswith(("ls1.gamma", "ls2.gamma")):
                    parameter.fill_(1.0)
        return model.eval()
    checkpoint = resolve_checkpoint(weights)
    state = load_state_dict(checkpoint)
    model = timm.create_model(UNI_ARCH, pretrained=False, **kwargs, **(size or {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{checkpoint.name} does not match UNI's ViT-L/16 (strict load): {str(exc)[:400]}") from None
    return model.eval()


def tiny_recipe(seed: int = TINY_SEED) -> dict[str, Any]:
    """The config and seed of the tiny-random instance (its weights identity is their hash)."""
    return {"arch": UNI_ARCH, **UNI_KWARGS, "dynamic_img_size": True, **TINY_UNI, "seed": seed, "layer_scale": 1.0}


def tiny_identity(seed: int = TINY_SEED) -> str:
    recipe = tiny_recipe(seed)
    return f"{TINY_RANDOM}:{hashlib.sha256(canonical_json(recipe).encode()).hexdigest()[:16]}"


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class BagResult:
    """One slide's bag: ``features`` (N, D) float32, ``coords`` (N, 2) int64, flags of replaced tiles, timings."""

    features: np.ndarray
    coords: np.ndarray
    replaced: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def slide_vector(self) -> np.ndarray:
        return self.features.mean(axis=0, dtype=np.float64).astype(np.float32)


def normalizer(preprocessing: UniPreprocessing, device: str) -> Callable[[np.ndarray], Any]:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) on ``device``, ImageNet-normalised."""
    import torch

    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0

    def run(pixels: np.ndarray) -> Any:
        batch = torch.from_numpy(pixels).to(device, non_blocking=True).permute(0, 3, 1, 2)
        return batch.float().contiguous().sub_(mean).div_(std)

    return run


def embed_patches(
    model: Any,
    pool: PatchReaderPool,
    spec: ReadSpec,
    coords: np.ndarray,
    batch_size: int,
    preprocessing: UniPreprocessing,
    device: str = "cpu",
    autocast: Any = None,
    embed_dim: int | None = None,
) -> BagResult:
    """Read ``coords`` with ``pool`` and run ``model`` batch by batch into one preallocated feature array."""
    import torch

    normalise = normalizer(preprocessing, device)
    features: np.ndarray | None = None if embed_dim is None else np.empty((len(coords), embed_dim), np.float32)
    replaced = np.zeros(len(coords), dtype=bool)
    waited = computed = 0.0
    mark = time.perf_counter()
    for start, pixels, flags in pool.batches(spec, coords, batch_size):
        now = time.perf_counter()
        waited += now - mark
        with torch.inference_mode(), autocast or contextlib.nullcontext():
            out = model(normalise(pixels))
        out = out.float().cpu().numpy()
        if features is None:
            features = np.empty((len(coords), out.shape[1]), np.float32)
        features[start : start + len(out)] = out
        replaced[start : start + len(out)] = flags
        mark = time.perf_counter()
        computed += mark - now
    if features is None:
        features = np.zeros((0, embed_dim or 0), np.float32)
    return BagResult(features, coords, replaced, {"waiting_for_patches": waited, "model": computed})


# ------------------------------------------------------------------------------------------------ the encoder
SLIDE_INFO_FIELDS = ("mpp", "level0_magnification", "patch_size_level0", "read_level", "read_size", "contours")


def slide_info_row(patched: PatchedSlide) -> np.ndarray:
    """One float32 row per slide (bag ``slide_info``, fields :data:`SLIDE_INFO_FIELDS`; -1 = unknown)."""
    info = patched.info
    values = (
        -1.0 if info.mpp is None else info.mpp,
        -1.0 if info.magnification is None else info.magnification,
        patched.grid.patch_size_level0,
        patched.grid.read_level,
        patched.grid.read_size,
        patched.tissue["contours"],
    )
    return np.asarray([values], dtype=np.float32)


class UniEncoder(Encoder):
    """A bag encoder: one slide in, its patch features + coordinates (bags) and their mean (the embedding) out."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: str | None,
        device: str = "cpu",
        dtype: str = "auto",
        reader_workers: int | None = None,
        reader_kind: str = "auto",
    ):
        super().__init__(spec, weights, device, dtype)
        if not self.weights:
            raise WeightsError(f"{spec.name}: no weights given; pass --weights /path/to/pytorch_model.bin")
        self.embed_dim = TINY_UNI["embed_dim"] if self.is_tiny else spec.embed_dim
        self.preprocess = UniPreprocessing()
        workers = default_reader_workers() if reader_workers is None else int(reader_workers)
        if workers < 0:
            raise ExtractError(f"{spec.name}: reader_workers must be >= 0, got {workers}")
        self.reader_workers, self.reader_kind = workers, str(reader_kind)
        self._pool: PatchReaderPool | None = None

    def build_model(self) -> Any:
        model = build_uni_model(self.weights)
        return model.to(self.device)

    def forward(self, batch: Any) -> Any:
        return self.model(batch)

    def preprocessing(self) -> dict[str, Any]:
        return self.preprocess.as_dict()

    def tiny_recipe(self) -> dict[str, Any]:
        return tiny_recipe()

    def pool(self) -> PatchReaderPool:
        if self._pool is None:
            self._pool = PatchReaderPool(self.reader_workers, kind=self.reader_kind)
        return self._pool

    def encode_samples(self, samples: list[Any], batch_size: int) -> EncodedSamples:
        """Each sample is one :class:`PatchedSlide`: read its patches in the workers, embed them batch by batch."""
        rows, bags = [], []
        for patched in samples:
            grid = patched.grid
            spec = ReadSpec(
                patched.slide_options, grid.read_level, grid.read_size, grid.patch_size, self.preprocess.transform
            )
            bag = embed_patches(
                self.model,
                self.pool(),
                spec,
                grid.coords,
                batch_size,
                self.preprocess,
                self.device,
                self.autocast(),
                self.embed_dim,
            )
            rows.append(bag.slide_vector)
            bags.append(
                {
                    "features": bag.features,
                    "coords": bag.coords,
                    "tile_replaced": bag.replaced.astype(np.uint8),
                    "slide_info": slide_info_row(patched),
                }
            )
        return EncodedSamples(np.stack(rows), bags)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def default_reader_workers() -> int:
    """One reader process per core but one (left to the model and the decode threads), at most 8, at least 1."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


UNI_SPEC = EncoderSpec(
    "uni",
    "wsi",
    UNI_DIM,
    "mean",
    reader="slide",
    options=("reader_workers", "reader_kind"),
    bags=("features", "coords", "tile_replaced", "slide_info"),
    rows_per_shard=8,
    default_weights="MahmoodLab/UNI",
    version="1",
    description="UNI ViT-L/16 over CLAM patches (256 px, level 0 by default): patch bag + mean slide vector",
)


@register_encoder(UNI_SPEC)
def build_uni(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> UniEncoder:
    return UniEncoder(UNI_SPEC, weights, device, dtype, **options)
