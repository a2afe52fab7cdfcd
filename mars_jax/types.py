"""Plain pytree containers and the type aliases shared by the kernels, assembly and runner.

Inputs of a reward model are any pytree whose leaves share a leading axis (for the
synthetic suite: feature vectors ``[B, D]``; for text models: token ids and masks).
The one contract between the rings is :data:`RewardFn`; curvature code sees only a
:data:`LossFn` and builds :data:`Operator` products and :data:`Matvec` closures from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Embed",
    "LossFn",
    "Matvec",
    "Operator",
    "PairBatch",
    "Pool",
    "PyTree",
    "Records",
    "ResponsePairs",
    "RewardFn",
    "Schedule",
    "tree_concat",
    "tree_take",
]

PyTree = Any
RewardFn = Callable[[PyTree, PyTree], jax.Array]
"""``reward_fn(params, inputs) -> rewards[N]`` for inputs with leading axis ``N``."""
Matvec = Callable[[PyTree], PyTree]
"""A symmetric linear operator on parameter-shaped pytrees, ``v -> A v``."""
Embed = Callable[[Sequence[str]], np.ndarray]
"""``embed(texts) -> [N, D]`` sentence embeddings."""
Schedule = Callable[[jax.Array, jax.Array], jax.Array]
"""``rate(step, num_steps) -> scalar`` learning rate of a step within a schedule."""
Records = dict[str, list[dict[str, Any]]]
"""A run's JSON records (one per round) by method."""


class PairBatch(NamedTuple):
    """A batch of preference pairs.

    Attributes:
      chosen: pytree of inputs for the preferred responses, leading axis ``B``.
      rejected: pytree of inputs for the dispreferred responses, leading axis ``B``.
      weight: ``[B]`` float per-pair loss weights; 0 marks padding.
    """

    chosen: PyTree
    rejected: PyTree
    weight: jax.Array


LossFn = Callable[[PyTree, PairBatch], jax.Array]
"""``loss_fn(params, batch) -> scalar``."""
Operator = Callable[[PyTree, PairBatch, PyTree], PyTree]
"""``op(params, batch, vector) -> vector``: a curvature matrix-vector product."""


class ResponsePairs(NamedTuple):
    """Pairs given as rows of a set of distinct responses (ranked data).

    A prompt with ``K`` ranked responses has up to ``K (K - 1) / 2`` pairs but only ``K``
    responses: scoring the responses once and indexing them costs ``K`` reward evaluations
    per group instead of ``K (K - 1)``.

    Attributes:
      responses: pytree of inputs of the distinct responses, leading axis ``U``.
      chosen: ``[B]`` int32 row of each pair's preferred response.
      rejected: ``[B]`` int32 row of each pair's dispreferred response.
    """

    responses: PyTree
    chosen: jax.Array
    rejected: jax.Array


class Pool(NamedTuple):
    """Synthetic pairs grouped by the base pair they were made from (CSR layout).

    The pairs of base pair ``i`` are rows ``offsets[i]:offsets[i + 1]``.

    Attributes:
      chosen: pytree of inputs, leading axis ``P``.
      rejected: pytree of inputs, leading axis ``P``.
      source: ``[P]`` int32 index of the base pair each row was made from (sorted).
      offsets: ``[N + 1]`` int32 row offsets per base pair; ``offsets[-1] == P``.
    """

    chosen: PyTree
    rejected: PyTree
    source: jax.Array
    offsets: jax.Array

    @classmethod
    def from_sources(
        cls, chosen: PyTree, rejected: PyTree, source: np.ndarray, *, num_base_pairs: int
    ) -> Pool:
        """A pool from synthetic pairs in any order and the base pair each was made from.

        Rows are sorted by ``source`` (stably) and the CSR offsets computed, so callers never
        build them by hand.

        Args:
          chosen: pytree of inputs, leading axis ``P``.
          rejected: pytree of inputs, leading axis ``P``.
          source: ``[P]`` int base-pair index of each row, in ``[0, num_base_pairs)``.
          num_base_pairs: ``N``; base pairs without a row get an empty slice.
        """
        source = np.asarray(source, np.int64)
        if source.size and (source.min() < 0 or source.max() >= num_base_pairs):
            raise ValueError(f"source must lie in [0, {num_base_pairs}), got {source}")
        order = np.argsort(source, kind="stable")
        counts = np.bincount(source, minlength=num_base_pairs)
        return cls(
            chosen=tree_take(chosen, order),
            rejected=tree_take(rejected, order),
            source=jnp.asarray(source[order], jnp.int32),
            offsets=jnp.asarray(np.concatenate([[0], np.cumsum(counts)]), jnp.int32),
        )


def tree_take(tree: PyTree, indices: jax.Array) -> PyTree:
    """Gather rows ``indices`` (``[M]``) from every leaf of ``tree`` along axis 0."""
    return jax.tree.map(lambda leaf: leaf[indices], tree)


def tree_concat(trees: list[PyTree]) -> PyTree:
    """Concatenate pytrees of the same structure along their leading axis."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=0), *trees)
