"""Lanczos tridiagonalisation of a symmetric operator on pytrees, as one compiled loop.

``order`` steps (``m``) of Lanczos build an orthonormal Krylov basis ``V`` (``m`` vectors,
stored as a stack: every leaf gets a leading axis ``m``) and the tridiagonal
``T = V^T A V`` with diagonal ``alphas[m]`` and off-diagonal ``betas[m - 1]``. The
eigenvalues of ``T`` (Ritz values) approximate the extreme eigenvalues of ``A`` after far
fewer operator applications than power iteration, and its eigenvectors give the quadrature
of :mod:`mars_jax.curvature.density`. The loop is a ``lax.fori_loop``: the operator is
traced once, so compile time does not grow with ``order``.

Full reorthogonalisation (the default) removes the components of each new vector along all
earlier ones (classical Gram-Schmidt, a second pass when the first cancelled most of the
vector: "twice is enough"), which keeps ``V`` orthonormal and the
Ritz values free of spurious copies, at ``O(m P)`` memory for the basis. Without it only
the last two vectors are kept (``O(P)`` memory), as in textbook Lanczos.

Breakdown: when the new residual is numerically 0 (the Krylov space is invariant, e.g. an
operator with fewer distinct eigenvalues than ``order``), its ``beta`` is set to 0 and the
iteration restarts from a fixed pseudo-random vector orthogonalised against the basis
(against the last two vectors without reorthogonalisation). ``T`` then splits into blocks,
each of them Ritz values of ``A``; no NaN arises.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mars_jax.curvature._json import to_builtin
from mars_jax.curvature.trees import (
    dependence_rtol,
    stack_combine,
    stack_project_out,
    tree_axpy,
    tree_dot,
    tree_dtype,
    tree_norm,
    tree_normalize,
    tree_random_like,
    tree_size,
)
from mars_jax.types import Matvec, PyTree

__all__ = [
    "LanczosResult",
    "RitzResult",
    "lanczos",
    "lanczos_eigenvalues",
    "tridiagonal_eigh",
]

WHICH = ("largest", "smallest", "magnitude")
_RESTART_SEED = 0x5EED
_REFINE = 0.5**0.5  # a second Gram-Schmidt pass below this fraction of the norm


class LanczosResult(NamedTuple):
    """The tridiagonal of ``m`` Lanczos steps.

    Attributes:
      alphas: ``[m]`` diagonal of ``T``.
      betas: ``[m - 1]`` off-diagonal of ``T`` (0 where the iteration broke down).
      residual_norm: scalar ``beta_m``, the norm of the residual after the last step
        (``A V = V T + beta_m v_{m+1} e_m^T``); 0 when the Krylov space is invariant.
      basis: the Krylov basis as a stack (leaves ``[m, ...]``) when requested, else None.
    """

    alphas: jax.Array
    betas: jax.Array
    residual_norm: jax.Array
    basis: PyTree | None

    def to_json(self) -> dict[str, Any]:
        """The tridiagonal as plain Python lists (the basis is left out)."""
        return {
            "alphas": to_builtin(self.alphas),
            "betas": to_builtin(self.betas),
            "residual_norm": to_builtin(self.residual_norm),
        }


class RitzResult(NamedTuple):
    """``k`` Ritz pairs from Lanczos.

    Attributes:
      eigenvalues: ``[k]`` Ritz values in the order asked for.
      residuals: ``[k]`` estimates ``|beta_m s_{m,i}|`` of ``||A x_i - theta_i x_i||`` for unit
        Ritz vectors ``x_i`` (``s_i`` the eigenvectors of ``T``); small means converged.
      eigenvectors: the Ritz vectors as a stack (leaves ``[k, ...]``) when requested, else
        None.
    """

    eigenvalues: jax.Array
    residuals: jax.Array
    eigenvectors: PyTree | None

    def to_json(self) -> dict[str, Any]:
        """Ritz values and residuals as plain Python lists (the vectors are left out)."""
        return {
            "eigenvalues": to_builtin(self.eigenvalues),
            "residuals": to_builtin(self.residuals),
        }


def lanczos(
    matvec: Matvec,
    init_vector: PyTree,
    *,
    order: int,
    reorthogonalize: bool = True,
    return_basis: bool = False,
) -> LanczosResult:
    """``order`` steps of Lanczos on a symmetric ``A`` from ``init_vector``.

    Args:
      matvec: symmetric ``A``: ``matvec(vector) -> vector``.
      init_vector: nonzero pytree to start from (normalised here).
      order: number of steps ``m`` (static, ``1 <= m <= P``).
      reorthogonalize: Gram-Schmidt against the whole basis at every step (twice when needed).
      return_basis: also return the basis (``m`` vectors; kept anyway when
        reorthogonalising).

    Returns:
      :class:`LanczosResult`.
    """
    size = tree_size(init_vector)
    if not 1 <= order <= size:
        raise ValueError(f"order must be in [1, {size}] (the operator's size), got {order}")
    keep_basis = reorthogonalize or return_basis
    init = lanczos_init(init_vector, order, keep_basis=keep_basis)
    step = functools.partial(lanczos_step, matvec, reorthogonalize=reorthogonalize)
    basis, _, _, _, alphas, betas = jax.lax.fori_loop(0, order, step, init)
    return LanczosResult(
        alphas=alphas,
        betas=betas[:-1],
        residual_norm=betas[-1],
        basis=basis if return_basis else None,
    )


class LanczosCarry(NamedTuple):
    """The state of a Lanczos loop after ``m`` steps (buffers of a static length ``n``).

    Attributes:
      basis: stack (leaves ``[n, ...]``) holding ``v_1 .. v_{m+1}`` in rows ``0 .. m``
        (rows past ``n - 1`` are dropped), or None when no basis is kept.
      previous: ``v_m`` (zeros before the first step).
      current: ``v_{m+1}``, the vector the next step applies the operator to.
      beta_previous: ``beta_m``, scalar.
      alphas: ``[n]`` diagonal of ``T``, filled up to ``m``.
      betas: ``[n]`` norms of the residuals, filled up to ``m``; ``betas[i]`` couples
        ``v_{i+1}`` and ``v_{i+2}``.
    """

    basis: PyTree | None
    previous: PyTree
    current: PyTree
    beta_previous: jax.Array
    alphas: jax.Array
    betas: jax.Array


def lanczos_init(init_vector: PyTree, length: int, *, keep_basis: bool) -> LanczosCarry:
    """The carry before the first step, with buffers for ``length`` steps."""
    dtype = tree_dtype(init_vector)
    first = tree_normalize(init_vector)
    basis = None
    if keep_basis:
        basis = jax.tree.map(
            lambda leaf: jnp.zeros((length, *leaf.shape), leaf.dtype).at[0].set(leaf), first
        )
    return LanczosCarry(
        basis,
        jax.tree.map(jnp.zeros_like, first),
        first,
        jnp.zeros((), dtype),
        jnp.zeros((length,), dtype),
        jnp.zeros((length,), dtype),
    )


def project_out_rows(stack: PyTree, vector: PyTree, count: jax.Array, *, chunk: int) -> PyTree:
    """``vector`` without its components along the first ``count`` rows of ``stack``.

    One Gram-Schmidt pass over rows ``0 .. count - 1``, ``chunk`` rows at a time in a
    ``lax.fori_loop`` (block modified Gram-Schmidt): it reads about ``count`` rows rather
    than the whole buffer, so a Lanczos step costs ``O(m P)`` at order ``m`` whatever the
    buffer's length. The rows must be orthonormal or zero; the last chunk may overlap the
    one before it or rows past ``count``, which changes nothing when those rows are zero or
    already projected out.
    """
    length = jax.tree.leaves(stack)[0].shape[0]
    chunk = min(chunk, length)

    def body(index: jax.Array, vector: PyTree) -> PyTree:
        start = jnp.minimum(index * chunk, length - chunk)
        rows = jax.tree.map(lambda s: jax.lax.dynamic_slice_in_dim(s, start, chunk), stack)
        return stack_project_out(rows, vector)

    return jax.lax.fori_loop(0, (count + chunk - 1) // chunk, body, vector)


def _orthogonalize(
    vector: PyTree,
    carry: LanczosCarry,
    current: PyTree,
    step: jax.Array,
    *,
    reorthogonalize: bool,
    chunk: int | None,
) -> PyTree:
    """``vector`` without its components along the basis, or along the last two vectors.

    Against the basis: one classical Gram-Schmidt pass, and a second only when the first
    cancelled most of the vector (its norm fell below ``1/sqrt(2)`` of what it was: the
    Daniel-Gragg-Kaufman-Stewart criterion, as in ARPACK). A Lanczos residual is nearly
    orthogonal to the basis already, so the second pass is rarely needed; skipping it halves
    the reorthogonalisation's reads of the basis.
    """
    if not reorthogonalize:
        for known in (carry.previous, current):
            vector = tree_axpy(-tree_dot(known, vector), known, vector)
        return vector

    def project(vector: PyTree) -> PyTree:
        if chunk is None:
            return stack_project_out(carry.basis, vector)
        return project_out_rows(carry.basis, vector, step + 1, chunk=chunk)

    before = tree_norm(vector)
    vector = project(vector)
    cancelled = tree_norm(vector) < _REFINE * before
    return jax.lax.cond(cancelled, project, lambda v: v, vector)


def lanczos_step(
    matvec: Matvec,
    step: jax.Array,
    carry: LanczosCarry,
    *,
    reorthogonalize: bool,
    chunk: int | None = None,
) -> LanczosCarry:
    """Lanczos step ``step`` (0-based): one product, ``alphas[step]`` and ``betas[step]``.

    A ``lax.fori_loop`` body; :func:`lanczos` is ``order`` of these. The carry's ``basis``
    must be kept (not None) when ``reorthogonalize``. With ``chunk`` the reorthogonalisation
    reads only the ``step + 1`` rows written so far, ``chunk`` at a time
    (:func:`project_out_rows`), instead of the whole buffer: for loops whose buffer is
    longer than the steps they usually run.
    """
    basis, previous, current, beta_previous, alphas, betas = carry
    dtype = alphas.dtype
    rtol = dependence_rtol(dtype)
    orthogonalize = functools.partial(
        _orthogonalize,
        carry=carry,
        current=current,
        step=step,
        reorthogonalize=reorthogonalize,
        chunk=chunk,
    )

    def restart() -> PyTree:
        key = jax.random.fold_in(jax.random.key(_RESTART_SEED), step)
        fresh = tree_random_like(key, current, kind="normal")
        return tree_normalize(orthogonalize(fresh))

    image = matvec(current)
    alpha = tree_dot(current, image)
    residual = tree_axpy(-alpha, current, tree_axpy(-beta_previous, previous, image))
    residual = orthogonalize(residual)
    beta = tree_norm(residual)
    breakdown = beta <= rtol * tree_norm(image)
    following = jax.lax.cond(breakdown, restart, lambda: tree_normalize(residual))
    beta = jnp.where(breakdown, 0.0, beta).astype(dtype)
    if basis is not None:
        basis = jax.tree.map(
            lambda stack, leaf: stack.at[step + 1].set(leaf, mode="drop"), basis, following
        )
    return LanczosCarry(
        basis,
        current,
        following,
        beta,
        alphas.at[step].set(alpha),
        betas.at[step].set(beta),
    )


def tridiagonal_eigh(alphas: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the symmetric tridiagonal ``T`` (``[m]`` and ``[m - 1]``).

    Returns:
      ``(eigenvalues[m], eigenvectors[m, m])``, ascending, eigenvectors in the columns.
    """
    matrix = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    return jnp.linalg.eigh(matrix)


