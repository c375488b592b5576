"""The encoder contract and registry.

An encoder declares its contract in an :class:`EncoderSpec` (modality, output dim, pooling, the input kind it
reads, the options it accepts, default weights, code version) and implements the steps the runner calls without
knowing which model it is:

* :meth:`Encoder.load_input`: one manifest pointer -> the registered reader's decoded sample -> :meth:`prepare`
  (runs in decode workers);
* :meth:`Encoder.encode_samples`: prepared samples -> ``(B, embed_dim)`` float32 rows, plus per-sample **bags**
  (variable-length arrays such as a slide's patch features) for encoders that declare them. By default it is
  :meth:`collate` + :meth:`forward` under inference mode.

Adding an encoder is one file under ``extract/encoders/`` with a builder decorated by :func:`register_encoder`,
plus one import line in ``extract/encoders/__init__.py``; a new input kind is one file under ``extract/readers/``.
The builder takes ``weights`` (a local directory or file, a hub id, or ``"tiny-random"`` for a random-weights
instance of the same architecture class built from a tiny config) and returns an :class:`Encoder` whose model
loads lazily, so the fingerprint is known before any weights load. :func:`create_encoder` checks options against
the spec (and the reader's) before the builder runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...cache_schema import Fingerprint
from ...cache_schema.atomic import atomic_write_text
from ...cache_schema.errors import InputError
from ...cache_schema.fingerprint import canonical_json
from ..errors import ExtractError, WeightsError
from ..options import check_options
from ..readers import InputReader, create_reader, get_reader_class

TINY_RANDOM = "tiny-random"


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is, declared once beside its builder.

    Args:
        name: registry key (``dinov2-giant``).
        modality: manifest modality it embeds by default (``xray``).
        embed_dim: output dimension with the real weights.
        pooling: how outputs become one vector (``cls``, ``masked-mean``).
        reader: the input kind :meth:`Encoder.load_input` reads (a registered reader: ``xray``, ``text``, ...).
        options: option names the builder accepts (``--option k=v``); the reader's own options come on top.
        bags: names of the per-sample variable-length arrays the encoder also returns (WSI: features, coords).
        rows_per_shard: default samples per cache shard (bag encoders keep shards to a few samples).
        default_weights: hub id used when ``--weights`` is not given (resolved offline from the local HF cache).
        version: code version of the wrapper; bump it when the output semantics change (it keys the cache).
        description: one line for ``--help`` and the README.
    """

    name: str
    modality: str
    embed_dim: int
    pooling: str
    reader: str = "xray"
    options: tuple[str, ...] = ()
    bags: tuple[str, ...] = ()
    rows_per_shard: int | None = None
    default_weights: str = ""
    version: str = "1"
    description: str = ""


