"""Real preference pairs as token ids, for a run that fine-tunes the text encoder.

The same pairs as the frozen-encoder path (:mod:`mars_jax.data.text`: the same files, cleaning,
split, sample and label flips), each response read as ``prompt [SEP] response`` and truncated
from the left, but kept as token ids ``{"input_ids", "attention_mask"}`` padded to
``data.max_length`` so that base, synthetic and held-out pairs share one shape. The synthetic
pool must be a paraphrase pool directory (``mars-jax augment``): the representation-level
generators work on frozen features, which a fine-tuned encoder does not have.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.data.selection import (
    TextDataSettings,
    flip_labels,
    read_pool_option,
    select_base_pairs,
    selection_info,
)
from mars_jax.data.table import PairTable
from mars_jax.data.text import directory_pool
from mars_jax.errors import MarsError
from mars_jax.models.pretrained import resolve_encoder
from mars_jax.models.tokenize import load_tokenizer, pair_text, tokenize_texts
from mars_jax.refine import RefineData
from mars_jax.types import PairBatch, PyTree

__all__ = ["build_token_data"]


def build_token_data(data: TextDataSettings) -> tuple[RefineData, dict[str, Any]]:
    """The run's base, pool and held-out pairs as token ids ``[rows, data.max_length]``."""
    contents = read_pool_option(data.pool)
    if contents is None:
        raise MarsError(
            f"data.pool: {data.pool!r} works on frozen features; with "
            "model.finetune_encoder = true it must be a pool directory (mars-jax augment)"
        )
    if data.representation != "joined":
        raise MarsError(
            f"data.representation: {data.representation!r} works on frozen features; with "
            "model.finetune_encoder = true the encoder reads 'joined' texts"
        )
    selection = select_base_pairs(data)
    base, flipped = flip_labels(selection.base, rate=data.label_flip_rate, seed=data.seed)
    folder = resolve_encoder(data.encoder)
    tokenizer = load_tokenizer(folder)
    separator = tokenizer.sep_token

    def tokens(texts: list[str]) -> PyTree:
        found = tokenize_texts(tokenizer, texts, max_length=data.max_length, length=data.max_length)
        return {name: jnp.asarray(array) for name, array in found.items()}

    def pairs(table: PairTable) -> PairBatch:
        texts = [
            pair_text(prompt, response, separator)
            for responses in (table.chosen, table.rejected)
            for prompt, response in zip(table.prompt, responses, strict=True)
        ]
        inputs = tokens(texts)
        chosen = jax.tree.map(lambda a: a[: len(table)], inputs)
        rejected = jax.tree.map(lambda a: a[len(table) :], inputs)
        return PairBatch(chosen, rejected, jnp.ones(len(table), jnp.float32))

    def pool_inputs(prompts: list[str], responses: list[str]) -> PyTree:
        return tokens([pair_text(p, r, separator) for p, r in zip(prompts, responses, strict=True)])

    pool, pool_info = directory_pool(contents, selection.base, flipped, pool_inputs)
    base_pairs = pairs(base)
    full = np.asarray(base_pairs.chosen["attention_mask"]).all(axis=1)
    info = {
        **selection_info(data.paths, selection, flipped),
        "num_pool_pairs": int(pool.source.shape[0]),
        "pool": data.pool,
        **pool_info,
        "encoder": {"path": str(folder), "trained": True},
        "max_length": data.max_length,
        "base_chosen_at_max_length": float(full.mean()),
    }
    validation = None if selection.validation is None else pairs(selection.validation)
    return (
        RefineData(
            base=base_pairs, pool=pool, heldout=pairs(selection.held), validation=validation
        ),
        info,
    )
