"""Stochastic trace estimators from operator products: Hutchinson and Hutch++.

Both take ``matvec(vector) -> vector`` (bind params and batch inside the caller's ``jit``), a
PRNG ``key`` and ``like``, a pytree giving the shapes of the vectors (usually the
parameters). Results carry a standard error. ``batched=True`` vmaps the probes (``S``
vectors in memory at once, fewer but larger kernels); ``batched=False`` loops over them
with ``lax.map`` (one probe in memory; on CPU it was also the faster of the two).

Example:
  >>> import jax, jax.numpy as jnp
  >>> diagonal = jnp.arange(1.0, 5.0)
  >>> result = hutchinson_trace(lambda v: diagonal * v, jax.random.key(0), diagonal,
  ...                           num_probes=4)
  >>> float(result.estimate), float(result.std_error)  # exact on a diagonal
  (10.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mars_jax.curvature._json import to_builtin
from mars_jax.curvature.trees import (
    stack_orthonormalize,
    stack_project_out,
    tree_dot,
    tree_random_like,
)
from mars_jax.types import Matvec, PyTree

__all__ = ["TraceResult", "hutch_plus_plus", "hutchinson_trace"]


class TraceResult(NamedTuple):
    """A trace estimate with its standard error.

    Attributes:
      estimate: scalar estimate of ``tr(A)``.
      std_error: scalar sample standard deviation of the random part over ``sqrt`` of its
        number of probes.
      num_probes: operator applications spent (for Hutch++, the whole budget).
    """

    estimate: jax.Array
    std_error: jax.Array
    num_probes: int

    def to_json(self) -> dict[str, Any]:
        """All fields as plain Python values."""
        return {
            "estimate": to_builtin(self.estimate),
            "std_error": to_builtin(self.std_error),
            "num_probes": to_builtin(self.num_probes),
        }


def _map_probes(fn: Callable[[Any], Any], xs: Any, *, batched: bool) -> Any:
    """``fn`` over the leading axis of ``xs``: vmapped, or looped with ``lax.map``."""
    return jax.vmap(fn)(xs) if batched else jax.lax.map(fn, xs)


def _mean_and_error(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and standard error (``ddof = 1``) of ``[S]`` samples, ``S >= 2``."""
    return jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(samples.shape[0])


def hutchinson_trace(
    matvec: Matvec,
    key: jax.Array,
    like: PyTree,
    *,
    num_probes: int,
    probe: str = "rademacher",
    batched: bool = False,
) -> TraceResult:
    """Hutchinson's estimate ``mean_s z_s^T A z_s`` of ``tr(A)`` from ``S`` random probes.

    Rademacher probes have the smallest variance, ``2 sum_{i != j} A_ij^2`` per sample
    (exact for a diagonal ``A``); normal probes ``2 ||A||_F^2``.

    Args:
      matvec: ``A``: ``matvec(vector) -> vector``.
      key: PRNG key; probe ``s`` uses ``jax.random.split(key, S)[s]``.
      like: pytree giving the shapes and dtypes of the probes.
      num_probes: ``S`` (static, ``>= 2`` for a standard error).
      probe: "rademacher" or "normal".
      batched: vmap the probes instead of looping over them.

    Returns:
      :class:`TraceResult`; same ``key`` gives the same result either way of ``batched``.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")

    def sample(probe_key: jax.Array) -> jax.Array:
        vector = tree_random_like(probe_key, like, kind=probe)
        return tree_dot(vector, matvec(vector))

    samples = _map_probes(sample, jax.random.split(key, num_probes), batched=batched)
    estimate, std_error = _mean_and_error(samples)
    return TraceResult(estimate, std_error, num_probes)


def hutch_plus_plus(
    matvec: Matvec,
    key: jax.Array,
    like: PyTree,
    *,
    num_matvecs: int,
    probe: str = "rademacher",
    batched: bool = False,
) -> TraceResult:
    """Hutch++ (Meyer, Musco, Musco and Woodruff, 2021): sketch the top of the spectrum.

    With ``k = num_matvecs // 3``: ``Q = orth(A S)`` for ``k`` random probes ``S``
    (``k`` products), the exact ``tr(Q^T A Q)`` (``k`` products), plus Hutchinson on the
    deflated ``(I - Q Q^T) A (I - Q Q^T)`` with the remaining ``num_matvecs - 2k`` probes.
    Unbiased for any orthonormal ``Q``; the error falls like ``1 / num_matvecs`` instead of
    ``1 / sqrt(num_matvecs)`` when the spectrum decays, as a Hessian's does. ``Q`` is a stack
    of ``k`` pytrees orthonormalised by Gram-Schmidt twice (no ravelling); directions that
    ``A S`` does not numerically span are dropped, which leaves the estimate unbiased.

    Args:
      matvec: symmetric ``A``: ``matvec(vector) -> vector``.
      key: PRNG key.
      like: pytree giving the shapes and dtypes of the probes.
      num_matvecs: total operator applications (static, ``>= 4``).
      probe: "rademacher" or "normal".
      batched: vmap the products instead of looping over them.

    Returns:
      :class:`TraceResult` whose ``std_error`` is that of the Hutchinson part (the sketch
      part is exact given ``Q``) and ``num_probes`` is ``num_matvecs``.
    """
    if num_matvecs < 4:
        raise ValueError(f"num_matvecs must be >= 4, got {num_matvecs}")
    sketch_size = num_matvecs // 3
    num_probes = num_matvecs - 2 * sketch_size
    sketch_key, probe_key = jax.random.split(key)

    def draw(draw_key: jax.Array) -> PyTree:
        return tree_random_like(draw_key, like, kind=probe)

    sketch = jax.vmap(draw)(jax.random.split(sketch_key, sketch_size))
    basis = stack_orthonormalize(_map_probes(matvec, sketch, batched=batched))

    def quadratic_form(vector: PyTree) -> jax.Array:
        return tree_dot(vector, matvec(vector))

    top = jnp.sum(_map_probes(quadratic_form, basis, batched=batched))

    def deflated_sample(sample_key: jax.Array) -> jax.Array:
        vector = draw(sample_key)
        return quadratic_form(stack_project_out(basis, vector))

    samples = _map_probes(deflated_sample, jax.random.split(probe_key, num_probes), batched=batched)
    rest, std_error = _mean_and_error(samples)
    return TraceResult(top + rest, std_error, num_matvecs)