@dataclass
class EncodedSamples:
    """What :meth:`Encoder.encode_samples` returns: one float32 row per sample and, for bag encoders, its bags."""

    embeddings: np.ndarray  # (B, embed_dim) float32
    bags: list[dict[str, np.ndarray]] | None = None  # one {bag name: (N_i, ...) array} per sample


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build a tiny-random model reproducibly without touching the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Encoder(ABC):
    """A frozen large model behind the contract. Subclasses build the model in :meth:`build_model`.

    ``self.reader`` is the registered reader of ``spec.reader``; :func:`create_encoder` gives it the reader's
    options, so an encoder never parses a file format or a reader option itself.
    """

    spec: EncoderSpec

    def __init__(self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto"):
        self.spec = spec
        self.weights = weights or spec.default_weights
        self.is_tiny = self.weights == TINY_RANDOM
        self.device = device
        self.dtype_name = resolve_dtype_name(dtype, device)
        self.embed_dim = spec.embed_dim
        self.reader: InputReader = create_reader(spec.reader)
        self._model: Any = None

    # ----------------------------------------------------------- the contract
    @abstractmethod
    def build_model(self) -> Any:
        """Load (or, for ``tiny-random``, construct) the model; called once, lazily."""

    @abstractmethod
    def forward(self, batch: Any) -> Any:
        """Run the model on a batch already on the device; return ``(B, embed_dim)`` pooled outputs."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """The encoder's own preprocessing parameters (the reader's are added to the fingerprint beside them)."""

    def prepare(self, decoded: Any) -> Any:
        """The encoder's preprocessing of one decoded sample (resize, normalise, ...); identity by default."""
        return decoded

    def load_input(self, pointer: Any) -> Any:
        """Read and preprocess one sample; raise :class:`~adacomed.extract.errors.InputError` on bad input."""
        return self.prepare(self.reader.read(pointer))

    def collate(self, samples: list[Any]) -> Any:
        """Stack prepared samples (tensors or arrays) into one batch."""
        import torch

        return torch.stack([torch.as_tensor(s) for s in samples])

    def tiny_recipe(self) -> dict[str, Any]:
        """Config and seed of the ``tiny-random`` instance; its hash is that instance's weights identity."""
        raise ExtractError(f"{self.spec.name} declares no tiny-random recipe")

    def weights_identity(self) -> str:
        """Identity of the weights for the fingerprint (tiny recipe hash, hub revision or file hashes)."""
        if self.is_tiny:
            digest = hashlib.sha256(canonical_json(self.tiny_recipe()).encode()).hexdigest()
            return f"{TINY_RANDOM}:{digest[:16]}"
        return weights_identity(self.weights)

    def encode_samples(self, samples: list[Any], batch_size: int) -> EncodedSamples:
        """Prepared samples -> embeddings (and bags). Bag encoders override this and get one sample per call,
        with ``batch_size`` the number of items (patches, slabs) per forward."""
        return EncodedSamples(self.encode(self.collate(samples)).numpy())

    # --------------------------------------------------------------- helpers
    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.build_model()
        return self._model

    def encode(self, batch: Any) -> Any:
        """Forward under inference mode (autocast on GPU when a half dtype is asked); float32 CPU output."""
        import torch

        model = self.model
        batch = to_device(batch, self.device)
        with torch.inference_mode(), self.autocast():
            out = self.forward(batch)
        del model
        return out.float().cpu()

    def autocast(self) -> Any:
        import torch

        if self.device.startswith("cuda") and self.dtype_name in ("float16", "bfloat16"):
            return torch.autocast("cuda", dtype=getattr(torch, self.dtype_name))
        return contextlib.nullcontext()

    def fingerprint(
        self, modality: str, input_hash: str, storage_dtype: str = "float16", input_files: str = ""
    ) -> Fingerprint:
        return Fingerprint(
            modality=modality,
            encoder=self.spec.name,
            encoder_version=self.spec.version,
            weights=self.weights_identity(),
            pooling=self.spec.pooling,
            preprocessing={**self.reader.parameters(), **self.preprocessing()},
            inference_dtype=self.dtype_name,
            storage_dtype=storage_dtype,
            dim=self.embed_dim,
            input_hash=input_hash,
            input_files=input_files,
        )


class ImageEncoder(Encoder):
    """An encoder of images: the registered reader's RGB image, then the encoder's declared ``transform``."""

    transform: Any  # PIL RGB image -> float tensor (C, H, W); an attribute or a property of the subclass

    def load_input(self, pointer: Any) -> Any:
        image = self.reader.read(pointer)
        try:
            return self.transform(image)
        except (ValueError, OSError) as exc:
            raise InputError(
                f"cannot preprocess image {Path(pointer).name} ({type(exc).__name__})", "preprocess"
            ) from None


