"""Curvature of the pairwise reward loss from matrix-free operator products.

Operators (:mod:`~mars_jax.curvature.operators`) turn a loss or a reward model into
``op(params, batch, vector)`` products with the Hessian or the Gauss-Newton matrix.
Estimators take ``matvec(vector) -> vector`` (bind params and batch inside your ``jit``) and
return small result tuples with a ``to_json()``:

- :func:`power_iteration`, :func:`smallest_eigenvalue` -> :class:`PowerResult`;
- :func:`lanczos` -> :class:`LanczosResult`, :func:`lanczos_eigenvalues` -> :class:`RitzResult`;
- :func:`hutchinson_trace`, :func:`hutch_plus_plus` -> :class:`TraceResult`;
- :func:`spectral_density` (stochastic Lanczos quadrature) -> :class:`SpectralDensity`;
- :class:`CurvatureReporter` / :func:`curvature_report`: all of them on named subsets of
  pairs of a reward model -> :class:`CurvatureReport`.

The loss itself comes from :mod:`mars_jax.losses` (:func:`~mars_jax.losses.pairwise_loss_fn`).
- to a tolerance instead of a fixed budget: :func:`top_eigenvalues` ->
  :class:`EigenvaluesResult`, :func:`trace_to_tolerance` -> :class:`TraceToleranceResult`.

Nothing here is jitted at definition time; integer hyperparameters (``num_iters``,
``order``, ``num_probes``, ...) are keyword-only and must be static under ``jit``. Vectors
are pytrees shaped like the parameters; only :mod:`~mars_jax.curvature.dense` ravels them,
for small dense oracles.

Example:
  >>> import functools, jax
  >>> from mars_jax import curvature
  >>> def top_eigenvalue(params, batch, key, *, loss_fn):
  ...     hvp = curvature.hessian_vector_product(loss_fn)
  ...     init = curvature.tree_random_like(key, params)
  ...     return curvature.power_iteration(
  ...         lambda v: hvp(params, batch, v), init, num_iters=20).eigenvalue
  >>> # jax.jit(functools.partial(top_eigenvalue, loss_fn=my_loss_fn))(params, batch, key)
"""

from mars_jax.curvature.dense import dense_matvec, materialize
from mars_jax.curvature.density import (
    SpectralDensity,
    gaussian_density,
    lanczos_quadrature,
    spectral_density,
)
from mars_jax.curvature.krylov import (
    LanczosResult,
    RitzResult,
    lanczos,
    lanczos_eigenvalues,
    tridiagonal_eigh,
)
from mars_jax.curvature.operators import (
    gauss_newton_vector_product,
    hessian_vector_product,
    linear_head_hessian,
    mean_weights,
)
from mars_jax.curvature.power import PowerResult, power_iteration, smallest_eigenvalue
from mars_jax.curvature.report import (
    OPERATORS,
    CurvatureReport,
    CurvatureReporter,
    CurvatureSettings,
    curvature_report,
)
from mars_jax.curvature.tolerance import (
    EigenvaluesResult,
    TraceToleranceResult,
    top_eigenvalues,
    trace_to_tolerance,
)
from mars_jax.curvature.trace import TraceResult, hutch_plus_plus, hutchinson_trace
from mars_jax.curvature.trees import (
    tree_axpy,
    tree_dot,
    tree_norm,
    tree_random_like,
    tree_scale,
)

__all__ = [
    "OPERATORS",
    "CurvatureReport",
    "CurvatureReporter",
    "CurvatureSettings",
    "EigenvaluesResult",
    "LanczosResult",
    "PowerResult",
    "RitzResult",
    "SpectralDensity",
    "TraceResult",
    "TraceToleranceResult",
    "curvature_report",
    "dense_matvec",
    "gauss_newton_vector_product",
    "gaussian_density",
    "hessian_vector_product",
    "hutch_plus_plus",
    "hutchinson_trace",
    "lanczos",
    "lanczos_eigenvalues",
    "lanczos_quadrature",
    "linear_head_hessian",
    "materialize",
    "mean_weights",
    "power_iteration",
    "smallest_eigenvalue",
    "spectral_density",
    "top_eigenvalues",
    "trace_to_tolerance",
    "tree_axpy",
    "tree_dot",
    "tree_norm",
    "tree_random_like",
    "tree_scale",
    "tridiagonal_eigh",
]
