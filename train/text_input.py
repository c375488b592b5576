"""Notes -> token ids for the small model's text encoder.

The tokenizer is either trained on the TRAIN split's notes (WordPiece, vocabulary ~8000, with the supplement's
normalisation: line breaks and runs of whitespace become one space, lower case, NFKC) or loaded from a local
``tokenizer.json`` (or a folder holding one). Either way a copy is saved as ``tokenizer.json`` in the prepared
cache folder, and every shard of that cache is tokenised with that saved copy. Stored ids are the tokenizer's
ids + 1, so 0 is always padding whatever the tokenizer's own ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from ..cache_schema import Manifest, SmallInput
from ..cache_schema.atomic import write_json_once
from .input_groups import Encoded, InputGroup, is_missing
from .small_model import SmallInputSpec

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ["[PAD]", "[UNK]"]


def build_wordpiece(texts: list[str], vocab_size: int) -> Tokenizer:
    """A lower-cased WordPiece tokenizer trained on ``texts`` (deterministic for the same texts in order)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def resolve_tokenizer_file(tokenizer: str | Path) -> Path:
    """A ``tokenizer.json`` path, or a folder that holds one."""
    path = Path(tokenizer).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {tokenizer!s}: expected a tokenizer.json or a folder holding one")
    return path


class TextGroup(InputGroup):
    """Inline notes -> ``tokens`` int32 [L] (ids + 1, 0 = padding), ``mask`` bool [L], ``present``."""

    model_kind = "text"

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        small: SmallInput,
        tokenizer: str | Path | None,
        max_length: int,
        vocab_size: int,
    ):
        super().__init__(name, manifest, {name: small})
        self.small = small
        self.values = self.column(small)
        self.max_length = int(small.options.get("max_length", max_length))
        self.vocab_size = int(small.options.get("vocab_size", vocab_size))
        self.tokenizer_file = resolve_tokenizer_file(tokenizer) if tokenizer is not None else None
        self.tokenizer: Tokenizer | None = None
        self.identity = ""

    def train_texts(self) -> list[str]:
        """Train notes ordered by sample id, so the corpus does not depend on the manifest's row order."""
        rows = sorted(self.train_rows, key=lambda row: self.sample_ids[row])
        return [str(self.values[row]) for row in rows if not is_missing(self.values[row])]

    def fit(self) -> None:
        # The vocabulary is a deterministic function of this identity: a given file's bytes, or the train notes
        # (by sample id) and the trainer's parameters. Hashing it avoids training a tokenizer just to name
        # the cache; the trained vocabulary itself is saved in the cache folder.
        if self.tokenizer_file is not None:
            self.identity = "file:sha256:" + hashlib.sha256(self.tokenizer_file.read_bytes()).hexdigest()
            return
        texts = self.train_texts()
        if not texts:
            raise ValueError(
                f"small input {self.name!r}: no notes in the train split to train a tokenizer on; "
                "pass tokenizer= a tokenizer.json"
            )
        digest = hashlib.sha256()
        for text in texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        self.identity = "trained:wordpiece:train-notes-sha256:" + digest.hexdigest()

    def weights(self) -> str:
        return "tokenizer:" + self.identity

    def preprocessing(self) -> dict[str, Any]:
        trained = {
            "model": "wordpiece",
            "vocab_size": self.vocab_size,
            "lowercase": True,
            "normalise": "nfkc, whitespace and line breaks -> one space, strip",
        }
        return {
            "tokenizer": "file" if self.tokenizer_file else trained,
            "max_length": self.max_length,
            "id_offset": 1,
            "truncation": "keep first tokens",
        }

    def prepare_build(self, cache_path: Path) -> None:
        # The first writer's tokenizer wins and every shard (a resumed build included) uses that file:
        # WordPiece training is not bit-reproducible across processes, so it must never be retrained mid-cache.
        saved = cache_path / TOKENIZER_FILE
        if not saved.is_file():
            if self.tokenizer_file is not None:
                tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
            else:
                tokenizer = build_wordpiece(self.train_texts(), self.vocab_size)
            write_json_once(saved, json.loads(tokenizer.to_str()))
        self.tokenizer = Tokenizer.from_file(str(saved))

    def encode(self, rows: list[int]) -> Encoded:
        assert self.tokenizer is not None, "prepare_build must run before encode"
        tokens = np.zeros((len(rows), self.max_length), dtype=np.int32)
        mask = np.zeros((len(rows), self.max_length), dtype=bool)
        errors = []
        texts, outs = [], []
        for out, row in enumerate(rows):
            value = self.values[row]
            if is_missing(value):
                continue
            if not isinstance(value, str):
                errors.append(self.error(row, f"{self.small.column}: expected text, found {type(value).__name__}"))
                continue
            texts.append(value)
            outs.append(out)
        for out, encoding in zip(outs, self.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []):
            ids = np.asarray(encoding.ids[: self.max_length], dtype=np.int64) + 1
            if ids.size == 0:
                errors.append(self.error(rows[out], f"{self.small.column}: note has no tokens"))
                continue
            tokens[out, : ids.size] = ids
            mask[out, : ids.size] = True
        present = mask.any(axis=1)
        return {f"{self.name}.tokens": tokens, f"{self.name}.mask": mask, f"{self.name}.present": present}, errors

    def spec(self, cache_path: Path) -> SmallInputSpec:
        tokenizer = Tokenizer.from_file(str(cache_path / TOKENIZER_FILE))
        return SmallInputSpec(kind="text", vocab_size=tokenizer.get_vocab_size() + 1)
