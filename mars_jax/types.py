"""Plain pytree containers shared by the kernels, the assembly and the runner.

Inputs of a reward model are any pytree whose leaves share a leading axis (for the
synthetic suite: feature vectors ``[B, D]``; for text models: token ids and masks).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


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


def tree_take(tree: PyTree, indices: jax.Array) -> PyTree:
    """Gather rows ``indices`` (``[M]``) from every leaf of ``tree`` along axis 0."""
    return jax.tree.map(lambda leaf: leaf[indices], tree)


def tree_concat(trees: list[PyTree]) -> PyTree:
    """Concatenate pytrees of the same structure along their leading axis."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=0), *trees)
