"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

For a unit probe ``v`` and ``m`` Lanczos steps, the tridiagonal ``T = U diag(theta) U^T``
gives a Gauss quadrature of ``v^T f(A) v``: nodes ``theta_j`` (Ritz values) and weights
``U[0, j]^2`` (summing to 1). Averaged over ``R`` random probes it estimates the spectral
measure ``(1/P) sum_i delta(lambda_i)``; a Gaussian of width ``sigma`` on each node turns it
into a density curve. ``P * sum_j weight_j * node_j`` (averaged over runs) is a trace
estimate, the first moment of the density ``tr(A) / P``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> diagonal = jnp.linspace(0.0, 1.0, 20)
  >>> result = spectral_density(lambda v: diagonal * v, jax.random.key(0), diagonal,
  ...                           order=20, num_runs=2)
  >>> [round(float(total), 4) for total in result.weights.sum(axis=1)]  # one per run
  [1.0, 1.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mars_jax.curvature._json import to_builtin
from mars_jax.curvature.krylov import lanczos, tridiagonal_eigh
from mars_jax.curvature.trees import tree_random_like
from mars_jax.types import Matvec, PyTree

__all__ = ["SpectralDensity", "gaussian_density", "lanczos_quadrature", "spectral_density"]

SIGMA_FRACTION = 0.02
GRID_PAD_SIGMAS = 4.0


class SpectralDensity(NamedTuple):
    """A smoothed spectral density and the quadrature it came from.

    Attributes:
      grid: ``[G]`` increasing evaluation points.
      density: ``[G]`` density on ``grid``, integrating to 1 there (trapezoid rule).
      nodes: ``[R, m]`` Ritz values of each run.
      weights: ``[R, m]`` quadrature weights of each run; each row sums to 1.
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array

    def to_json(self) -> dict[str, Any]:
        """All fields as plain Python lists."""
        return {name: to_builtin(value) for name, value in self._asdict().items()}


def lanczos_quadrature(
    matvec: Matvec,
    key: jax.Array,
    like: PyTree,
    *,
    order: int,
    num_runs: int,
    probe: str = "rademacher",
    reorthogonalize: bool = True,
    batched: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Gauss quadrature nodes and weights of ``R`` Lanczos runs from random probes.

    Args:
      matvec: symmetric ``A``: ``matvec(vector) -> vector``.
      key: PRNG key; run ``r`` uses ``jax.random.split(key, R)[r]``.
      like: pytree giving the shapes and dtypes of the probes.
      order: Lanczos steps ``m`` per run (static, ``1 <= m <= P``).
      num_runs: ``R`` (static, ``>= 1``).
      probe: "rademacher" or "normal" (normalised to unit length by Lanczos).
      reorthogonalize: full reorthogonalisation (see :func:`mars_jax.curvature.lanczos`).
      batched: vmap the runs instead of looping over them.

    Returns:
      ``(nodes[R, m], weights[R, m])``; each row of ``weights`` sums to 1.
    """
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")

    def run(run_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        init = tree_random_like(run_key, like, kind=probe)
        result = lanczos(matvec, init, order=order, reorthogonalize=reorthogonalize)
        nodes, vectors = tridiagonal_eigh(result.alphas, result.betas)
        return nodes, jnp.square(vectors[0])

    keys = jax.random.split(key, num_runs)
    return jax.vmap(run)(keys) if batched else jax.lax.map(run, keys)


def gaussian_density(
    nodes: jax.Array,
    weights: jax.Array,
    *,
    grid: jax.Array | None = None,
    num_grid_points: int = 256,
    sigma: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """A density curve from quadrature nodes and weights, one Gaussian per node.

    ``density(t) = sum weights * N(t; node, sigma^2)`` (summed over all ``N`` nodes, so pass
    weights totalling 1), then divided by its trapezoid integral over ``grid`` so it
    integrates to 1 there. Defaults: ``sigma`` is 2% of the span of the nodes (or of their
    largest magnitude when they all coincide, or 1 when all are 0), and the grid spans the
    nodes plus ``4 sigma`` on each side with ``num_grid_points`` points.

    Args:
      nodes: ``[...]`` nodes (any shape; flattened).
      weights: weights of the same shape.
      grid: ``[G]`` increasing evaluation points, or None for the default.
      num_grid_points: ``G`` of the default grid (static, ``>= 2``).
      sigma: Gaussian width, or None for the default.

    Returns:
      ``(grid[G], density[G])``.
    """
    nodes = jnp.ravel(nodes)
    weights = jnp.ravel(weights)
    low, high = jnp.min(nodes), jnp.max(nodes)
    if sigma is None:
        span = high - low
        magnitude = jnp.max(jnp.abs(nodes))
        scale = jnp.where(span > 0, span, jnp.where(magnitude > 0, magnitude, 1.0))
        sigma = SIGMA_FRACTION * scale
    if grid is None:
        if num_grid_points < 2:
            raise ValueError(f"num_grid_points must be >= 2, got {num_grid_points}")
        pad = GRID_PAD_SIGMAS * sigma
        grid = jnp.linspace(low - pad, high + pad, num_grid_points, dtype=nodes.dtype)
    scaled = (grid[:, None] - nodes[None, :]) / sigma
    bumps = jnp.exp(-0.5 * jnp.square(scaled)) / (sigma * jnp.sqrt(2.0 * jnp.pi))
    density = bumps @ weights
    total = jnp.trapezoid(density, grid)
    return grid, density / jnp.where(total > 0, total, 1.0)


def spectral_density(
    matvec: Matvec,
    key: jax.Array,
    like: PyTree,
    *,
    order: int,
    num_runs: int,
    grid: jax.Array | None = None,
    num_grid_points: int = 256,
    sigma: jax.Array | float | None = None,
    probe: str = "rademacher",
    reorthogonalize: bool = True,
    batched: bool = False,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``R`` runs of ``m`` steps, smoothed into a density.

    The runs are averaged (each run's weights divided by ``R``) before smoothing with
    :func:`gaussian_density`; see :func:`lanczos_quadrature` for the arguments it shares.

    Args:
      matvec: symmetric ``A``: ``matvec(vector) -> vector``.
      key: PRNG key.
      like: pytree giving the shapes and dtypes of the probes.
      order: Lanczos steps ``m`` per run (static).
      num_runs: ``R`` (static).
      grid: ``[G]`` evaluation points, or None for the default grid.
      num_grid_points: ``G`` of the default grid (static).
      sigma: Gaussian width, or None for 2% of the span of the nodes.
      probe: "rademacher" or "normal".
      reorthogonalize: full reorthogonalisation in each run.
      batched: vmap the runs instead of looping over them.

    Returns:
      :class:`SpectralDensity`.
    """
    nodes, weights = lanczos_quadrature(
        matvec,
        key,
        like,
        order=order,
        num_runs=num_runs,
        probe=probe,
        reorthogonalize=reorthogonalize,
        batched=batched,
    )
    grid, density = gaussian_density(
        nodes, weights / num_runs, grid=grid, num_grid_points=num_grid_points, sigma=sigma
    )
    return SpectralDensity(grid, density, nodes, weights)
