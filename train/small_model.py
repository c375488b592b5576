"""The task-driven small model: one light encoder per declared input, late fusion, a binary head.

Batch contract (what :func:`adacomed.train.prepare.PreparedInputs.batch` yields), per input ``<name>``:

- ``image``: ``<name>.image`` uint8 [B, 256, 256], ``<name>.present`` bool [B]. The encoder crops 224 x 224
  (random offset per sample in training, centred in eval), scales to [0, 1] and normalises with mean 0.5 and
  std 0.25 (a grey-scale X-ray has no ImageNet colour statistics; 0.5/0.25 maps [0, 1] to [-2, 2]).
- ``text``: ``<name>.tokens`` int [B, L] (0 = padding), ``<name>.mask`` bool [B, L], ``<name>.present``.
- ``timeseries``: ``<name>.values`` float [B, T, F] (standardised, 0 where not observed), ``<name>.mask`` bool
  [B, T, F], ``<name>.present``.
- ``tabular``: ``<name>.categorical`` int [B, C] and ``<name>.ordinal`` int [B, O] (1 + the category's or level's
  index, 0 = missing or unseen in training), ``<name>.numerical`` float [B, K] (standardised, NaN = missing),
  ``<name>.present``.
- ``vector``: ``<name>.values`` float [B, D], ``<name>.present``.

Every encoder returns ``([B, width] features, [B] present)`` with zero features for a sample whose input is
missing (``.present`` absent from the batch means all present); the fusion MLP sees the features and the flags,
so "missing" is explicit, never an imputed value the model cannot tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

SMALL_MODEL_KINDS: tuple[str, ...] = ("image", "text", "timeseries", "tabular", "vector")
IMAGE_SIZE = 256
CROP_SIZE = 224
IMAGE_MEAN = 0.5
IMAGE_STD = 0.25


@dataclass
class SmallInputSpec:
    """Shape facts of one input group; which fields matter depends on ``kind`` (one of SMALL_MODEL_KINDS)."""

    kind: str
    dim: int = 0  # vector: feature dimension
    vocab_size: int = 0  # text: tokenizer vocabulary size
    n_categories: list[int] | None = None  # tabular: codes per categorical field, 0 (missing) included
    n_levels: list[int] | None = None  # tabular: codes per ordinal field, 0 (missing) included
    n_numerical: int = 0  # tabular: numerical fields
    n_variables: int = 0  # timeseries: variables per time step


@dataclass
class SmallModelConfig:
    """The small model's inputs (in fusion order) and widths."""

    inputs: dict[str, SmallInputSpec] = field(default_factory=dict)
    hidden_dim: int = 256
    dropout: float = 0.1


def _present(batch: dict[str, Tensor], name: str, reference: Tensor) -> Tensor:
    flag = batch.get(f"{name}.present")
    if flag is None:
        return torch.ones(reference.shape[0], dtype=torch.bool, device=reference.device)
    return flag.to(device=reference.device).bool()