def resolve_dtype_name(dtype: str, device: str) -> str:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere; names are torch dtype names."""
    if dtype == "auto":
        if not device.startswith("cuda"):
            return "float32"
        import torch

        # bf16 where the card has it (Ampere and later); fp16 on T4/V100-class cards.
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise ExtractError(f"dtype {dtype!r} is not one of auto, float32, float16, bfloat16")
    return name


def to_device(batch: Any, device: str) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# ------------------------------------------------------------------ weights
def _hash_cache_path() -> Path:
    base = Path(os.environ.get("ADACOMED_HOME", Path.home() / ".cache" / "adacomed"))
    return base / "file_hashes.json"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (absolute path, size, mtime_ns) so multi-GB weights hash once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = _hash_cache_path()
    try:
        known = json.loads(store.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            digest.update(chunk)
    value = digest.hexdigest()
    known[key] = value
    try:
        atomic_write_text(store, json.dumps(known), durable=False)  # a lost entry is only hashed again
    except OSError:
        pass
    return value


# Files whose bytes decide a model's output: weights, configs, tokenizers, and code (trust_remote_code).
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".json",
    ".model",
    ".txt",
    ".py",
    ".gguf",
    ".msgpack",
    ".h5",
    ".tiktoken",
)


def weights_identity(weights: str) -> str:
    """``sha256:<...>`` over a local file or directory's weight/config files; ``hf:<id>@<revision>`` for hub ids."""
    if weights.startswith(TINY_RANDOM):
        return weights
    path = Path(weights).expanduser()
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise WeightsError(f"weights folder {path} holds no weight or config files ({', '.join(WEIGHT_SUFFIXES)})")
        for file in files:
            digest.update(f"{file.relative_to(path)}:{file_sha256(file)}\n".encode())
        return "sha256:" + digest.hexdigest()
    if weights.startswith(("/", ".", "~")) or weights.count("/") > 1:
        raise WeightsError(f"weights path {weights!r} does not exist (and is not a hub id like org/name)")
    return f"hf:{weights}@{resolve_hub_revision(weights)}"


def resolve_hub_revision(repo_id: str) -> str:
    """The commit ``refs/main`` points to in the local HF cache (what ``from_pretrained`` loads offline).

    Raises:
        WeightsError: the repo is not in the local cache; the cache key would not know what it embeds.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(cached, str):
            cached = try_to_load_from_cache(repo_id, "open_clip_config.json")
    except ValueError as exc:  # not a valid hub id (HFValidationError)
        raise WeightsError(f"{repo_id!r} is neither an existing local path nor a valid hub id ({exc})") from None
    if isinstance(cached, str):
        parts = Path(cached).parts
        if "snapshots" in parts:
            return parts[parts.index("snapshots") + 1]
    raise WeightsError(
        f"{repo_id!r} is not in the local Hugging Face cache; download it once (huggingface-cli download {repo_id}) "
        "or pass --weights with a local folder"
    )


# ------------------------------------------------------------------ registry
EncoderBuilder = Callable[..., Encoder]


@dataclass(frozen=True)
class _Entry:
    spec: EncoderSpec
    builder: EncoderBuilder


_REGISTRY: dict[str, _Entry] = {}


def register_encoder(spec: EncoderSpec) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: register a builder ``(weights, device, dtype, **options) -> Encoder`` under ``spec.name``."""

    def decorate(builder: EncoderBuilder) -> EncoderBuilder:
        if spec.name in _REGISTRY:
            raise ValueError(f"encoder {spec.name!r} is already registered")
        _REGISTRY[spec.name] = _Entry(spec, builder)
        return builder

    return decorate


def list_encoders(modality: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if modality is None or e.spec.modality == modality)


def default_modalities() -> dict[str, str]:
    """Each modality that has a registered encoder -> its default encoder (for ``--help`` and listings)."""
    defaults: dict[str, str] = {}
    for name, entry in _REGISTRY.items():
        defaults.setdefault(entry.spec.modality, name)
    return defaults


def get_spec(name: str) -> EncoderSpec:
    try:
        return _REGISTRY[name].spec
    except KeyError:
        raise ExtractError(f"unknown encoder {name!r}; registered: {list_encoders()}") from None


def default_encoder(modality: str) -> str:
    """The first encoder registered for a modality (the design's choice is registered first)."""
    for name, entry in _REGISTRY.items():
        if entry.spec.modality == modality:
            return name
    raise ExtractError(f"no encoder is registered for modality {modality!r}; registered: {list_encoders()}")


def create_encoder(
    name: str, weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any
) -> Encoder:
    """Build a registered encoder (model loads lazily on first use).

    Options are checked against the encoder's spec and its reader's spec first (a typo names the close match);
    the reader's options go to the reader, the rest to the builder.
    """
    spec = get_spec(name)
    reader_class = get_reader_class(spec.reader)
    check_options(f"encoder {name!r}", options, (*spec.options, *reader_class.spec.options))
    reader_options = {k: options.pop(k) for k in list(options) if k in reader_class.spec.options}
    encoder = _REGISTRY[name].builder(weights=weights, device=device, dtype=dtype, **options)
    if reader_options:
        encoder.reader = reader_class(**reader_options)
    return encoder
