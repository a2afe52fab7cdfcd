"""Evaluation metrics for preference pairs, as pure JAX kernels.

A signed margin is ``m = r(chosen) - r(rejected)`` (shape ``[B]``, one per pair); a pair
is ranked correctly when ``m > 0``. Optional ``weights`` (``[B]``, 0 = padding) let the
kernels run on padded batches of a fixed shape; a fully masked batch gives 0, not NaN.
Every function is jit- and vmap-able; Python ints and floats (``num_bins``,
``num_resamples``, ``level``) and the ``statistic`` callable must be static under jit.

Example:
  >>> import jax.numpy as jnp
  >>> from mars_jax.metrics import pairwise_accuracy
  >>> float(pairwise_accuracy(jnp.array([1.0, -1.0, 0.0, 2.0])).accuracy)
  0.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mars_jax.types import PyTree, tree_take

__all__ = [
    "ConfidenceInterval",
    "PairwiseAccuracy",
    "bootstrap_ci",
    "evaluate_margins",
    "expected_calibration_error",
    "pairwise_accuracy",
    "reward_auc",
    "roc_auc",
    "signal_to_noise",
]


class PairwiseAccuracy(NamedTuple):
    """Ranking accuracy of a batch of pairs.

    Attributes:
      accuracy: scalar weighted fraction of pairs with ``m > 0`` (ties count as wrong).
      tie_rate: scalar weighted fraction of pairs with ``m == 0``.
    """

    accuracy: jax.Array
    tie_rate: jax.Array


class ConfidenceInterval(NamedTuple):
    """A point estimate with a percentile bootstrap interval.

    Attributes:
      estimate: scalar statistic of the original data.
      lower: scalar lower end of the interval.
      upper: scalar upper end of the interval.
    """

    estimate: jax.Array
    lower: jax.Array
    upper: jax.Array


def _as_float(x: jax.Array) -> jax.Array:
    """``x`` as an inexact array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _weights_like(weights: jax.Array | None, values: jax.Array) -> jax.Array:
    """``[B]`` weights in the dtype of ``values`` (all ones when ``weights`` is None)."""
    if weights is None:
        return jnp.ones(values.shape, values.dtype)
    return jnp.asarray(weights).astype(values.dtype)


def _safe_div(num: jax.Array, den: jax.Array, default: float) -> jax.Array:
    """``num / den``, or ``default`` where ``den <= 0``, with no NaN in either branch."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), default)


def pairwise_accuracy(margins: jax.Array, weights: jax.Array | None = None) -> PairwiseAccuracy:
    """Weighted fraction of pairs ranked correctly (``m > 0``) and of exact ties.

    Args:
      margins: ``[B]`` signed margins.
      weights: ``[B]`` pair weights, 0 = padding; None weighs every pair 1.

    Returns:
      ``PairwiseAccuracy`` of scalars; both are 0 when every weight is 0.
    """
    margins = _as_float(margins)
    w = _weights_like(weights, margins)
    total = jnp.sum(w)
    correct = jnp.sum(jnp.where(margins > 0, w, 0))
    ties = jnp.sum(jnp.where(margins == 0, w, 0))
    return PairwiseAccuracy(_safe_div(correct, total, 0.0), _safe_div(ties, total, 0.0))


def roc_auc(scores: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Area under the ROC curve, as the (weighted) Mann-Whitney statistic.

    Equals the weighted fraction of (positive, negative) pairs whose positive scores
    higher, with ties counted 1/2. Computed by sorting the scores once and looking each
    positive up with binary search, ``O(B log B)``.

    Args:
      scores: ``[B]`` scores, higher meaning more likely positive.
      labels: ``[B]`` binary labels, 1 (or any value > 0) for positives, 0 for negatives.
      weights: ``[B]`` row weights, 0 = padding; None weighs every row 1.

    Returns:
      Scalar AUC in ``[0, 1]``; 0.5 (chance) when either class has zero total weight,
      where the AUC is undefined.
    """
    scores = _as_float(scores)
    w = _weights_like(weights, scores)
    positive = jnp.asarray(labels) > 0
    pos_w = jnp.where(positive, w, 0)
    neg_w = jnp.where(positive, 0, w)

    order = jnp.argsort(scores)
    sorted_scores = scores[order]
    # cum_neg[k]: total negative weight among the k lowest scores.
    cum_neg = jnp.concatenate([jnp.zeros(1, w.dtype), jnp.cumsum(neg_w[order])])
    below = cum_neg[jnp.searchsorted(sorted_scores, scores, side="left")]
    at_or_below = cum_neg[jnp.searchsorted(sorted_scores, scores, side="right")]
    # Negatives strictly below count 1, tied negatives 1/2.
    wins = jnp.sum(pos_w * 0.5 * (below + at_or_below))
    return _safe_div(wins, jnp.sum(pos_w) * jnp.sum(neg_w), 0.5)


