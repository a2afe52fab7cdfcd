"""Real preference pairs as the refinement loop's data: read, clean, split, embed, augment.

The frozen-encoder path: every response is read as ``prompt [SEP] response`` (truncated from
the left, so the response survives a long dialogue) and embedded once by a frozen text encoder
(all-MiniLM-L6-v2 by default), with an on-disk cache reused across runs. The features are
standardised with the base pairs' statistics, and the synthetic pool comes from the
representation-level generator (perturbations of the cached embeddings, in the same
paraphrase scheme as the synthetic suite) until a language-model paraphraser is plugged in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from mars_jax.config import Config
from mars_jax.data.formats import read_pairs
from mars_jax.data.synthetic import make_pool_variations
from mars_jax.data.table import PairTable, clean_pairs, sample_pairs, split_by_group
from mars_jax.errors import MarsError
from mars_jax.models.embeddings import EmbeddingCache, TextEncoder, embed_with_cache, pair_text
from mars_jax.models.pretrained import resolve_encoder
from mars_jax.refine import RefineData
from mars_jax.types import PairBatch

__all__ = ["build_text_data", "flip_labels"]


def flip_labels(table: PairTable, *, rate: float, seed: int) -> tuple[PairTable, np.ndarray]:
    """Swap chosen and rejected in ``round(rate * B)`` random pairs (label noise).

    Returns the table and the ``[B]`` bool mask of flipped pairs.
    """
    flipped = np.zeros(len(table), bool)
    count = round(rate * len(table))
    flipped[np.random.default_rng(seed).choice(len(table), count, replace=False)] = True
    sides = list(zip(table.chosen, table.rejected, flipped, strict=True))
    return dataclasses.replace(
        table,
        chosen=tuple(r if f else c for c, r, f in sides),
        rejected=tuple(c if f else r for c, r, f in sides),
        margin=np.where(flipped, -table.margin, table.margin),
    ), flipped


def build_text_data(config: Config) -> tuple[RefineData, dict[str, Any]]:
    """The run's data from the preference files in ``config.data.paths``."""
    data = config.data
    read = read_pairs(
        [Path(p) for p in data.paths], format=data.format, skip_invalid=data.skip_invalid
    )
    table, cleaning = clean_pairs(read.table)
    train, heldout = split_by_group(table, heldout_fraction=data.heldout_fraction, seed=data.seed)
    base = sample_pairs(train, max_pairs=data.num_base_pairs, seed=data.seed)
    held = sample_pairs(heldout, max_pairs=data.num_heldout_pairs, seed=data.seed + 1)
    if not len(base) or not len(held):
        raise MarsError(
            f"data.paths: {len(table)} usable pairs give {len(base)} base and {len(held)} "
            "held-out pairs; both must be non-empty (check data.heldout_fraction)"
        )
    base, flipped = flip_labels(base, rate=data.label_flip_rate, seed=data.seed)

    encoder = TextEncoder(
        resolve_encoder(data.encoder),
        pooling=data.pooling,
        max_length=data.max_length,
        truncation_side="left",
    )
    separator = encoder.tokenizer.sep_token
    texts = [
        pair_text(prompt, response, separator)
        for part in (base, held)
        for responses in (part.chosen, part.rejected)
        for prompt, response in zip(part.prompt, responses, strict=True)
    ]
    vectors, cache_stats = embed_with_cache(
        encoder,
        texts,
        EmbeddingCache(Path(data.cache_dir).expanduser()),
        batch_size=data.embed_batch_size,
        progress=config.output.progress,
    )
    num_base, num_held = len(base), len(held)
    base_chosen, base_rejected, held_chosen, held_rejected = np.split(
        vectors, np.cumsum([num_base, num_base, num_held])
    )
    base_features = np.concatenate([base_chosen, base_rejected])
    mean, std = base_features.mean(axis=0), base_features.std(axis=0) + 1e-6

    def features(array: np.ndarray) -> jnp.ndarray:
        return jnp.asarray((array - mean) / std, jnp.float32)

    def pairs(chosen: np.ndarray, rejected: np.ndarray) -> PairBatch:
        return PairBatch(features(chosen), features(rejected), jnp.ones(len(chosen), jnp.float32))

    base_pairs = pairs(base_chosen, base_rejected)
    pool = make_pool_variations(
        data.seed,
        base_pairs.chosen,
        base_pairs.rejected,
        paraphrases=data.paraphrases,
        perturbation_scale=data.perturbation_scale,
        prompt_shift_scale=data.prompt_shift_scale,
    )
    info = {
        "suite": "pairs",
        "paths": list(data.paths),
        "pairs_read": len(read.table),
        "invalid_records": read.invalid,
        "invalid_examples": list(read.first_errors),
        "ranked_ties_skipped": read.ties,
        "cleaning": cleaning.to_json(),
        "train_side_pairs": len(train),
        "heldout_side_pairs": len(heldout),
        "num_base_pairs": num_base,
        "num_heldout_pairs": num_held,
        "num_flipped": int(flipped.sum()),
        "num_pool_pairs": int(pool.source.shape[0]),
        "encoder": encoder.identity,
        "embedding_cache": {"hits": cache_stats.hits, "misses": cache_stats.misses},
        "feature_dim": int(vectors.shape[1]),
    }
    return RefineData(base=base_pairs, pool=pool, heldout=pairs(held_chosen, held_rejected)), info
