"""MOIRAI's encoder path in plain torch, with the parameter names of ``uni2ts``'s ``MoiraiModule``.

Re-derived from uni2ts (``model/moirai/module.py`` and ``module/``; Apache-2.0), for the representation only:

1. per (sample, variate) standardisation on the observed context (``PackedStdScaler``: mean, variance with
   Bessel's correction, scale = sqrt(var + 1e-5), computed in float64; padding tokens keep loc 0, scale 1);
2. ``in_proj``: one linear map per patch size (``MultiInSizeLinear``) on the standardised, zero-padded patch;
3. the transformer encoder: pre-norm layers of RMSNorm -> multi-head attention (no biases, RMSNorm on queries
   and keys per head, a learned per-head bias for same / different variate, rotary position on the first half of
   each head over the time id, packed-sample masking) -> RMSNorm -> SwiGLU feed-forward; a final RMSNorm.

The distribution head (``param_proj``) and the forecast wrapper are not needed for embeddings and are not built;
their checkpoint keys are recognised and skipped. ``tests/test_moirai.py`` checks the outputs against uni2ts's own
``MoiraiModule`` on a tiny random instance, and the key layout against a checkpoint it saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RMS_EPS = 1e-5
MIN_SCALE = 1e-5
ROPE_BASE = 10000.0
ROPE_FRACTION = 0.5  # uni2ts partial_factor (0.0, 0.5): rotary on the first half of each head


@dataclass(frozen=True)
class MoiraiConfig:
    """The ``config.json`` fields of a released MOIRAI checkpoint that shape the encoder."""

    d_model: int = 1024
    num_layers: int = 24
    patch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    max_seq_len: int = 512
    scaling: bool = True

    @property
    def num_heads(self) -> int:
        return self.d_model // 64

    @property
    def max_patch(self) -> int:
        return max(self.patch_sizes)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS) * self.weight


class MultiInSizeLinear(nn.Module):
    """One (out, max_in) weight per patch size; inputs beyond a token's patch size are ignored."""

    def __init__(self, in_sizes: tuple[int, ...], out_features: int):
        super().__init__()
        self.in_sizes = tuple(in_sizes)
        self.weight = nn.Parameter(torch.zeros(len(in_sizes), out_features, max(in_sizes)))
        self.bias = nn.Parameter(torch.zeros(len(in_sizes), out_features))
        columns = torch.arange(max(in_sizes))
        self.register_buffer("mask", (columns[None, :] < torch.tensor(in_sizes)[:, None]).float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """uni2ts's initialisation: PyTorch's Linear default over each patch size's own inputs, zeros beyond."""
        with torch.no_grad():
            for index, size in enumerate(self.in_sizes):
                self.weight[index].zero_()
                nn.init.kaiming_uniform_(self.weight[index, :, :size], a=math.sqrt(5))
                nn.init.uniform_(self.bias[index], -1 / math.sqrt(size), 1 / math.sqrt(size))

    def forward(self, x: torch.Tensor, patch_size: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], self.weight.shape[1])
        for index, size in enumerate(self.in_sizes):
            projected = F.linear(x, self.weight[index] * self.mask[index], self.bias[index])
            out = out + (patch_size == size).unsqueeze(-1) * projected
        return out