class ImageEncoder(nn.Module):
    """Crop + normalise a uint8 image on the fly, then four strided conv blocks and global average pooling."""

    width = 256

    def __init__(self, dropout: float):
        super().__init__()
        channels = [1, 32, 64, 128, self.width]
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(8, c_out),  # per-sample normalisation: no batch statistics, no cross-sample coupling
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))

    def crop(self, images: Tensor) -> Tensor:
        """[B, H, W] uint8 -> [B, 1, 224, 224] float: random crop in training, centre crop in eval."""
        batch, height, width = images.shape
        if height < CROP_SIZE or width < CROP_SIZE:
            raise ValueError(f"images are {height}x{width}; need at least {CROP_SIZE}x{CROP_SIZE}")
        if self.training:
            top = torch.randint(0, height - CROP_SIZE + 1, (batch,), device=images.device)
            left = torch.randint(0, width - CROP_SIZE + 1, (batch,), device=images.device)
        else:
            top = torch.full((batch,), (height - CROP_SIZE) // 2, device=images.device)
            left = torch.full((batch,), (width - CROP_SIZE) // 2, device=images.device)
        offsets = torch.arange(CROP_SIZE, device=images.device)
        rows = (top[:, None] + offsets)[:, :, None]  # [B, 224, 1]
        cols = (left[:, None] + offsets)[:, None, :]  # [B, 1, 224]
        cropped = images[torch.arange(batch, device=images.device)[:, None, None], rows, cols]
        return ((cropped.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD)[:, None]

    def forward(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        images = batch[f"{name}.image"]
        present = _present(batch, name, images)
        return self.body(self.crop(images)) * present[:, None], present


class TextEncoder(nn.Module):
    """Token embeddings, masked mean over the note, then an MLP."""

    width = 128

    def __init__(self, vocab_size: int, dropout: float):
        super().__init__()
        if vocab_size < 2:
            raise ValueError("a text input needs vocab_size >= 2 (padding id 0 plus tokens)")
        self.embedding = nn.Embedding(vocab_size, self.width, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Dropout(dropout))

    def forward(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        tokens = batch[f"{name}.tokens"].long()
        mask = batch[f"{name}.mask"].bool()
        present = _present(batch, name, tokens) & mask.any(dim=1)
        embedded = self.embedding(tokens) * mask[..., None]
        pooled = embedded.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.mlp(pooled) * present[:, None], present


class TimeSeriesEncoder(nn.Module):
    """Values (0 where unobserved) and their observation mask side by side -> GRU over time -> last hidden state."""

    width = 128

    def __init__(self, n_variables: int, dropout: float):
        super().__init__()
        if n_variables < 1:
            raise ValueError("a timeseries input needs n_variables >= 1")
        self.gru = nn.GRU(2 * n_variables, self.width, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        values = batch[f"{name}.values"].float()
        mask = batch[f"{name}.mask"].bool()
        present = _present(batch, name, values)
        values = torch.where(mask, torch.nan_to_num(values), torch.zeros_like(values))
        _, hidden = self.gru(torch.cat([values, mask.float()], dim=-1))
        return self.dropout(hidden[-1]) * present[:, None], present


class TabularEncoder(nn.Module):
    """One embedding table per categorical and per ordinal field (index 0 = missing: its own learned vector);
    standardised numbers with an observed flag each; all concatenated into an MLP.

    Ordinal fields are embedded per level rather than as one scalar rank: outcome rates are often not monotone in
    the code (MMIST's pT code 2 has 1.4 % deaths, code 1 6 %, code 11 62 %, missing 32 %), and a rank would
    also fold "missing" into a value.
    """

    embed_dim = 16
    width = 128

    def __init__(self, spec: SmallInputSpec, dropout: float):
        super().__init__()
        self.n_categories = list(spec.n_categories or [])
        self.n_levels = list(spec.n_levels or [])
        self.n_numerical = spec.n_numerical
        if not (self.n_categories or self.n_levels or self.n_numerical):
            raise ValueError("a tabular input needs at least one categorical, ordinal or numerical field")
        self.embeddings = nn.ModuleList(nn.Embedding(max(n, 2), self.embed_dim) for n in self.n_categories)
        self.level_embeddings = nn.ModuleList(nn.Embedding(max(n, 2), self.embed_dim) for n in self.n_levels)
        in_dim = (len(self.n_categories) + len(self.n_levels)) * self.embed_dim + 2 * self.n_numerical
        self.mlp = nn.Sequential(nn.Linear(in_dim, self.width), nn.GELU(), nn.Dropout(dropout))

    def forward(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        parts: list[Tensor] = []
        reference: Tensor | None = None
        for key, tables in (("categorical", self.embeddings), ("ordinal", self.level_embeddings)):
            if len(tables):
                codes = batch[f"{name}.{key}"].long()
                reference = codes
                parts += [table(codes[:, i]) for i, table in enumerate(tables)]
        if self.n_numerical:
            values = batch[f"{name}.numerical"].float()
            reference = values
            observed = torch.isfinite(values)
            parts += [torch.where(observed, values, torch.zeros_like(values)), observed.float()]
        assert reference is not None
        present = _present(batch, name, reference)
        return self.mlp(torch.cat(parts, dim=-1)) * present[:, None], present


class VectorEncoder(nn.Module):
    """A precomputed feature vector (e.g. MMIST CT 512 / WSI 1024): LayerNorm + MLP, zero when missing."""

    width = 128

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        if dim < 1:
            raise ValueError("a vector input needs dim >= 1")
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 2 * self.width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * self.width, self.width),
        )

    def forward(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        values = batch[f"{name}.values"].float()
        present = _present(batch, name, values)
        clean = torch.where(present[:, None] & torch.isfinite(values), values, torch.zeros_like(values))
        return self.mlp(clean) * present[:, None], present


def build_encoder(spec: SmallInputSpec, dropout: float) -> nn.Module:
    """The encoder of one input kind."""
    if spec.kind == "image":
        return ImageEncoder(dropout)
    if spec.kind == "text":
        return TextEncoder(spec.vocab_size, dropout)
    if spec.kind == "timeseries":
        return TimeSeriesEncoder(spec.n_variables, dropout)
    if spec.kind == "tabular":
        return TabularEncoder(spec, dropout)
    if spec.kind == "vector":
        return VectorEncoder(spec.dim, dropout)
    raise ValueError(f"small input kind {spec.kind!r} is not one of {list(SMALL_MODEL_KINDS)}")


class SmallModel(nn.Module):
    """Per-input encoders -> concatenated features and present flags -> MLP to ``hidden_dim`` -> ``head``."""

    def __init__(self, config: SmallModelConfig):
        super().__init__()
        if not config.inputs:
            raise ValueError("the small model needs at least one input")
        self.config = config
        self.encoders = nn.ModuleDict(
            {name: build_encoder(spec, config.dropout) for name, spec in config.inputs.items()}
        )
        fused_dim = sum(encoder.width for encoder in self.encoders.values()) + len(self.encoders)
        self.fusion = nn.Sequential(
            nn.Linear(fused_dim, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.GELU(),
        )
        self.head = nn.Linear(config.hidden_dim, 1)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, hidden_dim]: the representation the collaborative model caches and reuses."""
        parts, flags = [], []
        for name, encoder in self.encoders.items():
            feature, present = encoder(batch, name)
            parts.append(feature)
            flags.append(present.float())
        return self.fusion(torch.cat([*parts, torch.stack(flags, dim=1)], dim=1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits [B]."""
        return self.head(self.features(batch)).squeeze(-1)


class SmallEnsemble(nn.Module):
    """``small_ensemble`` small models trained with different seeds, seen as one wider small model.

    ``features`` concatenates the members' features; ``head`` is one linear layer over them initialised to the
    members' heads divided by their count, so its logit is the mean of the members' logits. The collaborative
    model's shared head starts from it like from any small model's head. With one member this is that member.
    """

    def __init__(self, members: list[SmallModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one small model")
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        width = sum(m.config.hidden_dim for m in members)
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([m.head.weight for m in members], dim=1) / len(members))
            self.head.bias.copy_(torch.stack([m.head.bias for m in members]).mean(0))

    @property
    def feature_dim(self) -> int:
        return int(self.head.in_features)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([member.features(batch) for member in self.members], dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.features(batch)).squeeze(-1)