def reward_auc(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> jax.Array:
    """ROC-AUC separating chosen rewards (positives) from rejected rewards (negatives).

    This pools all ``2B`` rewards, as common reward-model evaluation code reports
    ROC-AUC; unlike pairwise accuracy it also compares rewards across pairs.

    Args:
      chosen_rewards: ``[B]`` rewards of the chosen responses.
      rejected_rewards: ``[B]`` rewards of the rejected responses.

    Returns:
      Scalar AUC (see :func:`roc_auc`).
    """
    scores = jnp.concatenate([_as_float(chosen_rewards), _as_float(rejected_rewards)])
    labels = jnp.concatenate(
        [jnp.ones(chosen_rewards.shape, jnp.int32), jnp.zeros(rejected_rewards.shape, jnp.int32)]
    )
    return roc_auc(scores, labels)


def signal_to_noise(margins: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Weighted mean margin over the weighted population std of the margins.

    Args:
      margins: ``[B]`` signed margins.
      weights: ``[B]`` pair weights, 0 = padding; None weighs every pair 1.

    Returns:
      Scalar ratio; 0 when the std is 0 (constant margins, or every weight 0).
    """
    margins = _as_float(margins)
    w = _weights_like(weights, margins)
    total = jnp.sum(w)
    # Shift by one unmasked margin so that constant margins give a variance of exactly 0.
    shift = margins[jnp.argmax(w > 0)]
    centred = margins - shift
    mean_centred = _safe_div(jnp.sum(w * centred), total, 0.0)
    var = _safe_div(jnp.sum(w * jnp.square(centred - mean_centred)), total, 0.0)
    std = jnp.sqrt(var)
    return _safe_div(shift + mean_centred, std, 0.0)


def expected_calibration_error(
    margins: jax.Array, *, num_bins: int = 10, weights: jax.Array | None = None
) -> jax.Array:
    """Expected calibration error of ``p = sigmoid(m)`` as P(chosen is preferred).

    Every held-out pair's outcome is "chosen wins", so the set is symmetrised into ``2B``
    binary predictions: ``p`` with outcome 1 and ``1 - p`` with outcome 0. Predictions
    fall into ``num_bins`` equal-width bins on ``[0, 1]`` (``p = 1`` goes in the last) and
    ``ECE = sum_bins (n_bin / n) * |mean p - mean outcome|`` over the bin.

    Args:
      margins: ``[B]`` signed margins.
      num_bins: number of bins; a Python int (static under jit).
      weights: ``[B]`` pair weights, 0 = padding; None weighs every pair 1.

    Returns:
      Scalar ECE in ``[0, 1]``; 0 when every weight is 0.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    margins = _as_float(margins)
    w = _weights_like(weights, margins)
    p = jax.nn.sigmoid(margins)
    probs = jnp.concatenate([p, 1 - p])
    outcomes = jnp.concatenate([jnp.ones_like(p), jnp.zeros_like(p)])
    both_w = jnp.concatenate([w, w])
    bins = jnp.clip(jnp.floor(probs * num_bins).astype(jnp.int32), 0, num_bins - 1)
    # n_bin / n * |mean p - mean y| = |sum p - sum y| / n, with sums over the bin.
    gap = jax.ops.segment_sum(both_w * (probs - outcomes), bins, num_segments=num_bins)
    return _safe_div(jnp.sum(jnp.abs(gap)), jnp.sum(both_w), 0.0)


def bootstrap_ci(
    key: jax.Array,
    values: PyTree,
    statistic: Callable[[PyTree], jax.Array],
    *,
    num_resamples: int = 1000,
    level: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of ``statistic(values)``.

    Rows are resampled with replacement, ``B`` per resample, the same row indices for
    every leaf of ``values``, with one key per resample (``jax.random.split``) under
    ``jax.vmap``; this holds ``num_resamples`` resampled copies of ``values`` in memory
    at once. Padding rows are resampled like any other, so pass only real rows (or have
    ``statistic`` read weights from ``values``, knowing the resample size then varies).
    To jit, close over ``statistic``, ``num_resamples`` and ``level`` (they are static):
    ``jax.jit(lambda k, v: bootstrap_ci(k, v, stat, num_resamples=500))``.

    Args:
      key: PRNG key.
      values: ``[B]`` array, or pytree of arrays with leading axis ``B``.
      statistic: maps ``values`` (same structure and shapes) to a scalar.
      num_resamples: number of bootstrap resamples ``R``; a Python int.
      level: two-sided coverage in ``(0, 1)``; a Python float.

    Returns:
      ``ConfidenceInterval``: the statistic of the original data and the
      ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its ``R`` resamples.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    num_rows = jax.tree.leaves(values)[0].shape[0]

    def resampled_statistic(k: jax.Array) -> jax.Array:
        rows = jax.random.randint(k, (num_rows,), 0, num_rows)
        return statistic(tree_take(values, rows))

    stats = jax.vmap(resampled_statistic)(jax.random.split(key, num_resamples))
    tail = (1 - level) / 2
    lower, upper = jnp.quantile(_as_float(stats), jnp.array([tail, 1 - tail]))
    return ConfidenceInterval(jnp.asarray(statistic(values)), lower, upper)


def evaluate_margins(
    margins: jax.Array,
    *,
    chosen_rewards: jax.Array | None = None,
    rejected_rewards: jax.Array | None = None,
    num_bins: int = 10,
) -> dict[str, jax.Array]:
    """The standard evaluation metrics of a batch of pairs, in one call.

    Args:
      margins: ``[B]`` signed margins.
      chosen_rewards: ``[B]`` rewards of the chosen responses, for the AUC.
      rejected_rewards: ``[B]`` rewards of the rejected responses, for the AUC.
      num_bins: calibration bins (see :func:`expected_calibration_error`).

    Returns:
      Scalars keyed ``"accuracy"``, ``"tie_rate"``, ``"signal_to_noise"``,
      ``"calibration_error"``, and ``"auc"`` (:func:`reward_auc`) when both reward
      arrays are given.

    Raises:
      ValueError: if only one of ``chosen_rewards`` and ``rejected_rewards`` is given.
    """
    if (chosen_rewards is None) != (rejected_rewards is None):
        raise ValueError("pass both chosen_rewards and rejected_rewards, or neither")
    accuracy = pairwise_accuracy(margins)
    metrics = {
        "accuracy": accuracy.accuracy,
        "tie_rate": accuracy.tie_rate,
        "signal_to_noise": signal_to_noise(margins),
        "calibration_error": expected_calibration_error(margins, num_bins=num_bins),
    }
    if chosen_rewards is not None and rejected_rewards is not None:
        metrics["auc"] = reward_auc(chosen_rewards, rejected_rewards)
    return metrics
