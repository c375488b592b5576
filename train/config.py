"""The one configuration of a stage-two run: a plain frozen dataclass, overridable from a file and ``--set``.

Precedence (last wins): dataclass defaults < ``--config`` file (TOML or YAML) < ``--set key=value`` < explicit
command-line flags. The task preset (Table 2 of the supplement, via ``preset_for(task)``) is overridden through
the ``preset`` table: ``--set preset.contrastive_weight=0.3``, or the flat name ``--set contrastive_weight=0.3``
(any :class:`TaskPreset` field that is not a :class:`TrainConfig` field). Values are typed by the field.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

# Fields that change the trained model's shape or meaning: a resumed run refuses when any of these differ.
ARCHITECTURE_FIELDS = (
    "task",
    "weighting",
    "modalities",
    "small_hidden_dim",
    "small_dropout",
    "small_ensemble",
    "small_checkpoint",
    "mome_heads",
    "standardise_large",
)
# Fields that change the optimisation (the loss, the schedule, the batch order): a resumed run refuses these too,
# since continuing under other values is not the run that was started. The split itself is checked by its hash.
OPTIMISATION_FIELDS = (
    "seed",
    "batch_size",
    "epochs",
    "schedule",
    "lr",
    "min_lr",
    "weight_decay",
    "grad_clip",
    "pos_weight",
    "contrastive_symmetric",
    "selection",
    "small_epochs",
    "small_patience",
    "small_lr",
    "small_batch_size",
    "small_optimizer",
    "small_weight_decay",
    "small_selection",
)
# What decides the small model (stage a): two runs that agree on these (and on data, split and seed) train the same
# small model, so a sweep over co-training settings can share it (``--small-checkpoint``).
SMALL_MODEL_FIELDS = (
    "task",
    "seed",
    "val_fraction",
    "pos_weight",
    "tokenizer",
    "small_hidden_dim",
    "small_dropout",
    "small_ensemble",
    "small_epochs",
    "small_patience",
    "small_lr",
    "small_batch_size",
    "small_optimizer",
    "small_weight_decay",
    "small_selection",
)
# Optimisation fields added after checkpoints of earlier versions were written: compared on --resume and part of
# the small model's identity only when set away from their default, so those checkpoints still resume.
OPTIONAL_FIELDS = {"loss": "bce"}
SELECTIONS = ("val_loss", "val_auroc")
LOSSES = ("bce", "focal")
OPTIMIZERS = ("adam", "adamw")


class ConfigError(ValueError):
    """A config file or override names an unknown field or a value of the wrong type."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a stage-two run depends on.

    Co-training defaults follow the paper (Adam, lr 1e-4, batch 128, 100 epochs, cosine schedule,
    best-validation checkpoint). The default weighting is ``inverse``: the adaptive strategy the paper reports
    best on most tasks; ``learnable`` is the baseline. Beyond the paper, each chosen by measurement on the MMIST
    ccRCC release and checked on the demo and a from-table cohort (README, "Stage two"): the small model's own
    schedule (``small_*``: AdamW with weight decay, long patience, epoch chosen on validation loss), the
    validation-loss choice of the co-training epoch (``selection``), per-dimension standardisation of the large
    embeddings (``standardise_large``), the validation carve, ``pos_weight`` and bf16 autocast on CUDA.
    """

    task: str = ""
    manifest: str = ""
    cache: str = ""
    out: str = ""
    # Which large embeddings feed MoME: names of manifest modalities (``name`` or ``name/encoder``); empty = all
    # cached modalities the manifest declares.
    modalities: tuple[str, ...] = ()
    weighting: str = "inverse"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, CUDA only; the CPU always runs float32 (and deterministically)
    # Co-training (stage b)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 0.0  # 0 = off
    pos_weight: str = "none"  # none | auto (negatives/positives on train) | a float
    # Training loss of both stages: bce, or focal (BCE x (1 - p_t)^focal_gamma; pos_weight acts as its alpha).
    # Model selection and the reported validation loss stay the fused prediction's BCE.
    loss: str = "bce"
    focal_gamma: float = 2.0  # used only with loss=focal
    # Which epoch's model is kept: val_loss (the fused prediction's validation BCE; steady with few positives)
    # or val_auroc (noisy when validation holds a dozen positives or negatives).
    selection: str = "val_loss"
    # Standardise each large-embedding dimension with train-split statistics before MoME (frozen encoders'
    # outputs are far from centred: MiniLM prompt embeddings of different patients have cosine ~0.98).
    standardise_large: bool = True
    # InfoNCE direction: False = the authors' one-way large -> small (Table 2's lambda was tuned for it);
    # True = CLIP-style symmetric (mean of both directions).
    contrastive_symmetric: bool = False
    mome_heads: int = 1  # attention heads of MoME over the modality tokens; must divide small_hidden_dim // M
    # Small model (stage a)
    small_epochs: int = 200
    small_patience: int = 30  # early stopping: epochs without a better small_selection value
    small_lr: float = 1e-3  # trained from scratch: a larger step than the co-training's 1e-4
    small_batch_size: int = 64
    small_optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (weight decay as L2)
    small_weight_decay: float = 1e-2
    small_selection: str = "val_loss"  # val_loss | val_auroc
    small_hidden_dim: int = 64
    small_dropout: float = 0.1
    small_ensemble: int = 1  # small models trained with different seeds and averaged (one wider small model)
    small_checkpoint: str = ""  # a small model trained elsewhere (.safetensors written by adacomed-train)
    tokenizer: str = ""  # tokenizer folder for note inputs (prepare_small_inputs)
    # Splits
    # Carved from train when the manifest has no val rows: whole subjects (no patient in both), stratified on the
    # subject's label (max over its train samples), seeded.
    val_fraction: float = 0.15
    resume: bool = False
    # Seconds between checkpoint commits while training (0 = after every epoch); the end of each stage is always
    # committed. A killed run loses at most this much work.
    checkpoint_seconds: float = 60.0
    plots: bool = True  # ROC/PR/weight PNGs in the run folder (experiment sweeps turn them off)
    # Reporting only (never changes prob_fused): fit a temperature on the validation split's fused logits and add
    # prob_calibrated, its metrics and ECE beside the raw ones.
    temperature_scaling: bool = False
    # Overrides of the task preset's fields (contrastive_weight, proj_dim, ...); resolved by ``resolved_preset``.
    preset: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modalities"] = list(self.modalities)
        return data


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _preset_types() -> dict[str, Any]:
    from .presets import TaskPreset

    return typing.get_type_hints(TaskPreset)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Convert a string (from ``--set``) or a parsed file value to the field's declared type."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config field {name!r}: {value!r} is not a valid {getattr(kind, '__name__', kind)}"
        ) from None
    raise ConfigError(f"config field {name!r} cannot be set from {value!r}")


def _set_preset(preset: dict[str, float], name: str, value: Any) -> None:
    types = _preset_types()
    if name not in types:
        raise ConfigError(f"unknown preset field {name!r}; preset fields: {sorted(types)}")
    preset[name] = _coerce(f"preset.{name}", value, types[name])


def apply_mapping(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Overlay a parsed config file (nested ``preset`` table allowed) onto ``config``."""
    types = _field_types()
    changes: dict[str, Any] = {}
    preset = dict(config.preset)
    for name, value in values.items():
        if name == "preset":
            if not isinstance(value, dict):
                raise ConfigError("config field 'preset' must be a table of preset fields")
            for key, val in value.items():
                _set_preset(preset, key, val)
        elif name in types:
            changes[name] = _coerce(name, value, types[name])
        elif name in _preset_types():
            _set_preset(preset, name, value)
        else:
            raise ConfigError(f"unknown config field {name!r}; fields: {sorted(types)} (and preset.<name>)")
    return dataclasses.replace(config, **changes, preset=preset)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (``--set``); ``preset.<name>=v`` or a flat preset name sets a preset field."""
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        if key.startswith("preset."):
            values.setdefault("preset", {})[key.removeprefix("preset.")] = value
        else:
            values[key] = value
    return apply_mapping(config, values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field names to values")
        return data
    raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")


def resolved_preset(config: TrainConfig) -> Any:
    """``preset_for(task)`` with this config's overrides applied (a :class:`TaskPreset`)."""
    from .presets import preset_for

    return dataclasses.replace(preset_for(config.task), **config.preset)


