"""Fracast-0 (PyPI ``fracast``, Apache-2.0): small pretrained time-series model whose weights ship in the wheel.

The demo's real-weights series encoder, as MiniLM is for text: MOIRAI's weights are not on PyPI, Fracast-0's
85,001 parameters are (``fracast``, a dependency of this package). Its forecasts are real: on 50 synthetic daily-
seasonal series it beats a seasonal-naive forecast (``benchmarks/timeseries_encoders.py``). It is loaded
through the package's own strict loader (``fracast.inference.load_fracast``, fp32 safetensors).

Each variable observed in the window is one univariate context, prepared as Fracast's forecast wrapper does:
min-max normalised over its observed values, unobserved steps 0 with mask false, right-aligned in the model's
fixed 2048-step context (left padding unobserved). The core's hidden states (2048, 64) are averaged over the
variable's observed steps, then over the variables: one 64-d vector per sample. Per-variable normalisation
removes levels (a heart rate of 80 and of 120 look alike): the embedding describes the series' shape.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExtractError, WeightsError
from ..readers.timeseries import TimeSeries
from .base import Encoder, EncoderSpec, register_encoder, seeded_init, weights_identity

TINY_SEED = 0
# Fracast-0's release configuration with a narrower, shallower core and a short context.
TINY_CONFIG: dict[str, Any] = {
    "model": {
        "d_model": 8, "W": 64, "level_widths": [64], "n_stages": 4, "dilation_base": 2, "kernel_size": 3,
        "ffn_mult": 1.5, "causal": True, "separable_conv": True, "share_stages": True, "scale_cond": "film",
        "scale_cond_dim": 8, "recency_encoding": True, "periodic_phase": True, "periodic_topk": 4,
        "periodic_harmonics": 1, "periodic_alpha": 0.05, "periodic_min_period": 2,
    },
    "pyramid": {"ratios": []},
}  # fmt: skip


def fracast_package_folder() -> str:
    """The weights folder inside the installed ``fracast`` package (found without importing it)."""
    spec = importlib.util.find_spec("fracast")
    if spec is None or spec.origin is None:
        raise WeightsError("fracast-0: the fracast package is not installed: pip install fracast")
    folder = Path(spec.origin).parent / "weights"
    if not (folder / "model.safetensors").is_file():
        raise WeightsError(f"fracast-0: the package's weights folder {folder} holds no model.safetensors")
    return str(folder)


def fracast_rows(series: TimeSeries, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, observed) of shape (V, width): each observed variable min-max normalised and right-aligned."""
    keep = np.flatnonzero(series.observed.any(axis=0))
    steps = series.values.shape[0]
    if steps > width:
        raise ExtractError(f"fracast-0: the window has {steps} steps, more than the model's {width}-step context")
    values = np.zeros((len(keep), width), np.float32)
    observed = np.zeros((len(keep), width), bool)
    for row, column in enumerate(keep):
        seen = series.observed[:, column]
        column_values = series.values[:, column].astype(np.float64)
        low = column_values[seen].min()
        span = max(column_values[seen].max() - low, 1e-5)
        values[row, width - steps :] = np.where(seen, (column_values - low) / span, 0.0)
        observed[row, width - steps :] = seen
    return values, observed


FRACAST_SPEC = EncoderSpec(
    "fracast-0",
    "timeseries",
    64,
    "observed-mean",
    reader="timeseries",
    default_weights="",
    version="1",
    description="Fracast-0 bundled in the fracast package (offline demo, real weights), shape embedding, 64-d",
)


class FracastEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, weights: str | None, device: str = "cpu", dtype: str = "auto"):
        super().__init__(spec, weights, device, "float32" if dtype == "auto" else dtype)
        if not self.weights:
            self.weights = fracast_package_folder()
        self.embed_dim = TINY_CONFIG["model"]["d_model"] if self.is_tiny else spec.embed_dim

    def tiny_recipe(self) -> dict[str, Any]:
        return {"config": TINY_CONFIG, "seed": TINY_SEED}

    def weights_identity(self) -> str:
        if self.is_tiny:
            return super().weights_identity()
        folder = Path(self.weights)
        return weights_identity(str(folder / "model.safetensors")) + "+" + weights_identity(str(folder / "config.json"))

    def build_model(self) -> Any:
        import torch

        if self.is_tiny:
            from fracast._core.model import FracastCore

            with seeded_init(TINY_SEED):
                core = FracastCore(TINY_CONFIG)
                for parameter in core.parameters():  # FiLM starts at zero: give every weight a random value
                    torch.nn.init.normal_(parameter, std=0.3)
            return core.to(self.device).eval()
        from fracast.inference import load_fracast

        try:
            core, _head = load_fracast(self.weights, weights="fp32", device=self.device)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"fracast-0: cannot load {self.weights} ({type(exc).__name__}: {exc})") from None
        if int(core.d) != self.embed_dim:
            raise WeightsError(f"fracast-0: {self.weights} has width {core.d}, expected {self.embed_dim}")
        return core.eval()

    def context_width(self) -> int:
        """The model's fixed context length (``W`` of its config: 2048 for Fracast-0)."""
        if self.is_tiny:
            return int(TINY_CONFIG["model"]["W"])
        try:
            return int(json.loads((Path(self.weights) / "config.json").read_text())["model"]["W"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"fracast-0: cannot read W from {self.weights}/config.json ({exc})") from None

    def prepare(self, series: TimeSeries) -> tuple[np.ndarray, np.ndarray]:
        return fracast_rows(series, self.context_width())

    def collate(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        import torch

        values = np.concatenate([s[0] for s in samples])
        observed = np.concatenate([s[1] for s in samples])
        owner = np.repeat(np.arange(len(samples)), [len(s[0]) for s in samples])
        return {
            "values": torch.from_numpy(values),
            "observed": torch.from_numpy(observed),
            "owner": torch.from_numpy(owner),
            "samples": torch.tensor(len(samples)),
        }

    def forward(self, batch: dict[str, Any]) -> Any:
        import torch

        values, observed = batch["values"].unsqueeze(1), batch["observed"].unsqueeze(1)
        hidden = self.model(values, observed, observed.float())  # (rows, W, D)
        mask = batch["observed"].unsqueeze(-1).float()
        per_variable = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        samples = int(batch["samples"])
        total = torch.zeros(samples, per_variable.shape[1], device=per_variable.device)
        total.index_add_(0, batch["owner"], per_variable)
        counts = torch.bincount(batch["owner"], minlength=samples).clamp(min=1).unsqueeze(1)
        return total / counts

    def preprocessing(self) -> dict[str, Any]:
        return {
            "normalisation": "min-max over observed steps, per variable",
            "context": f"right-aligned in {self.context_width()} steps",
            "pooling": "mean over observed steps, then over observed variables",
        }


@register_encoder(FRACAST_SPEC)
def build_fracast(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
    return FracastEncoder(FRACAST_SPEC, weights, device, dtype, **options)
