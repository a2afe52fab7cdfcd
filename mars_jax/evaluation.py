"""Held-out evaluation of a (member-stacked) reward model, with a bootstrap interval.

An :class:`Evaluator` scores held-out pairs with the model's member-averaged reward and
reduces the margins to :func:`mars_jax.metrics.evaluate_margins` (accuracy, tie rate,
ROC-AUC, signal-to-noise, calibration) plus a bootstrap 95% interval of the accuracy. Its
compiled functions belong to it, so one evaluator per run compiles each shape once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from mars_jax.metrics import bootstrap_ci, evaluate_margins
from mars_jax.parallel import Placement
from mars_jax.settings import setting
from mars_jax.train import Trainer
from mars_jax.types import PairBatch, PyTree

__all__ = ["EvalSettings", "Evaluator"]


@dataclass(frozen=True)
class EvalSettings:
    """Held-out metrics and the margin histograms of the rounds."""

    num_bootstrap: int = setting(
        1000, "bootstrap resamples for confidence intervals (0 disables intervals)", min=0
    )
    calibration_bins: int = setting(10, "bins of the reliability diagram and ECE", min=1)
    histogram_bins: int = setting(30, "bins of the margin histograms", min=2)


@dataclass(frozen=True)
class Evaluator:
    """Held-out metrics of a trainer's models (sharded over ``placement`` when given)."""

    trainer: Trainer
    settings: EvalSettings = EvalSettings()
    placement: Placement | None = None
    _compiled: dict[str, Callable] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __call__(self, params: PyTree, pairs: PairBatch, key: jax.Array) -> dict[str, float]:
        """Metrics of the member-averaged reward on ``pairs``, with a bootstrap accuracy CI.

        Args:
          params: member-stacked parameters (leading axis ``M``).
          pairs: held-out pairs (``B`` of them).
          key: PRNG key of the bootstrap.
        """
        num_bins = self.settings.calibration_bins
        placement = self.placement
        if placement is None:
            metrics, margins = self._jit(
                "heldout", lambda: jax.jit(functools.partial(self._heldout, num_bins=num_bins))
            )(params, pairs.chosen, pairs.rejected)
        else:
            num_pairs = pairs.weight.shape[0]
            rewards = self._jit("rewards", lambda: jax.jit(self._mean_rewards))(
                placement.put_params(params), *placement.put_rows((pairs.chosen, pairs.rejected))
            )
            rewards = [placement.unpad(r, num_pairs) for r in rewards]
            metrics, margins = self._jit(
                "metrics", lambda: jax.jit(functools.partial(_reward_metrics, num_bins=num_bins))
            )(*rewards)
        result = {name: float(value) for name, value in metrics.items()}
        if self.settings.num_bootstrap:
            interval = self._jit("interval", lambda: jax.jit(self._accuracy_interval))(key, margins)
            result["accuracy_lower"] = float(interval.lower)
            result["accuracy_upper"] = float(interval.upper)
        return result

    def _mean_rewards(
        self, params: PyTree, chosen: PyTree, rejected: PyTree
    ) -> tuple[jax.Array, jax.Array]:
        """Member-averaged rewards ``([B], [B])`` of the chosen and rejected responses."""
        rewards = self.trainer.member_rewards
        return rewards(params, chosen).mean(axis=0), rewards(params, rejected).mean(axis=0)

    def _heldout(self, params: PyTree, chosen: PyTree, rejected: PyTree, *, num_bins: int):
        return _reward_metrics(*self._mean_rewards(params, chosen, rejected), num_bins)

    def _accuracy_interval(self, key: jax.Array, margins: jax.Array):
        return bootstrap_ci(key, margins, _accuracy, num_resamples=self.settings.num_bootstrap)

    def _jit(self, name: str, build: Callable[[], Callable]) -> Callable:
        if name not in self._compiled:
            self._compiled[name] = build()
        return self._compiled[name]


def _reward_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array, num_bins: int):
    margins = chosen_rewards - rejected_rewards
    metrics = evaluate_margins(
        margins, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, num_bins=num_bins
    )
    return metrics, margins


def _accuracy(margins: jax.Array) -> jax.Array:
    return jnp.mean(margins > 0)
