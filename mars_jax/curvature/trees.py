"""Linear algebra on pytrees shaped like model parameters, without ravelling them.

A *vector* is any pytree of floating arrays (usually shaped like the parameters, ``P``
numbers in all). A *stack* is a pytree of the same structure whose leaves carry an extra
leading axis ``k``: ``k`` vectors stored together, as a Krylov basis or a sketch. Inner
products run at the highest matmul precision so that accelerators do not drop to TF32.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp

from mars_jax.types import PyTree

__all__ = [
    "dependence_rtol",
    "stack_combine",
    "stack_dot",
    "stack_orthonormalize",
    "stack_project_out",
    "tree_axpy",
    "tree_dot",
    "tree_dtype",
    "tree_norm",
    "tree_normalize",
    "tree_random_like",
    "tree_scale",
    "tree_size",
]

_HIGHEST = jax.lax.Precision.HIGHEST
PROBE_KINDS = ("rademacher", "normal")


def tree_size(tree: PyTree) -> int:
    """Number of elements ``P`` over all leaves (a static Python int)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def tree_dtype(tree: PyTree) -> jnp.dtype:
    """The common dtype of the leaves (what their inner products come out as)."""
    return jnp.result_type(*jax.tree.leaves(tree))


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    """Inner product ``<a, b>`` summed over all leaves; a scalar."""
    terms = [
        jnp.vdot(x, y, precision=_HIGHEST)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return functools.reduce(operator.add, terms, jnp.zeros((), tree_dtype(a)))


def tree_norm(tree: PyTree) -> jax.Array:
    """Euclidean norm over all leaves; a scalar."""
    return jnp.sqrt(tree_dot(tree, tree))


def tree_scale(alpha: jax.Array | float, tree: PyTree) -> PyTree:
    """``alpha * tree`` for a scalar ``alpha``."""
    return jax.tree.map(lambda leaf: (alpha * leaf).astype(leaf.dtype), tree)


def tree_axpy(alpha: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """``alpha * x + y`` for a scalar ``alpha`` (BLAS ``axpy``)."""
    return jax.tree.map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


def tree_normalize(tree: PyTree) -> PyTree:
    """``tree / ||tree||``, or ``tree`` unchanged when its norm is 0 (never NaN)."""
    norm = tree_norm(tree)
    return tree_scale(jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 1.0), tree)


def tree_random_like(key: jax.Array, tree: PyTree, *, kind: str = "rademacher") -> PyTree:
    """A random vector shaped like ``tree``: entries ``+-1`` (Rademacher) or standard normal.

    Args:
      key: PRNG key; each leaf gets its own subkey.
      tree: pytree of floating arrays giving the shapes and dtypes.
      kind: ``"rademacher"`` or ``"normal"``.

    Returns:
      A pytree like ``tree`` with ``E[z z^T] = I``.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    draw = jax.random.rademacher if kind == "rademacher" else jax.random.normal
    drawn = [draw(k, leaf.shape, dtype=leaf.dtype) for k, leaf in zip(keys, leaves, strict=False)]
    return jax.tree.unflatten(treedef, drawn)


def dependence_rtol(dtype: jnp.dtype) -> float:
    """``sqrt(eps)`` of ``dtype``: below this relative norm a projected vector counts as 0.

    After two Gram-Schmidt passes a vector of relative norm ``t`` keeps an orthogonality
    error of about ``eps / t``; dropping it instead costs about ``t``. ``sqrt(eps)``
    balances the two.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5


def stack_dot(stack: PyTree, vector: PyTree) -> jax.Array:
    """Inner products ``[k]`` of each of the ``k`` stacked vectors with ``vector``."""
    terms = [
        jnp.tensordot(s, v, axes=v.ndim, precision=_HIGHEST)
        for s, v in zip(jax.tree.leaves(stack), jax.tree.leaves(vector), strict=True)
    ]
    return functools.reduce(operator.add, terms)


def stack_combine(coefficients: jax.Array, stack: PyTree) -> PyTree:
    """The vector ``sum_i coefficients[i] * stack[i]`` for ``coefficients`` of shape ``[k]``."""
    return jax.tree.map(
        lambda s: jnp.tensordot(coefficients.astype(s.dtype), s, axes=1, precision=_HIGHEST),
        stack,
    )


def stack_project_out(stack: PyTree, vector: PyTree) -> PyTree:
    """``(I - Q^T Q) vector`` for orthonormal (or zero) stacked rows ``Q``.

    One classical Gram-Schmidt pass; apply it twice for orthogonality to working precision.
    """
    return tree_axpy(-1.0, stack_combine(stack_dot(stack, vector), stack), vector)


def stack_orthonormalize(stack: PyTree) -> PyTree:
    """Orthonormal rows spanning the ``k`` stacked vectors (Gram-Schmidt done twice).

    Row ``i`` is vector ``i`` with its components along rows ``< i`` removed, then
    normalised; a vector that is numerically dependent on the earlier ones (relative norm
    below :func:`dependence_rtol` after projection) gives a zero row, so the result is
    never NaN and its nonzero rows are orthonormal. Runs in a ``lax.fori_loop`` over ``k``.

    Args:
      stack: ``k`` stacked vectors (leaves ``[k, ...]``).

    Returns:
      A stack of the same shape.
    """
    num_rows = jax.tree.leaves(stack)[0].shape[0]
    rtol = dependence_rtol(tree_dtype(stack))

    def body(i: jax.Array, basis: PyTree) -> PyTree:
        row = jax.tree.map(lambda s: s[i], stack)
        projected = stack_project_out(basis, stack_project_out(basis, row))
        norm = tree_norm(projected)
        keep = norm > rtol * tree_norm(row)
        unit = tree_scale(jnp.where(keep, 1.0 / jnp.where(keep, norm, 1.0), 0.0), projected)
        return jax.tree.map(lambda b, u: b.at[i].set(u), basis, unit)

    return jax.lax.fori_loop(0, num_rows, body, jax.tree.map(jnp.zeros_like, stack))
