"""mars_jax: margin-aware reward modeling with self-refinement (MARS) in JAX.

The building blocks are pure functions of arrays and pytrees:

- :mod:`mars_jax.losses`: pairwise losses and a safe masked mean;
- :mod:`mars_jax.margins`: per-pair and within-group margins, lowest-margin selection;
- :mod:`mars_jax.allocation`: budget weights, largest-remainder budgets, pool draws;
- :mod:`mars_jax.metrics`: accuracy, ROC-AUC, signal-to-noise, calibration, bootstrap.

The assembly (:mod:`mars_jax.train`, :mod:`mars_jax.refine`) threads immutable states
through a thin loop; :mod:`mars_jax.experiment` and :mod:`mars_jax.cli` run configs.
"""

__version__ = "0.1.0"
