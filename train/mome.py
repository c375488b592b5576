"""MoME: Mixture-of-Modality-Experts fusion of the cached large embeddings.

Per sample (never across the batch): each large modality is projected to a token of ``d_small // M``; the tokens
attend to each other (missing modalities masked as keys), add & norm; a dense softmax router weighs one expert
per non-empty modality subset (``2^M - 1`` experts, each a 2-layer MLP over the concatenated tokens of its
subset), experts whose subset holds a missing modality get a router logit of -inf; add & norm per token (a
LayerNorm over each modality's ``token_dim`` slot, missing slots re-zeroed after it, so a missing modality never
enters any normalisation statistics); a final linear to ``d_small`` when ``M * (d_small // M) != d_small``.

Missing modalities: their input rows are replaced by zeros *before* the projection and their tokens are zeroed
after attention, and every expert that would read them is routed to zero weight, so the output never depends on
what a missing row holds (NaN included). A sample with no large modality at all has no valid expert: its output
is defined as zeros, and :attr:`MoME.last_empty` flags it (the collaborative model then relies on the small path).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


def modality_subsets(n_modalities: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(n_modalities)``, smallest first (7 for M = 3)."""
    return [combo for size in range(1, n_modalities + 1) for combo in itertools.combinations(range(n_modalities), size)]


def check_heads(d_small: int, n_modalities: int, n_heads: int) -> int:
    """The token dimension ``d_small // M``; ValueError unless ``n_heads`` divides it (``mome_heads`` in configs)."""
    token_dim = d_small // n_modalities
    if token_dim < 1:
        raise ValueError(f"d_small={d_small} is smaller than the number of modalities ({n_modalities})")
    if n_heads < 1 or token_dim % n_heads:
        raise ValueError(
            f"mome_heads={n_heads} must be a positive divisor of the MoME token dimension d_small // M = "
            f"{d_small} // {n_modalities} = {token_dim}"
        )
    return token_dim


class MoME(nn.Module):
    """Fuse ``M`` large embeddings into one ``d_small`` vector per sample, with missing modalities masked.

    Args:
        input_dims: embedding dimension per large modality; the order fixes the columns of ``present``.
        d_small: output dimension (the small model's hidden dimension).
        n_heads: attention heads over the modality tokens (must divide ``d_small // M``).
        dropout: dropout in attention and experts.
    """

    def __init__(self, input_dims: dict[str, int], d_small: int, n_heads: int = 1, dropout: float = 0.1):
        super().__init__()
        if not input_dims:
            raise ValueError("MoME needs at least one large modality")
        self.modalities = list(input_dims)
        n_modalities = len(self.modalities)
        token_dim = check_heads(d_small, n_modalities, n_heads)
        self.d_small = d_small
        self.token_dim = token_dim
        flat_dim = n_modalities * token_dim
        self.projections = nn.ModuleDict({name: nn.Linear(dim, token_dim) for name, dim in input_dims.items()})
        self.attention = nn.MultiheadAttention(token_dim, n_heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(token_dim)
        self.subsets = modality_subsets(n_modalities)
        membership = torch.zeros(len(self.subsets), n_modalities, dtype=torch.bool)
        for index, subset in enumerate(self.subsets):
            membership[index, list(subset)] = True
        self.register_buffer("membership", membership, persistent=False)  # [E, M]
        self.router = nn.Linear(flat_dim, len(self.subsets))
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(len(subset) * token_dim, flat_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(flat_dim, flat_dim),
            )
            for subset in self.subsets
        )
        self.expert_norm = nn.LayerNorm(token_dim)  # per token: missing slots stay out of the statistics
        self.output = nn.Linear(flat_dim, d_small) if flat_dim != d_small else nn.Identity()
        self.last_empty: Tensor | None = None
        self.last_router_weights: Tensor | None = None
        # Attribution passes (never training) set this to keep the attention across modalities of the last batch:
        # ``last_attention`` [B, M query, M key], averaged over heads.
        self.record_attention = False
        self.last_attention: Tensor | None = None

    @property
    def n_experts(self) -> int:
        return len(self.subsets)

    def expert_mask(self, present: Tensor) -> Tensor:
        """[B, E] True where every modality of expert e is present for sample b."""
        return ~((~present).float() @ self.membership.T.float()).bool()

    def forward(self, feats: dict[str, Tensor], present: Tensor) -> Tensor:
        """Fuse ``feats[name]`` ([B, D_m] each) given ``present`` ([B, M] bool, columns in ``input_dims`` order)."""
        missing = [name for name in self.modalities if name not in feats]
        if missing:
            raise KeyError(f"MoME expects features for {self.modalities}; missing {missing}")
        present = present.bool()
        if present.dim() != 2 or present.shape[1] != len(self.modalities):
            raise ValueError(f"present must be [B, {len(self.modalities)}]; got {tuple(present.shape)}")
        tokens = []
        for m, name in enumerate(self.modalities):
            row_present = present[:, m : m + 1]
            clean = torch.where(row_present, feats[name], torch.zeros_like(feats[name]))  # never read a missing row
            tokens.append(self.projections[name](clean) * row_present)
        tokens = torch.stack(tokens, dim=1)  # [B, M, token_dim]

        empty = ~present.any(dim=1)  # [B]
        # An all-masked row would give NaN attention; let empty samples attend to their zero tokens instead.
        key_padding = ~present & ~empty[:, None]
        attended, attention = self.attention(
            tokens, tokens, tokens, key_padding_mask=key_padding, need_weights=self.record_attention
        )
        self.last_attention = attention.detach() if attention is not None else None
        tokens = self.attention_norm(tokens + attended) * present[..., None]
        flat = tokens.flatten(1)  # [B, M * token_dim]

        valid = self.expert_mask(present)  # [B, E]
        logits = self.router(flat).masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits.masked_fill(empty[:, None], 0.0), dim=-1) * ~empty[:, None]
        mixed = torch.zeros_like(flat)
        for index, (subset, expert) in enumerate(zip(self.subsets, self.experts)):
            mixed = mixed + weights[:, index : index + 1] * expert(tokens[:, list(subset)].flatten(1))
        mixed_tokens = (tokens + mixed.view_as(tokens)) * present[..., None]
        normed = self.expert_norm(mixed_tokens) * present[..., None]  # re-zero the missing slots
        fused = self.output(normed.flatten(1))
        self.last_empty = empty
        self.last_router_weights = weights.detach()
        return fused * ~empty[:, None]
