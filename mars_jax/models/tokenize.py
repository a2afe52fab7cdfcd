"""Text to token ids for the BERT-family models: truncation, padding to length buckets.

A reward model reads a response as ``prompt [SEP] response`` (:func:`pair_text`), truncated
from the left (``[CLS]`` kept) so that the response and the end of the prompt survive a long
dialogue. Rows are padded to a bucket length (:func:`bucket_lengths`), so a jitted model
compiles once per bucket, not once per length.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mars_jax.errors import MarsError

__all__ = [
    "TRUNCATION_SIDES",
    "TextFormat",
    "bert_format",
    "bucket_length",
    "bucket_lengths",
    "load_tokenizer",
    "pad_token_ids",
    "pair_text",
    "tokenize",
    "tokenize_pairs",
    "tokenize_texts",
]

TRUNCATION_SIDES = ("left", "right")


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


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest of ``buckets`` (ascending) that holds ``length``, else the largest."""
    return buckets[min(bisect.bisect_left(buckets, length), len(buckets) - 1)]


def pad_token_ids(
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


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    truncation_side: str,
) -> list[list[int]]:
    """Token ids of ``texts`` with special tokens, at most ``max_length`` each.

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


class TextFormat(NamedTuple):
    """How a backbone's texts are written: ``joined(prompt, response)``, ``response(response)``
    and ``prompt(prompt)`` give the text embedded for each representation."""

    joined: Callable[[str, str], str]
    response: Callable[[str], str]
    prompt: Callable[[str], str]


def bert_format(separator: str) -> TextFormat:
    """A BERT encoder's texts: ``prompt sep response`` (:func:`pair_text`), or a text alone."""
    return TextFormat(
        joined=lambda prompt, response: pair_text(prompt, response, separator),
        response=lambda response: response,
        prompt=lambda prompt: prompt,
    )


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """Model inputs for ``B`` ready-made texts (see :func:`pair_text`).

    Each text is truncated from the left (``[CLS]`` is kept) to ``max_length`` tokens and padded
    to ``length`` (``>= max_length``), or when None to the bucket length of the longest row.

    Returns:
      ``{"input_ids": [B, T] int32, "attention_mask": [B, T] int32}``.
    """
    token_ids = tokenize(tokenizer, texts, max_length=max_length, truncation_side="left")
    if length is None:
        longest = max((len(ids) for ids in token_ids), default=1)
        length = bucket_length(longest, bucket_lengths(max_length))
    elif length < max_length:
        raise MarsError(f"length ({length}) must be at least max_length ({max_length})")
    input_ids, attention_mask = pad_token_ids(
        token_ids, length, pad_id=tokenizer.pad_token_id or 0, rows=len(token_ids)
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tokenize_pairs(
    encoder_or_tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int,
) -> dict[str, np.ndarray]:
    """Inputs of :func:`~mars_jax.models.finetune.finetune_reward_model` for ``B`` responses.

    ``encoder_or_tokenizer``: a tokenizer, or anything with a ``tokenizer`` attribute (a
    :class:`~mars_jax.models.encoder.TextEncoder`).

    Each row is ``pair_text(prompt, response, sep)``, truncated from the left (``[CLS]`` is
    kept) to ``max_length`` tokens, and padded to the bucket length ``T`` of the longest row.

    Returns:
      ``{"input_ids": [B, T] int32, "attention_mask": [B, T] int32}``.
    """
    if len(prompts) != len(responses):
        raise MarsError(f"{len(prompts)} prompts but {len(responses)} responses")
    tokenizer = getattr(encoder_or_tokenizer, "tokenizer", encoder_or_tokenizer)
    texts = [
        pair_text(prompt, response, tokenizer.sep_token)
        for prompt, response in zip(prompts, responses, strict=True)
    ]
    return tokenize_texts(tokenizer, texts, max_length=max_length)
