"""Real preference pairs as the refinement loop's data: read, clean, split, embed, augment.

The frozen-encoder path: every response is read as ``prompt [SEP] response`` (truncated from
the left, so the response survives a long dialogue) and embedded once by a frozen text encoder
(all-MiniLM-L6-v2 by default), with an on-disk cache reused across runs. The features are
standardised with the base pairs' statistics. The synthetic pool (``data.pool``) comes from a
cheap representation-level generator on those features (:mod:`mars_jax.augment.cheap`:
perturbations or mixup, in the same paraphrase scheme as the synthetic suite), or from a
paraphrase pool directory written by ``mars-jax augment``: its texts are embedded by the same
encoder (through the same cache) and matched to the base pairs by base key; a pool pair of a
base pair whose label was flipped is flipped too, since it inherits its base pair's label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.augment.cheap import POOL_GENERATORS, make_cheap_pool
from mars_jax.augment.pool import PoolContents, base_keys, read_pool
from mars_jax.config import Config, ConfigError
from mars_jax.data.formats import ReadResult, read_pairs
from mars_jax.data.table import (
    CleaningReport,
    PairTable,
    clean_pairs,
    sample_pairs,
    split_by_group,
)
from mars_jax.errors import MarsError
from mars_jax.models.embeddings import EmbeddingCache, TextEncoder, embed_with_cache, pair_text
from mars_jax.models.pretrained import resolve_encoder
from mars_jax.refine import RefineData
from mars_jax.types import PairBatch, Pool, PyTree

__all__ = [
    "BaseSelection",
    "build_text_data",
    "directory_pool",
    "flip_labels",
    "read_pool_option",
    "select_base_pairs",
    "selection_info",
]


class BaseSelection(NamedTuple):
    """The pairs a run uses, and how they were chosen from the files.

    Attributes:
      read: what the readers returned (all pairs, invalid-record counts).
      cleaning: what cleaning dropped.
      train: the training side of the split by prompt or post.
      heldout: the held-out side.
      base: the sampled base pairs (labels as read: before any flips).
      held: the sampled held-out pairs.
    """

    read: ReadResult
    cleaning: CleaningReport
    train: PairTable
    heldout: PairTable
    base: PairTable
    held: PairTable


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


def select_base_pairs(config: Config) -> BaseSelection:
    """Read, clean, split and sample the pairs of ``config.data.paths`` as a run does."""
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
    return BaseSelection(read, cleaning, train, heldout, base, held)


def selection_info(config: Config, selection: BaseSelection, flipped: np.ndarray) -> dict[str, Any]:
    """JSON-able description of the files read, the cleaning, the split and the label flips."""
    read = selection.read
    return {
        "suite": "pairs",
        "paths": list(config.data.paths),
        "pairs_read": len(read.table),
        "invalid_records": read.invalid,
        "invalid_examples": list(read.first_errors),
        "ranked_ties_skipped": read.ties,
        "cleaning": selection.cleaning.to_json(),
        "train_side_pairs": len(selection.train),
        "heldout_side_pairs": len(selection.heldout),
        "num_base_pairs": len(selection.base),
        "num_heldout_pairs": len(selection.held),
        "num_flipped": int(flipped.sum()),
    }


def read_pool_option(config: Config) -> PoolContents | None:
    """The pool directory named by ``data.pool``, or None for a cheap generator's name."""
    pool = config.data.pool
    if pool in POOL_GENERATORS:
        return None
    if not Path(pool).expanduser().is_dir():
        raise ConfigError(
            f"data.pool: {pool!r} is neither one of {', '.join(POOL_GENERATORS)} "
            "nor a pool directory"
        )
    return read_pool(Path(pool).expanduser())


def directory_pool(
    contents: PoolContents,
    base: PairTable,
    flipped: np.ndarray,
    embed: Callable[[list[str]], PyTree],
    separator: str,
) -> tuple[Pool, dict[str, Any]]:
    """The pool read from a pool directory for ``base`` (unflipped texts), as model inputs.

    ``embed(texts)`` gives the inputs of ``N`` texts (a pytree with leading axis ``N``):
    standardised features ``[N, D]``, or token ids for a fine-tuned encoder.
    """
    directory = contents.directory
    keys = base_keys(base.prompt, base.chosen, base.rejected)
    per_base = contents.pairs_for(keys)
    counts = np.array([len(pairs) for pairs in per_base])
    if not counts.sum():
        raise MarsError(
            f"data.pool: {directory} has no pool pairs for any of the {len(keys)} base pairs "
            "(was it built for other files or another data selection?)"
        )
    chosen, rejected = [], []
    for pairs, flip in zip(per_base, flipped, strict=True):
        for pair in pairs:
            good = pair_text(pair.prompt, pair.chosen, separator)
            bad = pair_text(pair.prompt, pair.rejected, separator)
            chosen.append(bad if flip else good)
            rejected.append(good if flip else bad)
    inputs = embed(chosen + rejected)
    pool = Pool(
        chosen=jax.tree.map(lambda a: a[: len(chosen)], inputs),
        rejected=jax.tree.map(lambda a: a[len(chosen) :], inputs),
        source=jnp.asarray(np.repeat(np.arange(len(keys)), counts), jnp.int32),
        offsets=jnp.asarray(np.concatenate([[0], np.cumsum(counts)]), jnp.int32),
    )
    info = {
        "pool_dir": str(directory),
        "pool_generator": contents.manifest.get("generator"),
        "base_pairs_with_pool_pairs": int(np.count_nonzero(counts)),
    }
    return pool, info


def build_text_data(config: Config) -> tuple[RefineData, dict[str, Any]]:
    """The run's data from the preference files in ``config.data.paths``."""
    data = config.data
    contents = read_pool_option(config)
    selection = select_base_pairs(config)
    base, flipped = flip_labels(selection.base, rate=data.label_flip_rate, seed=data.seed)
    held = selection.held

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
    cache = EmbeddingCache(Path(data.cache_dir).expanduser())
    vectors, cache_stats = embed_with_cache(
        encoder,
        texts,
        cache,
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
    pool_info: dict[str, Any] = {"pool": data.pool}
    if contents is None:
        pool = make_cheap_pool(
            data.pool,
            data.seed,
            base_pairs.chosen,
            base_pairs.rejected,
            paraphrases=data.paraphrases,
            perturbation_scale=data.perturbation_scale,
            prompt_shift_scale=data.prompt_shift_scale,
            mixup_scale=data.mixup_scale,
        )
    else:

        def embed(texts: list[str]) -> jnp.ndarray:
            found, stats = embed_with_cache(
                encoder,
                texts,
                cache,
                batch_size=data.embed_batch_size,
                progress=config.output.progress,
            )
            pool_info["pool_embedding_cache"] = {"hits": stats.hits, "misses": stats.misses}
            return features(found)

        pool, found_info = directory_pool(contents, selection.base, flipped, embed, separator)
        pool_info |= found_info
    info = {
        **selection_info(config, selection, flipped),
        "num_pool_pairs": int(pool.source.shape[0]),
        **pool_info,
        "encoder": encoder.identity,
        "embedding_cache": {"hits": cache_stats.hits, "misses": cache_stats.misses},
        "feature_dim": int(vectors.shape[1]),
    }
    return RefineData(base=base_pairs, pool=pool, heldout=pairs(held_chosen, held_rejected)), info
