"""Sentence embeddings from a BERT-family folder: a frozen encoder, pooled, bucketed, jitted.

Frozen features need nothing beyond this module, :mod:`mars_jax.models.embedding_cache` and
:func:`~mars_jax.models.heads.mlp_reward_model`: embed each response once, then train a head
on feature vectors ``[B, D]`` exactly as on the synthetic suite::

    encoder = TextEncoder(resolve_encoder("minilm"), truncation_side="left")
    sep = encoder.tokenizer.sep_token
    texts = [pair_text(p, r, sep) for p, r in zip(prompts, responses)]
    features, stats = embed_with_cache(encoder, texts, EmbeddingCache(".cache/embeddings"))
    model = mlp_reward_model(encoder.dim, hidden_sizes=(256,))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mars_jax.errors import MarsError
from mars_jax.models.bert import POOLING_MODES, load_bert, pool
from mars_jax.models.tokenize import (
    TRUNCATION_SIDES,
    TextFormat,
    bert_format,
    bucket_length,
    bucket_lengths,
    load_tokenizer,
    pad_token_ids,
    tokenize,
)
from mars_jax.progress import progress_bar
from mars_jax.types import PyTree

__all__ = ["FINGERPRINT_FILES", "TextEncoder", "l2_normalize", "model_fingerprint"]

FINGERPRINT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def model_fingerprint(folder: str | os.PathLike[str]) -> str:
    """sha256 over the name, size and bytes of the weight, config and tokenizer files present.

    Reading every byte (about 0.2 s for MiniLM's 90 MB) means a changed weight never hits a
    stale cache entry, whatever the file's name or date.
    """
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _pooled_forward(
    graphdef: nnx.GraphDef,
    pooling: str,
    params: PyTree,
    input_ids: jax.Array,
    attention_mask: jax.Array,
) -> jax.Array:
    encoder = nnx.merge(graphdef, params)
    return pool(encoder(input_ids, attention_mask), attention_mask, mode=pooling)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` ``[N, D]`` scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


class TextEncoder:
    """Sentence embeddings ``[N, D]`` from a BERT folder (``config.json``, weights, tokenizer).

    Texts are sorted by token count and batched; each batch is padded to ``batch_size`` rows
    (fewer texts: the next power of two) and to a bucket length (:func:`bucket_lengths`), so
    the jitted forward compiles once per bucket, not once per length.

    Attributes:
      folder: the weights folder.
      config: the encoder architecture.
      tokenizer: the folder's tokenizer.
      graphdef: the encoder's static structure (split once).
      params: the encoder's weights (a plain nested dict).
      pooling: ``"mean"`` or ``"cls"``.
      max_length: longest token sequence kept, special tokens included.
      truncation_side: ``"right"`` keeps the start of a long text, ``"left"`` its end.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        pooling: str = "mean",
        max_length: int = 256,
        truncation_side: str = "right",
    ) -> None:
        if pooling not in POOLING_MODES:
            raise MarsError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if truncation_side not in TRUNCATION_SIDES:
            raise MarsError(
                f"truncation_side must be one of {TRUNCATION_SIDES}, got {truncation_side!r}"
            )
        self.folder = Path(folder)
        encoder, self.config = load_bert(self.folder)
        if not 2 <= max_length <= self.config.max_position_embeddings:
            raise MarsError(
                f"max_length must be in [2, {self.config.max_position_embeddings}] for "
                f"{self.folder}, got {max_length}"
            )
        self.tokenizer = load_tokenizer(self.folder)
        self.graphdef, state = nnx.split(encoder)
        self.params = nnx.to_pure_dict(state)
        self.pooling = pooling
        self.max_length = max_length
        self.truncation_side = truncation_side
        self._buckets = bucket_lengths(max_length)
        self._forward = jax.jit(partial(_pooled_forward, self.graphdef, pooling))

    @property
    def text_format(self) -> TextFormat:
        """The texts this encoder reads per representation (``prompt [SEP] response`` joined)."""
        return bert_format(self.tokenizer.sep_token)

    @property
    def dim(self) -> int:
        """Width ``D`` of the embeddings."""
        return self.config.hidden_size

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What the vectors depend on: the model files' fingerprint and the embedding options."""
        return {
            "model": model_fingerprint(self.folder),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "truncation_side": self.truncation_side,
        }

    @cached_property
    def cache_key(self) -> str:
        """A short hash of :attr:`identity`: the cache folder for this encoder's vectors."""
        encoded = json.dumps(self.identity, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts``, special tokens included, truncated to ``max_length``."""
        return tokenize(
            self.tokenizer,
            texts,
            max_length=self.max_length,
            truncation_side=self.truncation_side,
        )

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = False,
        progress: bool = True,
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Pooled embeddings ``[N, D]`` float32 of ``texts``, rows in input order.

        Args:
          texts: ``N`` strings.
          batch_size: rows per forward pass.
          normalize: scale each row to unit L2 norm.
          progress: show a progress bar with sequences per second.
          on_batch: called after each batch with its row indices ``[b]`` and unnormalised
            vectors ``[b, D]`` (the embedding cache saves them as it goes).
        """
        token_ids = self.tokenize(texts)
        vectors = np.zeros((len(token_ids), self.dim), np.float32)
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        num_rows = min(batch_size, 1 << max(len(token_ids) - 1, 0).bit_length())
        with progress_bar(len(token_ids), enabled=progress) as advance:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                length = bucket_length(len(token_ids[rows[-1]]), self._buckets)
                input_ids, attention_mask = pad_token_ids(
                    [token_ids[row] for row in rows], length, pad_id=pad_id, rows=num_rows
                )
                pooled = self._forward(self.params, input_ids, attention_mask)
                vectors[rows] = np.asarray(pooled)[: len(rows)]
                if on_batch is not None:
                    on_batch(rows, vectors[rows])
                advance(len(rows))
        return l2_normalize(vectors) if normalize else vectors
