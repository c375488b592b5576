"""Per-sample losses of the collaborative model: InfoNCE between the two paths, and the binary task loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Logit of an excluded pair: finite (unlike -inf) so that no row's logsumexp, or its gradient, becomes NaN.
EXCLUDED_LOGIT = -1e9


def contrastive_loss(
    large_proj: Tensor,
    small_proj: Tensor,
    temperature: float = 0.07,
    symmetric: bool = False,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """InfoNCE over the batch, per sample, plus each sample's similarity score.

    Logits are cosine similarities of the L2-normalised projections divided by ``temperature``. Row i is the
    large projection of sample i; its positive is the small projection of the same sample, its negatives the
    small projections of the other samples in the batch. By default the loss is one-way, large -> small,
    ``loss_i = -log(exp(pos_i) / sum_j exp(logit_ij))`` (the authors' public code; Table 2's lambda was tuned
    for it). ``symmetric=True`` averages it with the small -> large direction, as CLIP's loss (an opt-in).

    ``sim_i = exp(pos_i) / (exp(pos_i) + mean_{j != i} exp(neg_ij))`` over the large -> small row, computed as
    ``sigmoid(pos_i - logmeanexp_{j != i} neg_ij)`` so it never overflows; it lies in (0, 1] and is 1 for a batch
    of one. The mean is over the B - 1 true negatives, as DESIGN.md states; the authors' code divides the sum of
    the off-diagonal terms (the diagonal zeroed) by B instead, which scales the negative term by (B - 1) / B.

    Args:
        large_proj: [B, d] projection of the large path.
        small_proj: [B, d] projection of the small path.
        temperature: logit temperature (0.07 in the paper).
        symmetric: also add the small -> large direction (mean of the two).
        valid: optional [B] bool; rows outside it take no part (neither as positives nor as negatives): their
            loss is 0 and their sim 1. The same numbers as calling on ``valid`` rows alone, without a host sync.

    Returns:
        ``(sim, loss)``, both [B].
    """
    if large_proj.shape != small_proj.shape or large_proj.dim() != 2:
        raise ValueError(
            f"projections must both be [B, d]; got {tuple(large_proj.shape)} and {tuple(small_proj.shape)}"
        )
    batch = large_proj.shape[0]
    logits = F.normalize(large_proj, dim=-1) @ F.normalize(small_proj, dim=-1).T / temperature  # [B, B]
    if valid is not None:
        valid = valid.to(device=logits.device, dtype=torch.bool)
        logits = logits.masked_fill(~(valid[:, None] & valid[None, :]), EXCLUDED_LOGIT)
    target = torch.arange(batch, device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="none")
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target, reduction="none"))
    positive = logits.diagonal()
    if batch == 1:
        return torch.ones_like(positive), loss * (1 if valid is None else valid)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=logits.device)
    negatives = logits.masked_fill(~off_diagonal, EXCLUDED_LOGIT)
    if valid is None:
        log_count = math.log(batch - 1)
    else:
        log_count = torch.log((valid.sum() - 1).clamp(min=1).to(logits.dtype))
    # A row without any valid negative has logsumexp ~ -1e9: its sim is exactly 1, as for a batch of one.
    sim = torch.sigmoid(positive - (torch.logsumexp(negatives, dim=1) - log_count))
    if valid is not None:
        sim = torch.where(valid, sim, torch.ones_like(sim))
        loss = loss * valid
    return sim, loss


def task_loss(logits: Tensor, target: Tensor, pos_weight: float | None = None, focal_gamma: float = 0.0) -> Tensor:
    """Binary cross-entropy with logits per sample; ``pos_weight`` up-weights positives (class imbalance).

    ``focal_gamma`` > 0 makes it the focal loss (Lin et al. 2017): each sample's BCE (with ``pos_weight``, which
    plays the focal loss's alpha) times ``(1 - p_t) ** gamma``, so confidently right samples count less and the
    rare class's hard cases more. 0 is plain BCE, computed exactly as before.
    """
    weight = None if pos_weight is None else logits.new_tensor(float(pos_weight))
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    if not focal_gamma:
        return bce
    prob = torch.sigmoid(logits)
    p_t = torch.where(target > 0.5, prob, 1.0 - prob)
    return (1.0 - p_t).clamp(min=0.0) ** focal_gamma * bce
