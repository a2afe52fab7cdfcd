"""Dense matrices for small problems: an operator from a matrix and a matrix from an operator.

These ravel a pytree into one flat vector of ``P`` numbers (``jax.flatten_util``), which is
the point here: they are oracles and test fixtures for models small enough to hold a
``[P, P]`` matrix, never a path for estimators on real models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mars_jax.types import PyTree

__all__ = ["dense_matvec", "materialize"]


def dense_matvec(vector: PyTree, matrix: jax.Array) -> PyTree:
    """``matrix @ vector`` for a ``[P, P]`` matrix acting on a pytree of ``P`` numbers.

    Operator-style: the matrix is an argument, so ``functools.partial(dense_matvec,
    matrix=a)`` is a ``matvec(vector)`` whose matrix is traced, not baked into a compile.
    The flattening order is that of ``jax.flatten_util.ravel_pytree(vector)``.
    """
    flat, unravel = ravel_pytree(vector)
    return unravel(jnp.matmul(matrix, flat, precision=jax.lax.Precision.HIGHEST))


def materialize(matvec: Callable[[PyTree], PyTree], like: PyTree) -> jax.Array:
    """The ``[P, P]`` matrix of a linear ``matvec`` on pytrees shaped like ``like``.

    Applies ``matvec`` to the ``P`` basis vectors (vmapped) in the flattening order of
    ``jax.flatten_util.ravel_pytree(like)``; column ``j`` is ``matvec(e_j)``.
    """
    flat, unravel = ravel_pytree(like)

    def column(unit: jax.Array) -> jax.Array:
        return ravel_pytree(matvec(unravel(unit)))[0]

    return jax.vmap(column)(jnp.eye(flat.shape[0], dtype=flat.dtype)).T
