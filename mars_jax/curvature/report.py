"""Curvature reports: top eigenvalues, trace and spectral density of the loss on subsets.

:func:`curvature_report` estimates, for each named subset of pairs and each operator
(the loss Hessian and/or its Gauss-Newton matrix), the top eigenvalue by power iteration,
the top-k eigenvalues by Lanczos, the trace by Hutchinson and the spectral density by
stochastic Lanczos quadrature. Every report records the dtype and the matmul precision it
was computed with. All estimators for one subset run in one compiled call, which is
compiled once per (model, settings, subset shape).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.curvature.density import spectral_density
from mars_jax.curvature.krylov import lanczos_eigenvalues
from mars_jax.curvature.operators import (
    DEFAULT_LOSS,
    bradley_terry_loss_fn,
    gauss_newton_vector_product,
    hessian_vector_product,
)
from mars_jax.curvature.power import power_iteration
from mars_jax.curvature.trace import hutchinson_trace
from mars_jax.curvature.trees import tree_random_like, tree_size
from mars_jax.train import LossSettings
from mars_jax.types import PairBatch, PyTree, tree_take

__all__ = ["OPERATORS", "CurvatureSettings", "curvature_report", "subsample"]

OPERATORS = ("hessian", "ggn")
RewardFn = Callable[[PyTree, PyTree], jax.Array]


@dataclass(frozen=True)
class CurvatureSettings:
    """What to estimate and how (all counts are static under ``jit``)."""

    operators: tuple[str, ...] = ("hessian",)
    power_iters: int = 20
    lanczos_order: int = 20
    num_eigenvalues: int = 3
    trace_probes: int = 20
    density_order: int = 20
    density_runs: int = 4
    max_pairs: int = 4096
    precision: str = "highest"
    float64: bool = False


DEFAULT_SETTINGS = CurvatureSettings()


def subsample(pairs: PairBatch, key: jax.Array, *, max_pairs: int) -> PairBatch:
    """The pairs with positive weight, at most ``max_pairs`` of them chosen at random."""
    rows = np.flatnonzero(np.asarray(pairs.weight) > 0)
    if rows.size > max_pairs:
        chosen = jax.random.choice(key, rows.size, (max_pairs,), replace=False)
        rows = np.sort(rows[np.asarray(chosen)])
    return PairBatch(
        chosen=tree_take(pairs.chosen, rows),
        rejected=tree_take(pairs.rejected, rows),
        weight=pairs.weight[rows],
    )


def curvature_report(
    reward_fn: RewardFn,
    params: PyTree,
    subsets: Mapping[str, PairBatch],
    key: jax.Array,
    *,
    settings: CurvatureSettings = DEFAULT_SETTINGS,
    loss: LossSettings = DEFAULT_LOSS,
    place_params: Callable[[PyTree], PyTree] | None = None,
    place_pairs: Callable[[PairBatch], PairBatch] | None = None,
    constrain: Callable[[PyTree], PyTree] | None = None,
) -> dict[str, Any]:
    """Curvature of the pairwise loss of ``reward_fn`` at ``params`` on each subset.

    The three optional callables are the caller's sharding (see
    :class:`mars_jax.parallel.Placement`); the estimators themselves know no mesh.

    Args:
      reward_fn: ``reward_fn(params, inputs) -> rewards[B]``; pass the same function
        object across calls so its compiled estimators are reused.
      params: parameter pytree (``P`` parameters in all).
      subsets: name -> pairs; rows with weight 0 are dropped and larger subsets are
        subsampled to ``settings.max_pairs`` pairs.
      key: PRNG key (probes, starting vectors, subsampling).
      settings: estimator sizes, operators, precision and dtype.
      loss: the loss whose curvature is measured (the training loss by default).
      place_params: lays out the (cast) parameters on devices, e.g. fsdp-sharded.
      place_pairs: lays out each subsample, e.g. padded with weight-0 pairs and sharded
        by rows.
      constrain: applied inside ``jit`` to every probe, starting vector and operator
        input and output (pytrees like the parameters), e.g. a sharding constraint that
        keeps Lanczos vectors sharded like the parameters; hashable (compiled per value).

    Returns:
      A JSON-ready dict: ``dtype``, ``matmul_precision``, ``num_params``, and per subset
      ``num_pairs``, ``subsampled`` and per operator ``top_eigenvalue`` (power iteration:
      eigenvalue, residual, iterations), ``top_eigenvalues`` (Lanczos Ritz values and
      residuals), ``trace`` (estimate, standard error, probes) and ``density`` (grid,
      density, nodes, weights).
    """
    dtype = jnp.float64 if settings.float64 else jnp.float32
    report: dict[str, Any] = {
        "dtype": jnp.dtype(dtype).name,
        "matmul_precision": settings.precision,
        "num_params": tree_size(params),
        "subsets": {},
    }
    with jax.enable_x64(settings.float64), jax.default_matmul_precision(settings.precision):
        cast_params = _cast(params, dtype)
        if place_params is not None:
            cast_params = place_params(cast_params)
        for index, (name, pairs) in enumerate(subsets.items()):
            subset_key = jax.random.fold_in(key, index)
            sample_key, estimate_key = jax.random.split(subset_key)
            sample = subsample(pairs, sample_key, max_pairs=settings.max_pairs)
            entry: dict[str, Any] = {
                "num_pairs": int(sample.weight.shape[0]),
                "subsampled": bool(np.sum(np.asarray(pairs.weight) > 0) > settings.max_pairs),
            }
            sample = _cast(sample, dtype)
            if place_pairs is not None:
                sample = place_pairs(sample)
            for operator in settings.operators:
                estimate = _compiled_estimator(reward_fn, operator, settings, loss, constrain)
                results = estimate(cast_params, sample, estimate_key)
                entry[operator] = {field: result.to_json() for field, result in results.items()}
            report["subsets"][name] = entry
    return report


@functools.cache
def _compiled_estimator(
    reward_fn: RewardFn,
    operator: str,
    settings: CurvatureSettings,
    loss: LossSettings,
    constrain: Callable[[PyTree], PyTree] | None = None,
) -> Callable[[PyTree, PairBatch, jax.Array], dict[str, Any]]:
    if operator == "hessian":
        product = hessian_vector_product(bradley_terry_loss_fn(reward_fn, loss=loss))
    elif operator == "ggn":
        product = gauss_newton_vector_product(reward_fn, loss=loss)
    else:
        raise ValueError(f"unknown curvature operator {operator!r}; expected one of {OPERATORS}")

    pin = _identity if constrain is None else constrain

    def estimate(params: PyTree, batch: PairBatch, key: jax.Array) -> dict[str, Any]:
        def matvec(vector: PyTree) -> PyTree:
            return pin(product(params, batch, pin(vector)))

        size = tree_size(params)
        power_key, lanczos_key, trace_key, density_key = jax.random.split(key, 4)
        lanczos_order = min(settings.lanczos_order, size)
        return {
            "top_eigenvalue": power_iteration(
                matvec,
                pin(tree_random_like(power_key, params, kind="normal")),
                num_iters=settings.power_iters,
            ),
            "top_eigenvalues": lanczos_eigenvalues(
                matvec,
                pin(tree_random_like(lanczos_key, params, kind="normal")),
                order=lanczos_order,
                num_eigenvalues=min(settings.num_eigenvalues, lanczos_order),
            ),
            "trace": hutchinson_trace(matvec, trace_key, params, num_probes=settings.trace_probes),
            "density": spectral_density(
                matvec,
                density_key,
                params,
                order=min(settings.density_order, size),
                num_runs=settings.density_runs,
            ),
        }

    return jax.jit(estimate)


def _identity(tree: PyTree) -> PyTree:
    return tree


def _cast(tree: PyTree, dtype: jnp.dtype) -> PyTree:
    """Floating leaves of ``tree`` as ``dtype``; integer leaves (e.g. token ids) unchanged."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
        tree,
    )