def resolved_dict(config: TrainConfig) -> dict[str, Any]:
    """The config with the full resolved preset, as written to ``RUN/config.toml``."""
    data = config.to_dict()
    data["preset"] = dataclasses.asdict(resolved_preset(config))
    return data


def to_toml(config: TrainConfig) -> str:
    return tomli_w.dumps(resolved_dict(config))


def fingerprint_dict(config: TrainConfig) -> dict[str, Any]:
    """The architecture-defining part of a config (compared on ``--resume``), JSON-normalised."""
    data = resolved_dict(config)
    picked = {name: data[name] for name in ARCHITECTURE_FIELDS}
    picked["preset"] = data["preset"]
    return json.loads(json.dumps(picked, sort_keys=True))


def _optional_fields(config: TrainConfig) -> dict[str, Any]:
    """The :data:`OPTIONAL_FIELDS` set away from their defaults (the focal loss with its gamma)."""
    if config.loss == OPTIONAL_FIELDS["loss"]:
        return {}
    return {"loss": config.loss, "focal_gamma": config.focal_gamma}


def optimisation_dict(config: TrainConfig) -> dict[str, Any]:
    """The optimisation-defining part of a config (compared on ``--resume``), JSON-normalised."""
    data = config.to_dict()
    picked = {name: data[name] for name in OPTIMISATION_FIELDS} | _optional_fields(config)
    return json.loads(json.dumps(picked, sort_keys=True))


def small_model_dict(config: TrainConfig) -> dict[str, Any]:
    """What decides the small model a run trains (JSON-normalised): equal dicts, same data -> same small model."""
    data = config.to_dict()
    picked = {name: data[name] for name in SMALL_MODEL_FIELDS} | _optional_fields(config)
    return json.loads(json.dumps(picked, sort_keys=True))


def focal_gamma_of(config: TrainConfig) -> float:
    """The focal exponent the training losses use: 0 (plain BCE) unless ``loss=focal``."""
    return float(config.focal_gamma) if config.loss == "focal" else 0.0


def check_choices(config: TrainConfig) -> None:
    """Refuse a config whose named choices are not known (before anything is loaded)."""
    from .weighting import WEIGHTINGS

    choices = {
        "weighting": WEIGHTINGS,
        "selection": SELECTIONS,
        "small_selection": SELECTIONS,
        "small_optimizer": OPTIMIZERS,
        "schedule": ("cosine", "constant"),
        "loss": LOSSES,
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name} {getattr(config, name)!r} is not one of {list(allowed)}")
    if config.loss == "focal" and not config.focal_gamma >= 0:
        raise ConfigError(f"focal_gamma must be 0 or more, got {config.focal_gamma}")
    if config.small_ensemble < 1:
        raise ConfigError(f"small_ensemble must be at least 1, got {config.small_ensemble}")
    for name in ("task", "manifest", "cache", "out"):
        if not getattr(config, name):
            raise ConfigError(f"config field {name!r} is required")
