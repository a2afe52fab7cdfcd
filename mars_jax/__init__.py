"""mars_jax: margin-aware reward modeling with self-refinement (MARS) in JAX.

Three rings, dependencies pointing inward:

- **kernels**, pure functions of arrays and pytrees: :mod:`~mars_jax.losses` (pairwise losses),
  :mod:`~mars_jax.margins` (per pair, per distinct response, within groups),
  :mod:`~mars_jax.allocation` (budget weights, budgets, pool draws), :mod:`~mars_jax.metrics`,
  :mod:`~mars_jax.curvature` (Hessian and Gauss-Newton products and their estimators);
- **assembly**, immutable states and the steps between them: :mod:`~mars_jax.train`
  (:class:`Trainer` with any optax optimizer), :mod:`~mars_jax.refine` (the MARS round),
  :mod:`~mars_jax.evaluation`, :mod:`~mars_jax.data`, :mod:`~mars_jax.models`,
  :mod:`~mars_jax.augment`, :mod:`~mars_jax.checkpoint`, :mod:`~mars_jax.parallel`;
- **runner**, configs and the command line: :mod:`mars_jax.runner`.

The building blocks below are importable from the top level (``from mars_jax import
allocate``); they are loaded on first use, so ``import mars_jax`` stays cheap.
docs/library.md shows them in use.
"""

from __future__ import annotations

from mars_jax.exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "mars_jax.types": ("PairBatch", "Pool", "ResponsePairs", "RewardFn", "PyTree"),
    "mars_jax.losses": (
        "LossSettings",
        "bradley_terry_loss",
        "hinge_loss",
        "loss_second_derivative",
        "masked_mean",
        "pairwise_loss",
        "pairwise_loss_fn",
        "reward_centering_penalty",
    ),
    "mars_jax.margins": (
        "PairRewards",
        "group_margins",
        "group_rewards",
        "lowest_margin_pairs",
        "pair_margins",
        "response_pair_margins",
        "response_pairs",
    ),
    "mars_jax.allocation": (
        "METHODS",
        "Allocation",
        "adaboost_weights",
        "allocate",
        "draw_from_pool",
        "ensemble_weights",
        "largest_remainder_budgets",
        "mars_weights",
        "pool_size_weights",
    ),
    "mars_jax.metrics": (
        "bootstrap_ci",
        "evaluate_margins",
        "expected_calibration_error",
        "pairwise_accuracy",
        "reward_auc",
        "roc_auc",
        "signal_to_noise",
    ),
    "mars_jax.curvature": (
        "CurvatureReport",
        "CurvatureReporter",
        "CurvatureSettings",
        "curvature_report",
        "gauss_newton_vector_product",
        "hessian_vector_product",
        "hutch_plus_plus",
        "hutchinson_trace",
        "lanczos",
        "lanczos_eigenvalues",
        "power_iteration",
        "spectral_density",
    ),
    "mars_jax.train": (
        "FitSettings",
        "OptimizerSettings",
        "TrainState",
        "Trainer",
    ),
    "mars_jax.evaluation": ("EvalSettings", "Evaluator"),
    "mars_jax.refine": (
        "RefineData",
        "RefineSettings",
        "Refiner",
        "RoundState",
        "RoundSummary",
    ),
    "mars_jax.models.heads": ("RewardModel", "init_members", "mlp_reward_model"),
}
__all__, __getattr__ = lazy_exports("mars_jax", _EXPORTS)
