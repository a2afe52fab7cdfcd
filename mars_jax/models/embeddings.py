"""Text reward models on a BERT encoder: frozen embeddings cached on disk, or a full fine-tune.

Frozen features need nothing beyond this module and :func:`mlp_reward_model`: embed each
response once, then train a head on feature vectors ``[B, D]`` exactly as on the synthetic
suite::

    encoder = TextEncoder(resolve_encoder("minilm"), truncation_side="left")
    sep = encoder.tokenizer.sep_token
    texts = [pair_text(p, r, sep) for p, r in zip(prompts, responses)]
    features, stats = embed_with_cache(encoder, texts, EmbeddingCache(".cache/embeddings"))
    model = mlp_reward_model(encoder.dim, hidden_sizes=(256,))

A full fine-tune trains the encoder and the head together; its inputs are token ids::

    model = finetune_reward_model(folder)             # params: {"encoder": ..., "head": ...}
    inputs = tokenize_pairs(load_tokenizer(folder), prompts, responses, max_length=128)
    rewards = model.reward_fn(model.init(key), inputs)  # [B]

Both paths see a response as ``prompt [SEP] response`` (:func:`pair_text`), truncated from the
left (``[CLS]`` kept) so that the response and the end of the prompt survive a long dialogue:
:func:`tokenize_pairs` always does so, a :class:`TextEncoder` with ``truncation_side="left"``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property, partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mars_jax.errors import MarsError
from mars_jax.models.bert import POOLING_MODES, BertConfig, BertEncoder, load_bert, pool
from mars_jax.models.heads import MLPRewardHead, RewardModel
from mars_jax.types import PyTree

__all__ = [
    "CacheStats",
    "EmbeddingCache",
    "TextEncoder",
    "TextRewardModel",
    "bucket_lengths",
    "embed_with_cache",
    "finetune_reward_model",
    "load_tokenizer",
    "model_fingerprint",
    "pair_text",
    "progress_bar",
    "text_key",
    "tokenize_pairs",
    "tokenize_texts",
]

TRUNCATION_SIDES = ("left", "right")
FINGERPRINT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def bucket_lengths(max_length: int, *, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths: powers of two from ``smallest`` below ``max_length``, then ``max_length``.

    >>> bucket_lengths(100)
    (16, 32, 64, 100)
    """
    lengths = []
    length = smallest
    while length < max_length:
        lengths.append(length)
        length *= 2
    return (*lengths, max_length)


def _bucket(length: int, buckets: Sequence[int]) -> int:
    return buckets[min(bisect.bisect_left(buckets, length), len(buckets) - 1)]


