"""The collaborative model: MoME over the large embeddings, the frozen small model's features, one shared head,
contrastive projections and decision fusion, with the loss of Listing 1 of the supplement.

Listing 1, as implemented by :meth:`CollaborativeModel.loss`:

- ``learnable``: weights from the softmax of ``fusion_weights`` first, task loss on the fused logits, then the
  contrastive loss;
- every other strategy: the contrastive loss first, weights from ``sim.mean()`` (NOT detached, as the listing
  writes it: the task loss also trains the projections through the weights), then the task loss;
- total = ``task_loss.mean() + lambda * contrastive_loss.mean()``.

The contrastive loss is the authors' one-way large -> small InfoNCE (``contrastive_symmetric=True`` opts into
the CLIP-style symmetric form).

Where the listing is silent, samples with no large modality at all (MoME output defined as zeros):

- their fused logit is their small logit, since their large logit carries no information;
- they are left out of the contrastive loss and of ``sim`` (their all-zero large projections would act as
  identical positives and negatives and shift ``sim.mean()``). The contrastive loss and ``sim`` are computed over
  the rows with at least one large modality when there are at least two such rows. With fewer, the contrastive
  term is 0 and ``sim.mean()`` is 1, the value :func:`contrastive_loss` gives a lone pair (no negative to
  disagree with); the weights then only touch that single row, or no row at all. The task loss is always over
  every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .losses import contrastive_loss, task_loss
from .mome import MoME
from .presets import TaskPreset
from .weighting import WEIGHTINGS, adaptive_weight, learnable_weight


class Standardise(nn.Module):
    """Per-dimension ``(x - mean) / std`` of each large embedding, with statistics of the training split.

    The statistics are buffers: part of the model's state, so its checkpoint carries them and a model loaded
    elsewhere standardises new patients exactly as it was trained. Until :meth:`fit` they are the identity.
    """

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.names = list(dims)
        for name, dim in dims.items():
            self.register_buffer(f"mean_{self._key(name)}", torch.zeros(dim))
            self.register_buffer(f"std_{self._key(name)}", torch.ones(dim))

    @staticmethod
    def _key(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name)

    @torch.no_grad()
    def fit(self, large: dict[str, Tensor], present: Tensor, rows: Tensor) -> None:
        """Mean and std (float64, then float32) over ``rows`` where the modality is present; a constant dimension
        keeps std 1."""
        for m, name in enumerate(self.names):
            chosen = rows[present[rows, m]]
            if len(chosen) < 2:
                continue
            values = large[name].index_select(0, chosen).double()
            mean, std = values.mean(0), values.std(0, unbiased=False)
            std = torch.where(std > 1e-6 * std.max().clamp(min=1e-12), std, torch.ones_like(std))
            getattr(self, f"mean_{self._key(name)}").copy_(mean.float())
            getattr(self, f"std_{self._key(name)}").copy_(std.float())

    def forward(self, large: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            name: (value - getattr(self, f"mean_{self._key(name)}")) / getattr(self, f"std_{self._key(name)}")
            if name in self.names
            else value
            for name, value in large.items()
        }


@dataclass
class CollabOutput:
    """One forward pass: logits of both paths through the shared head, their projections, the fused large feature.

    ``large_available`` is False for samples whose large modalities are all missing.
    """

    large_logits: Tensor  # [B]
    small_logits: Tensor  # [B]
    large_proj: Tensor  # [B, d]
    small_proj: Tensor  # [B, d]
    large_feat: Tensor  # [B, small_dim]
    large_available: Tensor | None = None  # [B] bool


class CollaborativeModel(nn.Module):
    """Large-small collaboration for one binary task.

    Args:
        large_dims: cached embedding dimension per large modality (order = columns of ``present``).
        small_dim: the small model's feature dimension (``hidden_dim``); MoME outputs the same width.
        preset: the task's hyperparameters (lambda, d and the weighting parameters).
        weighting: one of :data:`~adacomed.train.weighting.WEIGHTINGS`.
        small_head: the trained small model's head; the shared head starts as a copy of it.
        mome_heads: attention heads of MoME (must divide ``small_dim // M``).
        contrastive_symmetric: symmetric (CLIP-style) InfoNCE instead of the one-way large -> small default.
        standardise_large: standardise each large embedding per dimension (statistics set by
            ``model.standardise.fit`` on the training split) before MoME.
    """

    def __init__(
        self,
        large_dims: dict[str, int],
        small_dim: int,
        preset: TaskPreset,
        weighting: str,
        small_head: nn.Linear | None = None,
        mome_heads: int = 1,
        contrastive_symmetric: bool = False,
        standardise_large: bool = False,
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {weighting!r} is not one of {list(WEIGHTINGS)}")
        self.preset = preset
        self.weighting = weighting
        self.contrastive_symmetric = contrastive_symmetric
        self.standardise = Standardise(large_dims) if standardise_large else None
        self.mome = MoME(large_dims, small_dim, n_heads=mome_heads)
        self.large_proj = nn.Linear(small_dim, preset.proj_dim)
        self.small_proj = nn.Linear(small_dim, preset.proj_dim)
        self.head = nn.Linear(small_dim, 1)
        if small_head is not None:
            if tuple(small_head.weight.shape) != (1, small_dim):
                raise ValueError(
                    f"small_head maps {small_head.in_features} -> {small_head.out_features}; need {small_dim} -> 1"
                )
            with torch.no_grad():
                self.head.weight.copy_(small_head.weight)
                self.head.bias.copy_(small_head.bias)
        self.fusion_weights = nn.Parameter(torch.zeros(2))

    def forward(self, large: dict[str, Tensor], present: Tensor, small_feat: Tensor) -> CollabOutput:
        if self.standardise is not None:
            large = self.standardise(large)
        large_feat = self.mome(large, present)
        return CollabOutput(
            large_logits=self.head(large_feat).squeeze(-1),
            small_logits=self.head(small_feat).squeeze(-1),
            large_proj=self.large_proj(large_feat),
            small_proj=self.small_proj(small_feat),
            large_feat=large_feat,
            large_available=present.bool().any(dim=1),
        )

    def weights(self, sim_mean: Tensor) -> tuple[Tensor, Tensor]:
        """(w_large, w_small): softmax of ``fusion_weights`` for ``learnable``, else Listing 2 from ``sim_mean``."""
        if self.weighting == "learnable":
            return learnable_weight(self.fusion_weights)
        return adaptive_weight(self.weighting, sim_mean, self.preset)

    def fuse(self, out: CollabOutput, w_large: Tensor, w_small: Tensor) -> Tensor:
        """Decision fusion ``w_L * large_logits + w_S * small_logits`` (small logit alone without large inputs)."""
        fused = w_large * out.large_logits + w_small * out.small_logits
        if out.large_available is not None:
            fused = torch.where(out.large_available, fused, out.small_logits)
        return fused

    def contrastive(self, out: CollabOutput) -> tuple[Tensor, Tensor]:
        """``(sim.mean(), contrastive_loss.mean())`` over the rows with a large modality (see the module doc)."""
        valid = out.large_available
        sim, per_sample = contrastive_loss(
            out.large_proj, out.small_proj, symmetric=self.contrastive_symmetric, valid=valid
        )
        if valid is None:
            return sim.mean(), per_sample.mean()
        # Masked means instead of boolean indexing: no host sync per step.
        count = valid.sum()
        enough = count >= 2
        denominator = count.clamp(min=1).to(sim.dtype)
        sim_mean = torch.where(enough, (sim * valid).sum() / denominator, torch.ones_like(denominator))
        contrastive = torch.where(enough, (per_sample * valid).sum() / denominator, torch.zeros_like(denominator))
        return sim_mean, contrastive

    def loss(
        self, out: CollabOutput, target: Tensor, pos_weight: float | None = None, focal_gamma: float = 0.0
    ) -> dict[str, Tensor]:
        """Listing 1: named losses, the weights and the fused logits of one batch (``focal_gamma`` > 0: the task
        loss is the focal loss, an option beyond the paper)."""
        if self.weighting == "learnable":
            w_large, w_small = self.weights(out.large_logits.new_zeros(()))
            logits = self.fuse(out, w_large, w_small)
            per_sample_task = task_loss(logits, target, pos_weight, focal_gamma)
            sim_mean, contrastive = self.contrastive(out)
        else:
            sim_mean, contrastive = self.contrastive(out)
            w_large, w_small = self.weights(sim_mean)
            logits = self.fuse(out, w_large, w_small)
            per_sample_task = task_loss(logits, target, pos_weight, focal_gamma)
        task = per_sample_task.mean()
        return {
            "loss": task + self.preset.contrastive_weight * contrastive,
            "task_loss": task,
            "contrastive_loss": contrastive,
            "sim_mean": sim_mean,
            "w_large": w_large,
            "w_small": w_small,
            "logits": logits,
        }
