"""Frozen reward features from a Llama-family LLM (SmolLM2): the last token's final hidden state.

Each text is a ChatML conversation (:func:`chat_format`): the prompt as the user turn and the
response as the assistant turn, each closed by ``<|im_end|>``. It is tokenised, cut from the
left to ``max_length`` tokens (the response's end survives) and left-padded, so the last real
token, ``<|im_end|>`` of the assistant turn, sits in the last slot of every row; its final
hidden state (after the final RMSNorm) ``[D]`` is the feature, as a causal-LM reward model
(TRL's ``RewardTrainer``) reads it. ``layer`` reads it after an earlier block instead (the
forward stops there; the final RMSNorm is applied to that state alike)::

    backbone = LlamaFeatures(smollm2_path(), max_length=192)
    texts = [backbone.text_format.joined(p, r) for p, r in zip(prompts, responses)]
    features, _ = embed_with_cache(backbone, texts, EmbeddingCache(".cache/embeddings"))

Texts are sorted by token count and batched to bucketed lengths
(:func:`~mars_jax.models.tokenize.bucket_lengths`), so the jitted forward compiles once per
bucket and batch size.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.errors import MarsError
from mars_jax.models.encoder import l2_normalize, model_fingerprint
from mars_jax.models.llama import LlamaConfig, forward, init_cache, last_slot_states, rms_norm
from mars_jax.models.llama_tokenizer import ChatTokenizer
from mars_jax.models.llama_weights import load_llama, to_device
from mars_jax.models.tokenize import TextFormat, bucket_length, bucket_lengths
from mars_jax.progress import progress_bar

__all__ = [
    "CHAT_TEMPLATE",
    "LLM_POOLING",
    "LlamaFeatures",
    "chat_format",
    "last_token_features",
    "layer_features",
    "left_pad",
    "resolve_layer",
]

CHAT_TEMPLATE = "chatml-user-assistant-v1"
"""Name of the text format below, part of the cache identity."""

LLM_POOLING = ("last",)
"""Poolings an LLM backbone supports: the last real token's final hidden state."""


