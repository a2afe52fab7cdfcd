"""Curvature reports: top eigenvalues, trace and spectral density of the loss on subsets.

A :class:`CurvatureReporter` estimates, for each named subset of pairs and each operator
(the loss Hessian and/or its Gauss-Newton matrix), the top eigenvalue by power iteration,
the top-k eigenvalues by Lanczos, the trace by Hutchinson and the spectral density by
stochastic Lanczos quadrature, and returns a :class:`CurvatureReport`. Every report records
the dtype and the matmul precision it was computed with. All estimators for one subset run in
one compiled call, compiled once per (operator, subset shape) and owned by the reporter, so
the compiled programs live as long as it does. :func:`curvature_report` is the one-shot form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.curvature.density import spectral_density
from mars_jax.curvature.krylov import lanczos_eigenvalues
from mars_jax.curvature.operators import gauss_newton_vector_product, hessian_vector_product
from mars_jax.curvature.power import power_iteration
from mars_jax.curvature.trace import hutchinson_trace
from mars_jax.curvature.trees import tree_random_like, tree_size
from mars_jax.losses import LossSettings, pairwise_loss_fn
from mars_jax.settings import setting
from mars_jax.types import PairBatch, PyTree, RewardFn, tree_take

__all__ = [
    "OPERATORS",
    "CurvatureReport",
    "CurvatureReporter",
    "CurvatureSettings",
    "curvature_report",
    "subsample",
]

OPERATORS = ("hessian", "ggn")


@dataclass(frozen=True)
class CurvatureSettings:
    """What to estimate and how (all counts are static under ``jit``)."""

    operators: tuple[str, ...] = setting(
        ("hessian",),
        "curvature matrices to analyse: the Hessian and/or the Gauss-Newton matrix",
        non_empty=True,
        unique=True,
        item_choices=OPERATORS,
    )
    power_iters: int = setting(20, "power iterations for the top eigenvalue", min=1)
    lanczos_order: int = setting(20, "Lanczos steps for the top eigenvalues", min=2)
    num_eigenvalues: int = setting(3, "top eigenvalues reported from Lanczos", min=1)
    trace_probes: int = setting(20, "Hutchinson probes for the trace", min=2)
    density_order: int = setting(20, "Lanczos steps per spectral-density run", min=2)
    density_runs: int = setting(4, "probes (runs) of stochastic Lanczos quadrature", min=1)
    max_pairs: int = setting(
        4096, "subsets larger than this are subsampled to this many pairs", min=1
    )
    precision: str = setting(
        "highest",
        "matmul precision of curvature products",
        choices=("default", "high", "highest"),
    )
    float64: bool = setting(False, "compute in float64 (CPU validation; slower)")


@dataclass(frozen=True)
class CurvatureReport:
    """Curvature estimates of one model on named subsets of pairs.

    Attributes:
      dtype: the floating dtype the estimators ran in.
      matmul_precision: their matmul precision.
      num_params: ``P``, the number of parameters.
      subsets: name -> ``num_pairs``, ``subsampled`` and per operator ``top_eigenvalue``
        (power iteration), ``top_eigenvalues`` (Lanczos), ``trace`` (Hutchinson) and
        ``density`` (stochastic Lanczos quadrature), each JSON-ready.
    """

    dtype: str
    matmul_precision: str
    num_params: int
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict of Python scalars and lists."""
        return {
            "dtype": self.dtype,
            "matmul_precision": self.matmul_precision,
            "num_params": self.num_params,
            "subsets": self.subsets,
        }


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