def lanczos_eigenvalues(
    matvec: Matvec,
    init_vector: PyTree,
    *,
    order: int,
    num_eigenvalues: int = 1,
    which: str = "largest",
    reorthogonalize: bool = True,
    return_vectors: bool = False,
) -> RitzResult:
    """``k`` extreme Ritz values (and vectors) of ``A`` from ``order`` Lanczos steps.

    Args:
      matvec: symmetric ``A``: ``matvec(vector) -> vector``.
      init_vector: nonzero pytree to start from.
      order: Lanczos steps ``m`` (static, ``k <= m <= P``).
      num_eigenvalues: ``k`` (static).
      which: "largest" (descending), "smallest" (ascending) or "magnitude" (descending
        ``|lambda|``).
      reorthogonalize: full reorthogonalisation (see :func:`lanczos`).
      return_vectors: also form the Ritz vectors ``V^T s_i`` (needs the basis).

    Returns:
      :class:`RitzResult` of ``k`` pairs.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= num_eigenvalues <= order:
        raise ValueError(f"num_eigenvalues must be in [1, order={order}], got {num_eigenvalues}")
    result = lanczos(
        matvec,
        init_vector,
        order=order,
        reorthogonalize=reorthogonalize,
        return_basis=return_vectors,
    )
    values, vectors = tridiagonal_eigh(result.alphas, result.betas)
    if which == "largest":
        chosen = jnp.argsort(-values)[:num_eigenvalues]
    elif which == "smallest":
        chosen = jnp.argsort(values)[:num_eigenvalues]
    else:
        chosen = jnp.argsort(-jnp.abs(values))[:num_eigenvalues]
    coefficients = vectors[:, chosen]
    residuals = jnp.abs(result.residual_norm * coefficients[-1])
    eigenvectors = None
    if return_vectors:
        eigenvectors = jax.vmap(stack_combine, in_axes=(1, None))(coefficients, result.basis)
    return RitzResult(values[chosen], residuals, eigenvectors)
