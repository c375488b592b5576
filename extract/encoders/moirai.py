"""MOIRAI (Salesforce, ``uni2ts``) over EHR time series: the masked mean of its encoder over observed tokens.

Loading: a local folder (or a hub id in the local Hugging Face cache) as the released checkpoints ship it,
``config.json`` + ``model.safetensors`` (``Salesforce/moirai-1.1-R-large``: 1024-d, 24 layers), into the
re-implemented encoder path of :mod:`.moirai_net`: every key except the distribution head's ``param_proj.*``
must be there with its shape, and nothing else may be. ``uni2ts`` itself is not needed (it pins old torch and
numpy); ``tests/test_moirai.py`` checks the two agree on a tiny random module.

Input: the reader's regular grid (first 48 h, hourly by default). Variables never observed in the window are
dropped; each remaining one is cut into patches of ``patch_size`` steps (left-padded to a whole patch with
unobserved zeros, the value uni2ts's pipeline imputes), one token per (variable, patch), time ids and the
per-sample standardisation as MOIRAI's forecast wrapper builds them, no prediction tokens.

``patch_size`` (option): ``auto`` picks the smallest of the model's patch sizes inside the range uni2ts allows for
the data's frequency (``DefaultPatchSizeConstraints``: minutes 32-128, hourly 32-64, daily or weekly 16-32,
monthly 8-32, quarterly or yearly 1-8), e.g. 32 for hourly grids: 48 h -> 2 tokens per variable. An explicit size
(8, 16, 32, 64, 128) overrides it.

Embedding: the mean of the encoder's outputs over the context tokens holding at least one observation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError, InputError, WeightsError
from ..readers.timeseries import TimeSeries
from .base import Encoder, EncoderSpec, register_encoder, seeded_init

MOIRAI_LARGE_HUB_ID = "Salesforce/moirai-1.1-R-large"
HEAD_PREFIX = "param_proj."
TINY_CONFIG = {"d_model": 64, "num_layers": 2, "patch_sizes": [8, 16, 32, 64, 128], "max_seq_len": 512}
TINY_SEED = 0
# uni2ts DefaultPatchSizeConstraints by pandas frequency, and the step (hours) below which each applies.
PATCH_RANGES: tuple[tuple[str, float, tuple[int, int]], ...] = (
    ("S", 1 / 60, (64, 128)),
    ("T", 1.0, (32, 128)),
    ("H", 24.0, (32, 64)),
    ("D", 24.0 * 7, (16, 32)),
    ("W", 24.0 * 28, (16, 32)),
    ("M", 24.0 * 90, (8, 32)),
    ("Q", float("inf"), (1, 8)),
)


def frequency_of(step_hours: float) -> tuple[str, tuple[int, int]]:
    """The pandas frequency letter of a grid step and uni2ts's patch-size range for it."""
    for letter, below, bounds in PATCH_RANGES:
        if step_hours < below - 1e-9:
            return letter, bounds
    return PATCH_RANGES[-1][0], PATCH_RANGES[-1][2]


def auto_patch_size(step_hours: float, patch_sizes: tuple[int, ...]) -> int:
    letter, (low, high) = frequency_of(step_hours)
    fitting = [size for size in sorted(patch_sizes) if low <= size <= high]
    if not fitting:
        raise ExtractError(f"moirai: no patch size of {list(patch_sizes)} lies in {low}-{high} for frequency {letter}")
    return fitting[0]


def tokenize(series: TimeSeries, patch_size: int, max_patch: int) -> dict[str, np.ndarray]:
    """One sample's grid -> MOIRAI tokens (variable-major, as uni2ts packs ``(dim seq)``)."""
    keep = np.flatnonzero(series.observed.any(axis=0))
    values = np.where(series.observed[:, keep], series.values[:, keep], 0.0).astype(np.float32)
    observed = series.observed[:, keep]
    steps = values.shape[0]
    pad = -steps % patch_size
    values = np.concatenate([np.zeros((pad, len(keep)), np.float32), values])
    observed = np.concatenate([np.zeros((pad, len(keep)), bool), observed])
    patches = values.shape[0] // patch_size
    # (T, V) -> (V, patches, patch)
    target = values.T.reshape(len(keep), patches, patch_size)
    mask = observed.T.reshape(len(keep), patches, patch_size)
    seen = observed.reshape(patches, patch_size, len(keep)).any(axis=(1, 2))
    time_id = np.clip(np.cumsum(np.maximum.accumulate(seen)) - 1, 0, None)
    tokens = len(keep) * patches
    padded_target = np.zeros((tokens, max_patch), np.float32)
    padded_mask = np.zeros((tokens, max_patch), bool)
    padded_target[:, :patch_size] = target.reshape(tokens, patch_size)
    padded_mask[:, :patch_size] = mask.reshape(tokens, patch_size)
    return {
        "target": padded_target,
        "observed_mask": padded_mask,
        "time_id": np.tile(time_id, len(keep)).astype(np.int64),
        "variate_id": np.repeat(np.arange(len(keep)), patches).astype(np.int64),
        "patch_size": np.full(tokens, patch_size, np.int64),
    }


def read_moirai_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"moirai: cannot read {folder / 'config.json'} ({exc})") from None
    missing = [key for key in ("d_model", "num_layers", "patch_sizes", "max_seq_len") if key not in config]
    if missing:
        raise WeightsError(f"moirai: {folder / 'config.json'} lacks {missing}; is it a MOIRAI checkpoint?")
    return config


