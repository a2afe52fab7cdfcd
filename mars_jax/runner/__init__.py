"""The runner: configs, the ``mars-jax`` command line, run directories, plots and reports.

The only ring that reads a :class:`~mars_jax.runner.config.Config`. It turns config sections
into the library's settings types and calls the assembly (:mod:`mars_jax.refine`,
:mod:`mars_jax.train`, :mod:`mars_jax.data`) in a short loop.

- :mod:`~mars_jax.runner.config`: the schema, TOML files with ``extends``, overrides.
- :mod:`~mars_jax.runner.cli`: ``mars-jax run | curvature | augment | config | models``.
- :mod:`~mars_jax.runner.data`: the run's data under a config.
- :mod:`~mars_jax.runner.experiment`: one run, method by method, round by round.
- :mod:`~mars_jax.runner.resume`, :mod:`~mars_jax.runner.locks`: checkpoints and the run lock.
- :mod:`~mars_jax.runner.logs`, :mod:`~mars_jax.runner.outputs`, :mod:`~mars_jax.runner.plots`,
  :mod:`~mars_jax.runner.console`: what a run writes and shows.
- :mod:`~mars_jax.runner.saved_run`: analyses of a finished run directory.
- :mod:`~mars_jax.runner.augment`: ``mars-jax augment``.

Its names load on first use (``from mars_jax.runner import run_experiment``), so that the
command line answers a bad argument before importing JAX.
"""

from __future__ import annotations

from mars_jax.exports import lazy_exports

_EXPORTS = {
    "mars_jax.runner.config": ("Config", "ConfigError", "load_config"),
    "mars_jax.runner.data": ("build_data",),
    "mars_jax.runner.experiment": ("build_refiners", "build_trainer", "run_experiment"),
}
__all__, __getattr__ = lazy_exports("mars_jax.runner", _EXPORTS)
