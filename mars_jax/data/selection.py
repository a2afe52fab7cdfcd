"""Which real preference pairs a run uses: read, clean, split by prompt, sample, flip labels.

:class:`TextDataSettings` holds every choice of the real-data path (files, split, sample,
encoder, pool); :func:`select_base_pairs` turns the files into the run's base and held-out
pairs. Embedding them is :mod:`mars_jax.data.text`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mars_jax.data.cheap_pools import POOL_GENERATORS
from mars_jax.data.formats import FORMATS, ReadResult, read_pairs
from mars_jax.data.pool import PoolContents, read_pool
from mars_jax.data.table import (
    CleaningReport,
    PairTable,
    clean_pairs,
    sample_pairs,
    split_by_group,
)
from mars_jax.errors import MarsError
from mars_jax.settings import setting

__all__ = [
    "POOLING_CHOICES",
    "REPRESENTATIONS",
    "STANDARDIZE",
    "BaseSelection",
    "TextDataSettings",
    "flip_labels",
    "read_pool_option",
    "select_base_pairs",
    "selection_info",
]

REPRESENTATIONS = ("joined", "response", "pair")
"""What the frozen encoder reads per response (see :func:`mars_jax.data.text.represent`)."""

POOLING_CHOICES = ("auto", "mean", "cls", "last")
"""``data.pooling``: ``auto`` is ``mean`` for a BERT encoder and ``last`` for an LLM backbone."""

STANDARDIZE = ("features", "difference")
"""How features are scaled (see :class:`mars_jax.data.text.Standardizer`)."""


@dataclass(frozen=True)
class TextDataSettings:
    """Real preference pairs: which files, how they are split, sampled, embedded, augmented."""

    paths: tuple[str, ...] = setting(
        (), "preference files for suite 'pairs' (relative paths: to the working directory)"
    )
    format: str = setting("auto", "format of the preference files", choices=("auto", *FORMATS))
    skip_invalid: bool = setting(False, "skip malformed records (counted) instead of stopping")
    heldout_fraction: float = setting(
        0.2, "share of pairs held out, split by prompt or post (suite 'pairs')", min=0, max=0.9
    )
    encoder: str = setting(
        "all-MiniLM-L6-v2",
        "frozen backbone: all-MiniLM-L6-v2, SmolLM2-135M-Instruct, a Llama GGUF file, or a "
        "BERT or Llama folder in HF layout",
    )
    representation: str = setting(
        "joined",
        "what the frozen encoder reads: 'joined' (prompt [SEP] response), 'response' (the "
        "response alone) or 'pair' (prompt and response apart, features [r, p*r])",
        choices=REPRESENTATIONS,
    )
    standardize: str = setting(
        "features",
        "feature scaling fit on the base pairs: 'features' (spread of all responses) or "
        "'difference' (spread of chosen - rejected)",
        choices=STANDARDIZE,
    )
    length_feature: bool = setting(
        False, "append log(1 + characters) of the response to its features"
    )
    pooling: str = setting(
        "auto",
        "pooling of the backbone's token states: 'mean' or 'cls' (BERT), 'last' (LLM: the last "
        "token's final hidden state); 'auto' is mean for BERT, last for an LLM",
        choices=POOLING_CHOICES,
    )
    layer: int = setting(
        -1,
        "LLM backbone: the block after which the last token's hidden state is read (final "
        "RMSNorm applied); negative counts from the end, -1 is the last block (BERT: -1 only)",
    )
    max_length: int = setting(128, "tokens per prompt + response (the prompt is cut first)", min=8)
    embed_batch_size: int = setting(64, "texts per batch of the embedding job", min=1)
    cache_dir: str = setting(
        "~/.cache/mars_jax/embeddings", "embedding cache, reused across runs", non_empty=True
    )
    seed: int = setting(0, "seed of the data set (independent of the training seed)", min=0)
    validation_fraction: float = setting(
        0.0,
        "share of the training side's pairs held for validation, split by prompt or post "
        "(never the held-out pairs); chooses each round's best epoch (0: none)",
        min=0,
        max=0.5,
    )
    num_base_pairs: int = setting(1000, "labelled base pairs used for training", min=1)
    num_heldout_pairs: int = setting(2000, "held-out pairs used for evaluation", min=1)
    paraphrases: int = setting(
        5,
        "variants each of prompt, chosen and rejected; "
        "the pool has paraphrases**2 pairs per base pair",
        min=1,
    )
    perturbation_scale: float = setting(
        0.5, "std of a response variation (relative to feature scale)", min=0
    )
    prompt_shift_scale: float = setting(0.5, "std of a prompt variation's shift", min=0)
    label_flip_rate: float = setting(
        0.0, "fraction of base-pair labels flipped at random", min=0, max=0.5
    )
    pool: str = setting(
        "perturb",
        "synthetic pool: 'perturb' or 'mixup' (cheap generators on the features), or a pool "
        "directory written by 'mars-jax augment' (suite 'pairs')",
        non_empty=True,
    )
    mixup_scale: float = setting(
        0.3, "largest weight of the other base pair in a 'mixup' variation", min=0, max=1
    )


class BaseSelection(NamedTuple):
    """The pairs a run uses, and how they were chosen from the files.

    Attributes:
      read: what the readers returned (all pairs, invalid-record counts).
      cleaning: what cleaning dropped.
      train: the training side of the split by prompt or post.
      heldout: the held-out side.
      base: the sampled base pairs (labels as read: before any flips).
      held: the sampled held-out pairs.
      validation: the validation pairs (prompts of the training side that no base pair
        has), or None without ``validation_fraction``.
    """

    read: ReadResult
    cleaning: CleaningReport
    train: PairTable
    heldout: PairTable
    base: PairTable
    held: PairTable
    validation: PairTable | None = None


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


def select_base_pairs(data: TextDataSettings) -> BaseSelection:
    """Read, clean, split and sample the pairs of ``data.paths`` as a run does."""
    read = read_pairs(
        [Path(p) for p in data.paths], format=data.format, skip_invalid=data.skip_invalid
    )
    table, cleaning = clean_pairs(read.table)
    train, heldout = split_by_group(table, heldout_fraction=data.heldout_fraction, seed=data.seed)
    validation = None
    fit_side = train
    if data.validation_fraction:
        fit_side, validation = split_by_group(
            train, heldout_fraction=data.validation_fraction, seed=data.seed + 2
        )
        if not len(validation):
            raise MarsError(
                f"data.validation_fraction: {data.validation_fraction} of {len(train)} "
                "training-side pairs gives no validation pairs"
            )
    base = sample_pairs(fit_side, max_pairs=data.num_base_pairs, seed=data.seed)
    held = sample_pairs(heldout, max_pairs=data.num_heldout_pairs, seed=data.seed + 1)
    if not len(base) or not len(held):
        raise MarsError(
            f"data.paths: {len(table)} usable pairs give {len(base)} base and {len(held)} "
            "held-out pairs; both must be non-empty (check data.heldout_fraction)"
        )
    return BaseSelection(read, cleaning, train, heldout, base, held, validation)


def selection_info(
    paths: tuple[str, ...], selection: BaseSelection, flipped: np.ndarray
) -> dict[str, Any]:
    """JSON-able description of the files read, the cleaning, the split and the label flips."""
    read = selection.read
    return {
        "suite": "pairs",
        "paths": list(paths),
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
        "num_validation_pairs": 0 if selection.validation is None else len(selection.validation),
    }


def read_pool_option(pool: str) -> PoolContents | None:
    """The pool directory ``pool`` (the ``data.pool`` key), or None for a cheap generator's name.

    Raises:
      MarsError: ``pool`` names neither a generator nor a directory.
    """
    if pool in POOL_GENERATORS:
        return None
    if not Path(pool).expanduser().is_dir():
        raise MarsError(
            f"data.pool: {pool!r} is neither one of {', '.join(POOL_GENERATORS)} "
            "nor a pool directory"
        )
    return read_pool(Path(pool).expanduser())
