"""Per-sample losses of the collaborative model: InfoNCE between the two paths, and the binary task loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_loss(large_proj: Tensor, small_proj: Tensor, temperature: float = 0.07) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE over the batch, per sample, plus each sample's similarity score.

    Logits are cosine similarities of the L2-normalised projections divided by ``temperature``; sample i's
    positive is the diagonal pair (large_i, small_i), its negatives the other samples' small projections (and,
    for the second direction, the other samples' large projections). ``loss_i`` is the mean of the two
    directions' cross-entropies, as CLIP's loss.

    ``sim_i = exp(pos_i) / (exp(pos_i) + mean_{j != i} exp(neg_ij))`` over the large-to-small row, computed as
    ``sigmoid(pos_i - logmeanexp_j neg_ij)`` so it never overflows; it lies in (0, 1] and is 1 for a batch of one.

    Args:
        large_proj: [B, d] projection of the large path.
        small_proj: [B, d] projection of the small path.
        temperature: logit temperature (0.07 in the paper).

    Returns:
        ``(sim, loss)``, both [B].
    """
    if large_proj.shape != small_proj.shape or large_proj.dim() != 2:
        raise ValueError(
            f"projections must both be [B, d]; got {tuple(large_proj.shape)} and {tuple(small_proj.shape)}"
        )
    batch = large_proj.shape[0]
    logits = F.normalize(large_proj, dim=-1) @ F.normalize(small_proj, dim=-1).T / temperature  # [B, B]
    target = torch.arange(batch, device=logits.device)
    loss = 0.5 * (
        F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")
    )
    positive = logits.diagonal()
    if batch == 1:
        return torch.ones_like(positive), loss
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=logits.device)
    negatives = logits.masked_fill(~off_diagonal, float("-inf"))
    log_mean_negative = torch.logsumexp(negatives, dim=1) - math.log(batch - 1)
    sim = torch.sigmoid(positive - log_mean_negative)
    return sim, loss


def task_loss(logits: Tensor, target: Tensor, pos_weight: float | None = None) -> Tensor:
    """Binary cross-entropy with logits per sample; ``pos_weight`` up-weights positives (class imbalance)."""
    weight = None if pos_weight is None else logits.new_tensor(float(pos_weight))
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight, reduction="none")