def load_moirai(folder: Path) -> Any:
    """The encoder path of the checkpoint in ``folder``, loaded strictly (float32, eval mode)."""
    from safetensors.torch import load_file

    from .moirai_net import MoiraiConfig, MoiraiEncoder

    raw = read_moirai_config(folder)
    config = MoiraiConfig(
        d_model=int(raw["d_model"]),
        num_layers=int(raw["num_layers"]),
        patch_sizes=tuple(int(p) for p in raw["patch_sizes"]),
        max_seq_len=int(raw["max_seq_len"]),
        scaling=bool(raw.get("scaling", True)),
    )
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise WeightsError(f"moirai: {folder} has no model.safetensors (pickled checkpoints are not loaded)")
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(HEAD_PREFIX)}
    model = MoiraiEncoder(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise WeightsError(
            f"moirai: {weights} does not match the MOIRAI encoder of its config.json: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} with another "
            f"shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model.eval()


def resolve_folder(weights: str) -> Path:
    folder = Path(weights).expanduser()
    if folder.is_dir():
        return folder
    if not weights.startswith(("/", ".", "~")) and weights.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(weights, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent
    raise WeightsError(
        f"moirai: weights {weights!r} not found; pass --weights with a local folder holding config.json and "
        f"model.safetensors (e.g. a download of {MOIRAI_LARGE_HUB_ID}), or a hub id in the local HF cache"
    )


MOIRAI_SPEC = EncoderSpec(
    "moirai-large",
    "timeseries",
    1024,
    "masked-mean",
    reader="timeseries",
    options=("patch_size",),
    default_weights=MOIRAI_LARGE_HUB_ID,
    version="1",
    description="MOIRAI-1.1-R large (uni2ts checkpoint layout, no uni2ts needed), masked mean of observed tokens",
)


class MoiraiEmbedder(Encoder):
    """MOIRAI's encoder over EHR grids; ``embed_dim`` follows the checkpoint's ``d_model``."""

    def __init__(
        self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto", patch_size: Any = "auto"
    ):
        super().__init__(spec, weights, device, dtype)
        self.folder = None if self.is_tiny else resolve_folder(self.weights)
        raw = TINY_CONFIG if self.is_tiny else read_moirai_config(self.folder)
        self.embed_dim = int(raw["d_model"])
        self.patch_sizes = tuple(int(p) for p in raw["patch_sizes"])
        self.max_seq_len = int(raw["max_seq_len"])
        if patch_size != "auto" and patch_size not in self.patch_sizes:
            raise ExtractError(f"{spec.name}: patch_size {patch_size!r} is not 'auto' or one of {self.patch_sizes}")
        self.patch_size_option = patch_size

    def patch_size_for(self, step_hours: float) -> int:
        """The declared patch size, or the frequency's (``auto``)."""
        if self.patch_size_option == "auto":
            return auto_patch_size(step_hours, self.patch_sizes)
        return int(self.patch_size_option)

    def tiny_recipe(self) -> dict[str, Any]:
        return {"config": TINY_CONFIG, "seed": TINY_SEED}

    def build_model(self) -> Any:
        from .moirai_net import MoiraiConfig, MoiraiEncoder

        if self.is_tiny:
            config = MoiraiConfig(**{**TINY_CONFIG, "patch_sizes": tuple(TINY_CONFIG["patch_sizes"])})
            with seeded_init(TINY_SEED):
                model = MoiraiEncoder(config).eval()
        else:
            model = load_moirai(self.folder)
        return model.to(self.device)

    def prepare(self, series: TimeSeries) -> dict[str, np.ndarray]:
        tokens = tokenize(series, self.patch_size_for(series.step_hours), max(self.patch_sizes))
        if len(tokens["target"]) > self.max_seq_len:
            raise InputError(
                f"{len(tokens['target'])} tokens exceed MOIRAI's {self.max_seq_len}; use a larger patch_size or "
                "fewer variables",
                "preprocess",
            )
        return tokens

    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        import torch

        length = max(len(s["target"]) for s in samples)
        batch: dict[str, Any] = {}
        for key in ("target", "observed_mask", "time_id", "variate_id", "patch_size"):
            first = samples[0][key]
            out = np.zeros((len(samples), length, *first.shape[1:]), dtype=first.dtype)
            for row, sample in enumerate(samples):
                out[row, : len(sample[key])] = sample[key]
            batch[key] = torch.from_numpy(out)
        sample_id = np.zeros((len(samples), length), np.int64)
        for row, sample in enumerate(samples):
            sample_id[row, : len(sample["target"])] = 1
        batch["sample_id"] = torch.from_numpy(sample_id)
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        out = self.model(
            batch["target"],
            batch["observed_mask"],
            batch["sample_id"],
            batch["time_id"],
            batch["variate_id"],
            batch["patch_size"],
        )
        keep = (batch["observed_mask"].any(-1) & (batch["sample_id"] == 1)).unsqueeze(-1).float()
        return (out.float() * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def preprocessing(self) -> dict[str, Any]:
        step = float(self.reader.grid.step_hours)
        return {
            "patch_size": self.patch_size_for(step),
            "patch_size_option": str(self.patch_size_option),
            "frequency": frequency_of(step)[0],
            "unobserved_fill": 0.0,
            "tokens": "variables observed in the window x patches, left-padded",
        }


@register_encoder(MOIRAI_SPEC)
def build_moirai(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
    return MoiraiEmbedder(MOIRAI_SPEC, weights, device, dtype, **options)