class BinaryAttentionBias(nn.Module):
    """A learned per-head bias for query/key pairs of the same variate (row 1) or of different ones (row 0)."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.emb = nn.Embedding(2, num_heads)

    def forward(self, variate_id: torch.Tensor) -> torch.Tensor:
        same = (variate_id.unsqueeze(-1) == variate_id.unsqueeze(-2)).unsqueeze(1)  # (B, 1, L, L)
        weight = self.emb.weight[:, :, None, None]  # (2, H, 1, 1)
        return torch.where(same, weight[1], weight[0])  # (B, H, L, L)


def rotary(x: torch.Tensor, time_id: torch.Tensor) -> torch.Tensor:
    """Rotary position on the first ``ROPE_FRACTION`` of the last axis, pairs (2k, 2k+1), angle t / base^(2k/w)."""
    width = int(x.shape[-1] * ROPE_FRACTION)
    rotated, rest = x[..., :width], x[..., width:]
    theta = 1.0 / torch.pow(ROPE_BASE, torch.arange(0, width, 2, dtype=torch.float32, device=x.device) / width)
    angle = time_id.to(torch.float32).unsqueeze(-1) * theta  # (B, L, width/2)
    angle = angle.repeat_interleave(2, dim=-1).unsqueeze(1)  # (B, 1, L, width)
    pairs = rotated.unflatten(-1, (width // 2, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    out = torch.cos(angle).to(x.dtype) * rotated + torch.sin(angle).to(x.dtype) * turned
    return torch.cat((out, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.var_attn_bias = BinaryAttentionBias(num_heads)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_id: torch.Tensor, variate_id: torch.Tensor
    ) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, L, Dh)

        query = rotary(self.q_norm(heads(self.q_proj(x))), time_id)
        key = rotary(self.k_norm(heads(self.k_proj(x))), time_id)
        value = heads(self.v_proj(x))
        bias = self.var_attn_bias(variate_id).to(query.dtype).masked_fill(~mask.unsqueeze(1), float("-inf"))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=1.0 / math.sqrt(self.head_dim))
        return self.out_proj(out.transpose(1, 2).flatten(-2))


class GatedFeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc_gate = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc_gate(x)) * self.fc1(x))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.ffn = GatedFeedForward(dim)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_id: torch.Tensor, variate_id: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), mask, time_id, variate_id)
        return x + self.ffn(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: MoiraiConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config.d_model, config.num_heads) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_id: torch.Tensor, variate_id: torch.Tensor
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask, time_id, variate_id)
        return self.norm(x)


def packed_std_scale(
    target: torch.Tensor, observed: torch.Tensor, sample_id: torch.Tensor, variate_id: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) per token, each of its (sample, variate) group's observed mean and Bessel-corrected std."""
    same_sample = sample_id.unsqueeze(-1) == sample_id.unsqueeze(-2)
    group = (same_sample & (variate_id.unsqueeze(-1) == variate_id.unsqueeze(-2))).double()
    observed = observed.double()
    target = target.double()
    count = group @ observed.sum(-1, keepdim=True)
    loc = group @ (target * observed).sum(-1, keepdim=True)
    loc = loc / torch.where(count == 0, 1.0, count)
    squares = group @ (((target - loc) ** 2) * observed).sum(-1, keepdim=True)
    denominator = count - 1.0
    var = squares / torch.where(denominator == 0, 1.0, denominator)
    scale = torch.sqrt(var + MIN_SCALE)
    padding = (sample_id == 0).unsqueeze(-1)
    loc = loc.masked_fill(padding, 0.0)
    scale = scale.masked_fill(padding, 1.0)
    return loc.float(), scale.float()


class MoiraiEncoder(nn.Module):
    """``mask_encoding`` + ``in_proj`` + ``encoder`` of MoiraiModule; ``forward`` gives the token outputs."""

    def __init__(self, config: MoiraiConfig):
        super().__init__()
        self.config = config
        self.mask_encoding = nn.Embedding(1, config.d_model)
        self.in_proj = MultiInSizeLinear(config.patch_sizes, config.d_model)
        self.encoder = Encoder(config)

    def forward(
        self,
        target: torch.Tensor,
        observed_mask: torch.Tensor,
        sample_id: torch.Tensor,
        time_id: torch.Tensor,
        variate_id: torch.Tensor,
        patch_size: torch.Tensor,
    ) -> torch.Tensor:
        """Inputs as uni2ts packs them (context only: no prediction tokens); returns (B, L, d_model)."""
        if self.config.scaling:
            loc, scale = packed_std_scale(target, observed_mask, sample_id, variate_id)
            target = (target - loc) / scale
        tokens = self.in_proj(target, patch_size)
        mask = sample_id.unsqueeze(-1) == sample_id.unsqueeze(-2)
        return self.encoder(tokens, mask, time_id, variate_id)