@dataclass(frozen=True)
class CurvatureReporter:
    """Curvature of the pairwise loss of ``reward_fn`` on subsets of pairs.

    The three optional callables are the caller's sharding (see
    :class:`mars_jax.parallel.Placement`); the estimators themselves know no mesh.

    Attributes:
      reward_fn: ``reward_fn(params, inputs) -> rewards[B]``.
      settings: estimator sizes, operators, precision and dtype.
      loss: the loss whose curvature is measured (the training loss by default).
      place_params: lays out the (cast) parameters on devices, e.g. fsdp-sharded.
      place_pairs: lays out each subsample, e.g. padded with weight-0 pairs and sharded
        by rows.
      constrain: applied inside ``jit`` to every probe, starting vector and operator
        input and output (pytrees like the parameters), e.g. a sharding constraint that
        keeps Lanczos vectors sharded like the parameters.
    """

    reward_fn: RewardFn
    settings: CurvatureSettings = CurvatureSettings()
    loss: LossSettings = LossSettings()
    place_params: Callable[[PyTree], PyTree] | None = None
    place_pairs: Callable[[PairBatch], PairBatch] | None = None
    constrain: Callable[[PyTree], PyTree] | None = None
    _compiled: dict[str, Callable] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __call__(
        self, params: PyTree, subsets: Mapping[str, PairBatch], key: jax.Array
    ) -> CurvatureReport:
        """Estimates at ``params`` (``P`` parameters) on each subset.

        Args:
          params: parameter pytree.
          subsets: name -> pairs; rows with weight 0 are dropped and larger subsets are
            subsampled to ``settings.max_pairs`` pairs.
          key: PRNG key (probes, starting vectors, subsampling).
        """
        settings = self.settings
        dtype = jnp.float64 if settings.float64 else jnp.float32
        report = CurvatureReport(
            dtype=jnp.dtype(dtype).name,
            matmul_precision=settings.precision,
            num_params=tree_size(params),
        )
        with jax.enable_x64(settings.float64), jax.default_matmul_precision(settings.precision):
            cast_params = _cast(params, dtype)
            if self.place_params is not None:
                cast_params = self.place_params(cast_params)
            for index, (name, pairs) in enumerate(subsets.items()):
                subset_key = jax.random.fold_in(key, index)
                sample_key, estimate_key = jax.random.split(subset_key)
                sample = subsample(pairs, sample_key, max_pairs=settings.max_pairs)
                entry: dict[str, Any] = {
                    "num_pairs": int(sample.weight.shape[0]),
                    "subsampled": bool(np.sum(np.asarray(pairs.weight) > 0) > settings.max_pairs),
                }
                sample = _cast(sample, dtype)
                if self.place_pairs is not None:
                    sample = self.place_pairs(sample)
                for operator in settings.operators:
                    results = self._estimator(operator)(cast_params, sample, estimate_key)
                    entry[operator] = {name: result.to_json() for name, result in results.items()}
                report.subsets[name] = entry
        return report

    def _estimator(self, operator: str) -> Callable[[PyTree, PairBatch, jax.Array], dict]:
        """The compiled estimators of ``operator`` (built on first use, kept by the reporter)."""
        if operator not in self._compiled:
            self._compiled[operator] = jax.jit(
                _estimator(self.reward_fn, operator, self.settings, self.loss, self.constrain)
            )
        return self._compiled[operator]


def curvature_report(
    reward_fn: RewardFn,
    params: PyTree,
    subsets: Mapping[str, PairBatch],
    key: jax.Array,
    *,
    settings: CurvatureSettings = CurvatureSettings(),
    loss: LossSettings = LossSettings(),
) -> CurvatureReport:
    """One-shot :class:`CurvatureReporter` of ``reward_fn`` at ``params`` on ``subsets``."""
    return CurvatureReporter(reward_fn, settings, loss)(params, subsets, key)


def _estimator(
    reward_fn: RewardFn,
    operator: str,
    settings: CurvatureSettings,
    loss: LossSettings,
    constrain: Callable[[PyTree], PyTree] | None = None,
) -> Callable[[PyTree, PairBatch, jax.Array], dict[str, Any]]:
    """All estimators of one operator as one function of ``(params, batch, key)``."""
    if operator == "hessian":
        product = hessian_vector_product(pairwise_loss_fn(reward_fn, loss=loss))
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

    return estimate


def _identity(tree: PyTree) -> PyTree:
    return tree


def _cast(tree: PyTree, dtype: jnp.dtype) -> PyTree:
    """Floating leaves of ``tree`` as ``dtype``; integer leaves (e.g. token ids) unchanged."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
        tree,
    )
