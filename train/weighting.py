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


PINNED_SPREAD = 0.1  # w_large moving less than this over sim in [0.5, 1] does not adapt
ONE_PATH = 0.02  # w_large within this of 0 or 1 uses one path alone


def weighting_warnings(strategy: str, preset: TaskPreset) -> list[str]:
    """Settings under which an adaptive strategy cannot do what its name says (printed at run start, kept in the
    report). Table 2 and 3 stay verbatim; these say where their values are degenerate:

    - one path in effect: w_large within 0.02 of 1 (or 0) for every sim above some s <= 0.5 (Table 2's vital12
      gaussian sigma 0.1 and threshold t 0.15 from sim ~0.3; Table 3's t = 2.5 for every sim in (0, 1]);
    - pinned: w_large moves by less than 0.1 over sim in [0.5, 1], the range a trained contrastive loss gives
      (vital12's inverse tau = 0.07 keeps it between 0.83 and 0.92).
    """
    if strategy not in ("inverse", "gaussian", "threshold"):
        return []
    sims = torch.linspace(0.01, 1.0, 100, dtype=torch.float64)
    w_large = adaptive_weight(strategy, sims, preset)[0]
    name = f"weighting {strategy!r} with {_parameters(strategy, preset)}"
    if bool((w_large <= ONE_PATH).all()):
        return [
            f"{name}: sim lies in (0, 1], so w_large <= {float(w_large.max()):.3g} and the run is small-only in "
            "effect (Table 3's t = 2.5 does this; set --set preset.threshold=<t below 1> for an adaptive threshold)"
        ]
    for path, one in (("large-only", w_large >= 1 - ONE_PATH), ("small-only", w_large <= ONE_PATH)):
        tail = torch.flip(torch.cumprod(torch.flip(one, [0]).int(), 0), [0]).bool()  # one path from here to sim 1
        if bool(tail.any()) and float(sims[tail][0]) <= 0.5:
            return [
                f"{name}: {path} in effect once sim > {float(sims[tail][0]):.2f} (w_large "
                f"{float(w_large[tail][0]):.3f} there); the fusion follows one path for any trained model"
            ]
    upper = sims >= 0.5
    low, high = float(w_large[upper].min()), float(w_large[upper].max())
    if high - low < PINNED_SPREAD:
        return [
            f"{name}: w_large stays between {low:.2f} and {high:.2f} for any sim in [0.5, 1], so the weights "
            "barely adapt to the agreement of the two paths"
        ]
    return []


def _parameters(strategy: str, preset: TaskPreset) -> str:
    if strategy == "inverse":
        return f"tau={preset.inverse_temperature}, alpha={preset.inverse_alpha}"
    if strategy == "gaussian":
        return f"sigma={preset.gaussian_sigma}"
    return f"threshold t={preset.threshold}, slope={preset.threshold_slope}"


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