def _pad(
    token_ids: Sequence[Sequence[int]], length: int, *, pad_id: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` x ``length`` int32 token ids and attention mask; extra rows are all padding."""
    input_ids = np.full((rows, length), pad_id, np.int32)
    attention_mask = np.zeros((rows, length), np.int32)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def load_tokenizer(folder: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder``, without the fixed padding or truncation of its
    ``tokenizer.json`` (callers pad to buckets themselves)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise MarsError(f"{folder}: no usable tokenizer ({reason})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    return tokenizer


def _tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    truncation_side: str,
) -> list[list[int]]:
    """Token ids with special tokens, at most ``max_length`` each.

    Left truncation keeps the first token (``[CLS]``) and the last ``max_length - 1``.
    """
    if not texts:
        return []
    if truncation_side == "right":
        encoded = tokenizer(
            list(texts), padding=False, truncation=True, max_length=max_length, verbose=False
        )
        return encoded["input_ids"]
    encoded = tokenizer(list(texts), padding=False, truncation=False, verbose=False)
    return [
        ids if len(ids) <= max_length else ids[:1] + ids[len(ids) - max_length + 1 :]
        for ids in encoded["input_ids"]
    ]


def pair_text(prompt: str, response: str, separator: str) -> str:
    """The text a reward model reads for ``response`` to ``prompt``: ``prompt sep response``.

    >>> pair_text("Hi?", "Hello.", "[SEP]")
    'Hi? [SEP] Hello.'
    """
    return f"{prompt} {separator} {response}"


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


def text_key(text: str) -> str:
    """The cache key of a text: sha256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pooled_forward(
    graphdef: nnx.GraphDef,
    pooling: str,
    params: PyTree,
    input_ids: jax.Array,
    attention_mask: jax.Array,
) -> jax.Array:
    encoder = nnx.merge(graphdef, params)
    return pool(encoder(input_ids, attention_mask), attention_mask, mode=pooling)


class _RateColumn(ProgressColumn):
    """Items per second of a progress task."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"-- {self.unit}/s" if speed is None else f"{speed:,.1f} {self.unit}/s")


@contextmanager
def progress_bar(
    total: int, *, enabled: bool, label: str = "embedding", unit: str = "seq"
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (count, rate, ETA); yields ``advance(n)``."""
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled) as progress:
        task = progress.add_task(label, total=total)
        yield partial(progress.advance, task)


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
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
        return _tokenize(
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
    ) -> np.ndarray:
        """Pooled embeddings ``[N, D]`` float32 of ``texts``, rows in input order.

        Args:
          texts: ``N`` strings.
          batch_size: rows per forward pass.
          normalize: scale each row to unit L2 norm.
          progress: show a progress bar with sequences per second.
        """
        token_ids = self.tokenize(texts)
        vectors = np.zeros((len(token_ids), self.dim), np.float32)
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        num_rows = min(batch_size, 1 << max(len(token_ids) - 1, 0).bit_length())
        with progress_bar(len(token_ids), enabled=progress) as advance:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                length = _bucket(len(token_ids[rows[-1]]), self._buckets)
                input_ids, attention_mask = _pad(
                    [token_ids[row] for row in rows], length, pad_id=pad_id, rows=num_rows
                )
                pooled = self._forward(self.params, input_ids, attention_mask)
                vectors[rows] = np.asarray(pooled)[: len(rows)]
                advance(len(rows))
        return _l2_normalize(vectors) if normalize else vectors


class CacheStats(NamedTuple):
    """Distinct texts found in the cache (``hits``) and embedded now (``misses``)."""

    hits: int
    misses: int


class EmbeddingCache:
    """Embedding vectors on disk, per encoder and per text.

    Layout: ``<folder>/<cache key>/chunk-<n>.npz``, each chunk holding ``keys`` (``[M]``
    :func:`text_key` strings) and ``vectors`` (``[M, D]`` float32), plus ``meta.json`` with the
    encoder's :attr:`TextEncoder.identity`. A chunk is written to a temporary file and renamed
    into place, so a crash never leaves a half-written chunk. Chunks are read the first time
    a cache key is looked up. Meant for one writer at a time per cache key: two concurrent
    writers may both take the same chunk number, and the vectors of the loser are re-embedded
    on a later run.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._index: dict[str, dict[str, np.ndarray]] = {}

    def get(self, cache_key: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors ``[D]`` among ``keys``, by key."""
        index = self._load(cache_key)
        return {key: index[key] for key in keys if key in index}

    def add(
        self,
        cache_key: str,
        keys: Sequence[str],
        vectors: np.ndarray,
        *,
        meta: Mapping[str, Any],
    ) -> Path:
        """Writes a new chunk of ``vectors`` ``[M, D]`` for ``keys`` and returns its path."""
        index = self._load(cache_key)
        folder = self.folder / cache_key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "meta.json").exists():
            _write_atomic(folder / "meta.json", lambda handle: handle.write(_json_bytes(meta)))
        path = folder / f"chunk-{1 + max(_chunk_numbers(folder), default=-1)}.npz"
        vectors = np.asarray(vectors, np.float32)
        _write_atomic(
            path, lambda handle: np.savez(handle, keys=np.asarray(keys, "U64"), vectors=vectors)
        )
        index.update(zip(keys, vectors, strict=True))
        return path

    def _load(self, cache_key: str) -> dict[str, np.ndarray]:
        if cache_key not in self._index:
            index: dict[str, np.ndarray] = {}
            folder = self.folder / cache_key
            for number in sorted(_chunk_numbers(folder)):
                path = folder / f"chunk-{number}.npz"
                try:
                    with np.load(path, allow_pickle=False) as chunk:
                        index.update(zip(chunk["keys"].tolist(), chunk["vectors"], strict=True))
                except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
                    raise MarsError(
                        f"{path}: unreadable embedding cache chunk ({err}); delete it to re-embed"
                    ) from None
            self._index[cache_key] = index
        return self._index[cache_key]


def _chunk_numbers(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    stems = (path.stem.removeprefix("chunk-") for path in folder.glob("chunk-*.npz"))
    return [int(stem) for stem in stems if stem.isdigit()]


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(value), indent=2, sort_keys=True) + "\n").encode()


def _write_atomic(path: Path, write: Callable[[Any], object]) -> None:
    """Writes ``path`` through a temporary file in the same folder and ``os.replace``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def embed_with_cache(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache,
    *,
    batch_size: int = 64,
    normalize: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, CacheStats]:
    """Embeddings ``[N, D]`` of ``texts``, embedding only those not yet in ``cache``.

    The texts embedded now are appended to the cache as one new chunk. The cache holds
    unnormalised vectors; ``normalize`` applies to the result only.
    """
    keys = [text_key(text) for text in texts]
    found = cache.get(encoder.cache_key, keys)
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
    if missing:
        vectors = encoder.embed_texts(
            list(missing.values()), batch_size=batch_size, progress=progress
        )
        cache.add(encoder.cache_key, list(missing), vectors, meta=encoder.identity)
        found |= dict(zip(missing, vectors, strict=True))
    result = np.stack([found[key] for key in keys]) if keys else np.zeros((0, encoder.dim))
    result = result.astype(np.float32)
    stats = CacheStats(hits=len(set(keys)) - len(missing), misses=len(missing))
    return (_l2_normalize(result) if normalize else result), stats


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """Inputs of :func:`finetune_reward_model` for ``B`` ready-made texts (see :func:`pair_text`).

    Each text is truncated from the left (``[CLS]`` is kept) to ``max_length`` tokens and padded
    to ``length`` (``>= max_length``), or when None to the bucket length of the longest row.

    Returns:
      ``{"input_ids": [B, T] int32, "attention_mask": [B, T] int32}``.
    """
    token_ids = _tokenize(tokenizer, texts, max_length=max_length, truncation_side="left")
    if length is None:
        longest = max((len(ids) for ids in token_ids), default=1)
        length = _bucket(longest, bucket_lengths(max_length))
    elif length < max_length:
        raise MarsError(f"length ({length}) must be at least max_length ({max_length})")
    input_ids, attention_mask = _pad(
        token_ids, length, pad_id=tokenizer.pad_token_id or 0, rows=len(token_ids)
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tokenize_pairs(
    encoder_or_tokenizer: TextEncoder | PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int,
) -> dict[str, np.ndarray]:
    """Inputs of :func:`finetune_reward_model` for ``B`` responses to their prompts.

    Each row is ``pair_text(prompt, response, sep)``, truncated from the left (``[CLS]`` is
    kept) to ``max_length`` tokens, and padded to the bucket length ``T`` of the longest row.

    Returns:
      ``{"input_ids": [B, T] int32, "attention_mask": [B, T] int32}``.
    """
    if len(prompts) != len(responses):
        raise MarsError(f"{len(prompts)} prompts but {len(responses)} responses")
    tokenizer = (
        encoder_or_tokenizer.tokenizer
        if isinstance(encoder_or_tokenizer, TextEncoder)
        else encoder_or_tokenizer
    )
    texts = [
        pair_text(prompt, response, tokenizer.sep_token)
        for prompt, response in zip(prompts, responses, strict=True)
    ]
    return tokenize_texts(tokenizer, texts, max_length=max_length)


class TextRewardModel(nnx.Module):
    """A BERT encoder, pooling and an MLP head: token ids ``[B, T]`` to rewards ``[B]``."""

    def __init__(
        self,
        config: BertConfig,
        hidden_sizes: Sequence[int],
        *,
        pooling: str,
        activation: str,
        rngs: nnx.Rngs,
    ) -> None:
        self.encoder = BertEncoder(config, rngs=rngs)
        self.head = MLPRewardHead(
            config.hidden_size, hidden_sizes, activation=activation, rngs=rngs
        )
        self.pooling = pooling

    def __call__(self, inputs: Mapping[str, jax.Array]) -> jax.Array:
        """Rewards ``[B]`` of ``{"input_ids": [B, T], "attention_mask": [B, T]}``."""
        mask = inputs["attention_mask"]
        hidden = self.encoder(inputs["input_ids"], mask)
        return self.head(pool(hidden, mask, mode=self.pooling))


def finetune_reward_model(
    folder: str | os.PathLike[str],
    *,
    hidden_sizes: Sequence[int] = (),
    pooling: str = "mean",
    activation: str = "gelu",
) -> RewardModel:
    """A reward model that trains the pretrained encoder in ``folder`` together with a head.

    ``init(key)`` returns ``{"encoder": pretrained weights, "head": fresh head from key}``;
    inputs are those of :func:`tokenize_pairs`.
    """
    if pooling not in POOLING_MODES:
        raise MarsError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    encoder, config = load_bert(folder)
    encoder_params = nnx.to_pure_dict(nnx.state(encoder))
    hidden_sizes = tuple(hidden_sizes)

    def build() -> TextRewardModel:
        return TextRewardModel(
            config, hidden_sizes, pooling=pooling, activation=activation, rngs=nnx.Rngs(0)
        )

    graphdef, _ = nnx.split(nnx.eval_shape(build))

    def init(key: jax.Array) -> PyTree:
        head = MLPRewardHead(
            config.hidden_size, hidden_sizes, activation=activation, rngs=nnx.Rngs(params=key)
        )
        return {"encoder": encoder_params, "head": nnx.to_pure_dict(nnx.state(head))}

    return RewardModel(graphdef=graphdef, init=init)
