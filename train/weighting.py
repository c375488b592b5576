"""Decision-fusion weights (Listing 2 of the supplement) and the fixed ablation strategies.

Each function maps the batch similarity between the large and the small path to ``(large_weight,
small_weight)``. The formulas are Listing 2's, line for line; nothing is detached here (Listing 1 does not detach
``sim.mean()``, so gradients of the task loss reach the projections through the weights).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .presets import TaskPreset

WEIGHTINGS: tuple[str, ...] = ("learnable", "inverse", "gaussian", "threshold", "ensemble", "small-only", "large-only")


def learnable_weight(fusion_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over the two fusion parameters, so the weights sum to 1."""
    weights = torch.softmax(fusion_weights, dim=0)
    return weights[0], weights[1]


def inverse_weight(sim: Tensor, temperature: float = 1.0, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Inverse contrastive weighting: low similarity shifts weight to the small path."""
    scaled_loss = sim / temperature
    inverse_loss = 1.0 / (alpha * scaled_loss + 1e-6)
    large_weight = torch.sigmoid(sim)
    small_weight = inverse_loss / (inverse_loss + 1)
    total_weight = large_weight + small_weight
    return large_weight / total_weight, small_weight / total_weight


def gaussian_weight(sim: Tensor, sigma: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gaussian contrastive weighting: the small path's weight decays as a Gaussian of the similarity."""
    small_weight = torch.exp(-(sim**2) / (2 * sigma**2))
    large_weight = 1 - small_weight
    return large_weight, small_weight


def threshold_weight(sim: Tensor, threshold: float = 0.5, slope: float = 10.0) -> tuple[Tensor, Tensor]:
    """Threshold contrastive weighting: a tanh step around ``threshold`` moves weight to the large path."""
    x = sim - threshold
    large_weight = 0.5 + 0.5 * torch.tanh(slope * x)
    small_weight = 1 - large_weight
    return large_weight, small_weight


def weighting_warnings(strategy: str, preset: TaskPreset) -> list[str]:
    """Settings under which a strategy cannot do what its name says (printed and warned at run start)."""
    messages = []
    if strategy == "threshold" and preset.threshold >= 1.0:
        large = 0.5 + 0.5 * float(torch.tanh(torch.tensor(preset.threshold_slope * (1.0 - preset.threshold))))
        messages.append(
            f"weighting 'threshold' with threshold t={preset.threshold} >= 1: sim lies in (0, 1], so w_large <= "
            f"{large:.3g} and the run is small-only in effect (Table 3's t = 2.5 does this; set "
            "--set preset.threshold=<t below 1> for an adaptive threshold)"
        )
    return messages


def adaptive_weight(strategy: str, sim_mean: Tensor, preset: TaskPreset) -> tuple[Tensor, Tensor]:
    """Weights of a non-learnable strategy from the batch's mean similarity, with the task preset's parameters.

    ``ensemble`` is the fixed 0.5/0.5 ablation, ``small-only``/``large-only`` use one path alone.
    """
    if strategy == "inverse":
        return inverse_weight(sim_mean, preset.inverse_temperature, preset.inverse_alpha)
    if strategy == "gaussian":
        return gaussian_weight(sim_mean, preset.gaussian_sigma)
    if strategy == "threshold":
        return threshold_weight(sim_mean, preset.threshold, preset.threshold_slope)
    fixed = {"ensemble": (0.5, 0.5), "small-only": (0.0, 1.0), "large-only": (1.0, 0.0)}
    if strategy in fixed:
        large, small = fixed[strategy]
        return sim_mean.new_tensor(large), sim_mean.new_tensor(small)
    if strategy == "learnable":
        raise ValueError("'learnable' weights come from the model's fusion parameters: use learnable_weight")
    raise ValueError(f"weighting {strategy!r} is not one of {list(WEIGHTINGS)}")