def _turn(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>"


def chat_format() -> TextFormat:
    """ChatML texts: ``joined`` = user turn + assistant turn, ``response`` = the assistant turn
    alone, ``prompt`` = the user turn alone (no system turn: it would be cut first anyway)."""
    return TextFormat(
        joined=lambda prompt, response: _turn("user", prompt) + "\n" + _turn("assistant", response),
        response=lambda response: _turn("assistant", response),
        prompt=lambda prompt: _turn("user", prompt),
    )


def left_pad(
    token_ids: Sequence[Sequence[int]], length: int, *, rows: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``token_ids`` right-aligned in ``[rows, length]`` int32, and the padding ``[rows]``.

    Extra rows (beyond ``len(token_ids)``) hold one ``pad_id`` token in the last slot.
    """
    tokens = np.full((rows, length), pad_id, np.int32)
    pad = np.full((rows,), length - 1, np.int32)
    for row, ids in enumerate(token_ids):
        tokens[row, length - len(ids) :] = ids
        pad[row] = length - len(ids)
    return tokens, pad


def last_token_features(
    params: dict[str, Any], config: LlamaConfig, tokens: jax.Array, pad: jax.Array
) -> jax.Array:
    """Final-normed hidden state ``[B, D]`` of the last slot of left-padded ``tokens`` ``[B, T]``.

    ``pad`` ``[B]`` counts each row's padding slots (masked; positions start after them).
    """
    batch, steps = tokens.shape
    cache = init_cache(config, batch, steps, params["embed"].dtype)
    hidden, _ = forward(params, config, tokens, cache, 0, pad)
    return hidden[:, -1].astype(jnp.float32)


def layer_features(
    params: dict[str, Any],
    config: LlamaConfig,
    tokens: jax.Array,
    pad: jax.Array,
    *,
    layers: tuple[int, ...],
) -> jax.Array:
    """Final-normed hidden states ``[B, K, D]`` float32 of the last slot after each block of
    ``layers`` (``K`` block numbers in ``[1, L]``); the forward stops after the deepest one.

    ``tokens`` ``[B, T]`` are left-padded, ``pad`` ``[B]`` counts each row's padding slots.
    """
    depth = max(layers)
    cut = {"embed": params["embed"], "layers": jax.tree.map(lambda w: w[:depth], params["layers"])}
    states = last_slot_states(cut, dataclasses.replace(config, num_layers=depth), tokens, pad)
    picked = rms_norm(states[jnp.asarray(layers) - 1], params["final_norm"], config.rms_eps)
    return picked.transpose(1, 0, 2).astype(jnp.float32)


def resolve_layer(layer: int, num_layers: int) -> int:
    """The block number in ``[1, num_layers]`` that ``layer`` names (negative: from the end).

    Raises:
      MarsError: ``layer`` is 0 or beyond the model's blocks.
    """
    if not (1 <= layer <= num_layers or -num_layers <= layer <= -1):
        raise MarsError(
            f"data.layer: {layer} is not a block of this model ({num_layers} blocks); use "
            f"1..{num_layers} or -{num_layers}..-1 (-1: the last, the default)"
        )
    return layer if layer > 0 else num_layers + 1 + layer


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (a GGUF weights file: tokenizer and weights in one)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LlamaFeatures:
    """Frozen features ``[N, D]`` from a Llama GGUF file or Hugging Face folder.

    The same interface as :class:`~mars_jax.models.encoder.TextEncoder` (``dim``,
    ``identity``, ``cache_key``, ``text_format``, ``embed_texts``), so
    :func:`~mars_jax.models.embedding_cache.embed_with_cache` caches its vectors.

    Attributes:
      path: the GGUF file or model folder.
      config: the model's shapes.
      tokenizer: its chat tokenizer.
      params: float32 weights (the output projection is not used).
      pooling: ``"last"``.
      max_length: longest token sequence kept (cut from the left).
      layer: the block (in ``[1, L]``) after which the last token's state is read.
    """

    text_format = chat_format()
    truncation_side = "left"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_length: int = 192,
        pooling: str = "last",
        layer: int = -1,
    ) -> None:
        if pooling not in LLM_POOLING:
            raise MarsError(
                f"pooling: {pooling!r} is not supported by an LLM backbone; use one of "
                f"{', '.join(LLM_POOLING)} (the last token's final hidden state)"
            )
        self.path = Path(path).expanduser()
        self.config, weights = load_llama(self.path)
        if not 8 <= max_length <= self.config.max_positions:
            raise MarsError(
                f"max_length must be in [8, {self.config.max_positions}] for {self.path}, "
                f"got {max_length}"
            )
        self.layer = resolve_layer(layer, self.config.num_layers)
        self.tokenizer = ChatTokenizer.load(self.path)
        weights.pop("lm_head", None)
        self.params = to_device(weights)
        self.pooling = pooling
        self.max_length = max_length
        self._buckets = bucket_lengths(max_length)
        self._forward = jax.jit(
            partial(layer_features, config=self.config), static_argnames="layers"
        )

    @property
    def dim(self) -> int:
        """Width ``D`` of the features."""
        return self.config.hidden_size

    @cached_property
    def _model_fingerprint(self) -> str:
        """sha256 of the weights file, or of the model folder's files."""
        return model_fingerprint(self.path) if self.path.is_dir() else file_fingerprint(self.path)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What the vectors depend on: the model's bytes, the pooling, length, text format, and
        the layer when it is not the last."""
        layer = {} if self.layer == self.config.num_layers else {"layer": self.layer}
        return {
            "backbone": "llama",
            "model": self._model_fingerprint,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "truncation_side": self.truncation_side,
            "template": CHAT_TEMPLATE,
            **layer,
        }

    @cached_property
    def cache_key(self) -> str:
        """A short hash of :attr:`identity`: the cache folder for this backbone's vectors."""
        encoded = json.dumps(self.identity, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]

    def at_layer(self, layer: int) -> LlamaFeatures:
        """The same backbone (weights shared, not reloaded) reading after block ``layer``."""
        other = copy.copy(self)
        other.layer = resolve_layer(layer, self.config.num_layers)
        for name in ("identity", "cache_key"):
            other.__dict__.pop(name, None)
        return other

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` (special tokens recognised), the last ``max_length`` kept."""
        encoded = self.tokenizer.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [found.ids[-self.max_length :] or [self.tokenizer.end_id] for found in encoded]

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = False,
        progress: bool = True,
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Last-token features ``[N, D]`` float32 of ``texts`` at :attr:`layer`, in input order.

        Args:
          texts: ``N`` strings (already in the chat format, see :attr:`text_format`).
          batch_size: rows per forward pass.
          normalize: scale each row to unit L2 norm.
          progress: show a progress bar with texts per second.
          on_batch: called after each batch with its row indices ``[b]`` and unnormalised
            vectors ``[b, D]`` (the embedding cache saves them as it goes).
        """

        def one_layer(rows: np.ndarray, vectors: np.ndarray) -> None:
            if on_batch is not None:
                on_batch(rows, vectors[:, 0])

        found = self.embed_layers(
            texts, (self.layer,), batch_size=batch_size, progress=progress, on_batch=one_layer
        )[:, 0]
        return l2_normalize(found) if normalize else found

    def embed_layers(
        self,
        texts: Sequence[str],
        layers: Sequence[int],
        *,
        batch_size: int = 64,
        progress: bool = True,
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Last-token features ``[N, K, D]`` float32 of ``texts`` after each of the ``K``
        blocks ``layers`` (as :func:`resolve_layer` reads them), in one pass per batch.

        Args:
          texts: ``N`` strings in the chat format.
          layers: ``K`` block numbers (negative: from the end).
          batch_size: rows per forward pass.
          progress: show a progress bar with texts per second.
          on_batch: called after each batch with its row indices ``[b]`` and vectors
            ``[b, K, D]``.
        """
        blocks = tuple(resolve_layer(layer, self.config.num_layers) for layer in layers)
        token_ids = self.tokenize(texts)
        vectors = np.zeros((len(token_ids), len(blocks), self.dim), np.float32)
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        num_rows = min(batch_size, 1 << max(len(token_ids) - 1, 0).bit_length())
        with progress_bar(len(token_ids), enabled=progress) as advance:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                length = bucket_length(len(token_ids[rows[-1]]), self._buckets)
                tokens, pad = left_pad([token_ids[row] for row in rows], length, rows=num_rows)
                found = self._forward(self.params, tokens=tokens, pad=pad, layers=blocks)
                vectors[rows] = np.asarray(found)[: len(rows)]
                if on_batch is not None:
                    on_batch(rows, vectors[rows])
                advance(len(rows))
        return vectors
