"""Accuracy floors: what trivial predictors score on a set of preference pairs.

A reward model is worth only what it adds over predictors that see none of the preference
signal a human would use. Two floors, both pure functions of arrays (numpy, float64, no I/O):

- :func:`length_floor`: "the longer response wins", for any per-response length measure.
- :func:`linear_probe_floor`: a cross-validated L2-regularised logistic regression on the
  feature differences ``phi(chosen) - phi(rejected)`` (Bradley-Terry with a linear reward),
  held-out folds split by group so that the pairs of one prompt are never on both sides.

Both count a tie (equal lengths, or a probe score of exactly 0) as half right, and report how
often ties happen. Shapes: ``B`` pairs, ``D`` features.

Example:
  >>> length_floor([10, 3, 5], [2, 7, 5]).accuracy
  0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_L2_GRID",
    "FloorResult",
    "group_folds",
    "length_floor",
    "linear_probe_floor",
]

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The L2 strengths :func:`linear_probe_floor` chooses from by inner cross-validation.

Features are scaled to unit root mean square, and the loss is a mean over pairs, so the grid
spans the nearly unregularised fit (1e-4, for thousands of pairs) to one close to the
scaled mean-difference direction (10), beyond which held-out accuracy no longer changes.
"""

_NEWTON_TOLERANCE = 1e-10  # on half the squared Newton decrement
_ARMIJO = 1e-4


class FloorResult(NamedTuple):
    """The accuracy of a floor predictor.

    Attributes:
      accuracy: fraction of pairs predicted right, ties counting half (for the probe: over the
        held-out pairs, each pair held out once; the fold accuracies' mean weighted by size).
      tie_rate: fraction of pairs the predictor cannot order (equal lengths; probe score 0).
      num_pairs: pairs scored.
      fold_accuracies: held-out accuracy of each fold (probe only; ``()`` for length).
      fold_l2: the L2 strength used in each fold (probe only; ``()`` for length).
    """

    accuracy: float
    tie_rate: float
    num_pairs: int
    fold_accuracies: tuple[float, ...] = ()
    fold_l2: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The fields as plain Python values."""
        return {
            "accuracy": float(self.accuracy),
            "tie_rate": float(self.tie_rate),
            "num_pairs": int(self.num_pairs),
            "fold_accuracies": [float(x) for x in self.fold_accuracies],
            "fold_l2": [float(x) for x in self.fold_l2],
        }


def _scores(scores: np.ndarray) -> tuple[float, float]:
    """(accuracy with ties as half, tie rate) of ``[B]`` scores, positive meaning right."""
    ties = scores == 0
    return float(np.mean((scores > 0) + 0.5 * ties)), float(np.mean(ties))


def length_floor(chosen_lengths: ArrayLike, rejected_lengths: ArrayLike) -> FloorResult:
    """Accuracy of "the longer response wins".

    A pair of equal lengths is a tie and counts as half right (a coin flip's expected
    score); ``tie_rate`` says how many there were.

    Args:
      chosen_lengths: ``[B]`` length of each chosen response, in any unit (characters, words,
        tokens: the caller's choice).
      rejected_lengths: ``[B]`` length of each rejected response, in the same unit.

    Returns:
      The accuracy and tie rate over the ``B`` pairs (no folds).
    """
    chosen = np.asarray(chosen_lengths, dtype=np.float64)
    rejected = np.asarray(rejected_lengths, dtype=np.float64)
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"expected two [B] arrays of lengths, got shapes {chosen.shape} and {rejected.shape}"
        )
    if chosen.size == 0:
        raise ValueError("expected at least one pair, got none")
    if not (np.all(np.isfinite(chosen)) and np.all(np.isfinite(rejected))):
        raise ValueError("lengths must be finite")
    accuracy, tie_rate = _scores(chosen - rejected)
    return FloorResult(accuracy, tie_rate, int(chosen.size))


def group_folds(groups: ArrayLike, num_folds: int, *, seed: int = 0) -> np.ndarray:
    """Assign pairs to folds so that all pairs of a group fall in one fold.

    Groups are visited in a random order (from ``seed``) and each goes to the fold with the
    fewest pairs so far, so folds are about equal in pairs.

    Args:
      groups: ``[B]`` group id of each pair (any hashable numbers, e.g. prompt ids).
      num_folds: number of folds, at most the number of distinct groups.
      seed: seed of the visiting order.

    Returns:
      ``[B]`` int64 fold index in ``0 .. num_folds - 1``.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"expected [B] group ids, got shape {groups.shape}")
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if not 2 <= num_folds <= len(unique):
        raise ValueError(f"num_folds must be in [2, {len(unique)}] (the groups), got {num_folds}")
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = np.zeros(num_folds, dtype=np.int64)
    group_fold = np.empty(len(unique), dtype=np.int64)
    for g in order:
        fold = int(np.argmin(sizes))
        group_fold[g] = fold
        sizes[fold] += counts[g]
    return group_fold[inverse.reshape(-1)]


def _objective(w: np.ndarray, x: np.ndarray, l2: float) -> float:
    """Mean ``log(1 + exp(-x w))`` plus ``l2 / 2 |w|^2``."""
    return float(np.mean(np.logaddexp(0.0, -(x @ w))) + 0.5 * l2 * (w @ w))


def _fit_logistic(x: np.ndarray, l2: float, w: np.ndarray, max_steps: int) -> np.ndarray:
    """Minimise :func:`_objective` by Newton's method with a backtracking line search from w."""
    n, d = x.shape
    value = _objective(w, x, l2)
    for _ in range(max_steps):
        p = 0.5 * (1.0 + np.tanh(-0.5 * (x @ w)))  # sigmoid(-x w), without overflow
        gradient = -(x.T @ p) / n + l2 * w
        hessian = (x.T * (p * (1.0 - p))) @ x / n + l2 * np.eye(d)
        step = np.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)
        if decrement / 2 <= _NEWTON_TOLERANCE:
            break
        t = 1.0
        while (candidate := _objective(w - t * step, x, l2)) > value - _ARMIJO * t * decrement:
            t *= 0.5
            if t < 1e-10:  # no decrease left at float64 precision
                return w
        w, value = w - t * step, candidate
    return w


def _fit_path(x: np.ndarray, l2_grid: Sequence[float], max_steps: int) -> dict[float, np.ndarray]:
    """Weights for each L2 strength, strongest first, each warm-started from the previous."""
    w = np.zeros(x.shape[1])
    path = {}
    for l2 in sorted(set(l2_grid), reverse=True):
        w = _fit_logistic(x, l2, w, max_steps)
        path[l2] = w
    return path


def _scale(x: np.ndarray) -> np.ndarray:
    """Per-feature root mean square of the training differences (1 where it is 0)."""
    rms = np.sqrt(np.mean(x * x, axis=0))
    return np.where(rms > 0, rms, 1.0)


def _choose_l2(
    x: np.ndarray,
    groups: np.ndarray,
    l2_grid: Sequence[float],
    num_inner_folds: int,
    seed: int,
    max_steps: int,
) -> float:
    """The L2 strength of the grid with the least held-out log loss in grouped inner CV."""
    grid = sorted(set(l2_grid), reverse=True)
    if len(grid) == 1:
        return grid[0]
    num_groups = len(np.unique(groups))
    if num_groups < 2:
        raise ValueError("choosing l2 needs 2 groups in each training set; pass one l2 instead")
    folds = group_folds(groups, min(num_inner_folds, num_groups), seed=seed)
    losses = np.zeros(len(grid))
    for fold in range(int(folds.max()) + 1):
        train, test = x[folds != fold], x[folds == fold]
        scale = _scale(train)
        path = _fit_path(train / scale, grid, max_steps)
        for i, l2 in enumerate(grid):
            losses[i] += np.sum(np.logaddexp(0.0, -((test / scale) @ path[l2])))
    return grid[int(np.argmin(losses))]  # the strongest of equally good ones


def linear_probe_floor(
    chosen_features: ArrayLike,
    rejected_features: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    train_mask: ArrayLike | None = None,
    num_folds: int = 5,
    l2: float | Sequence[float] = DEFAULT_L2_GRID,
    num_inner_folds: int = 3,
    max_newton_steps: int = 50,
    seed: int = 0,
) -> FloorResult:
    """Held-out accuracy of a logistic-regression probe on feature differences.

    The probe scores a pair by ``w . (phi(chosen) - phi(rejected))`` and predicts chosen when
    the score is positive (0 is a tie, counted half). It is fit on the training pairs by
    minimising the mean ``log(1 + exp(-w . x))`` plus ``l2 / 2 |w|^2`` over differences ``x``,
    which is the same as logistic regression without intercept on the mirrored examples
    ``(x, 1)`` and ``(-x, 0)``, so no label bias can be learnt. Each feature of ``x`` is first
    divided by its root mean square over the training pairs (not centred: the mean difference
    is signal). Newton's method with a backtracking line search, from zero, in float64, runs
    until the Newton decrement is below 1e-10 or ``max_newton_steps``: deterministic.

    Cross-validation: with ``train_mask``, one split (fit on the masked pairs, score the
    others). Otherwise ``num_folds`` folds from :func:`group_folds` (each pair its own group
    when ``groups`` is None), each held out once. If ``l2`` is a sequence, each fit picks its
    strength by a grouped inner cross-validation (``num_inner_folds`` folds of the training
    pairs, least held-out log loss, ties to the stronger); a float is used as is.

    Args:
      chosen_features: ``[B, D]`` features of the chosen responses.
      rejected_features: ``[B, D]`` features of the rejected responses.
      groups: ``[B]`` group id of each pair (e.g. prompt id); pairs of one group never sit on
        both sides of a split.
      train_mask: ``[B]`` bool, the pairs to fit on; the others are scored (no folds).
      num_folds: outer folds when ``train_mask`` is None (at most the number of groups).
      l2: a strength, or a grid to choose from (default :data:`DEFAULT_L2_GRID`).
      num_inner_folds: inner folds for choosing ``l2`` from a grid.
      max_newton_steps: most Newton steps per fit.
      seed: seed of the fold assignment.

    Returns:
      The held-out accuracy and tie rate over all scored pairs, with per-fold accuracies and
      the L2 strength each fold used.
    """
    chosen = np.asarray(chosen_features, dtype=np.float64)
    rejected = np.asarray(rejected_features, dtype=np.float64)
    if chosen.ndim != 2 or chosen.shape != rejected.shape:
        raise ValueError(
            f"expected two [B, D] feature arrays, got shapes {chosen.shape} and {rejected.shape}"
        )
    num_pairs = chosen.shape[0]
    if num_pairs < 2:
        raise ValueError(f"expected at least 2 pairs, got {num_pairs}")
    x = chosen - rejected
    if not np.all(np.isfinite(x)):
        raise ValueError("features must be finite")
    grid = [float(l2)] if np.ndim(l2) == 0 else [float(v) for v in l2]
    if not grid or min(grid) <= 0:
        raise ValueError(f"l2 must be positive (a number or a non-empty grid), got {l2!r}")
    if groups is None:
        group_ids = np.arange(num_pairs)
    else:
        group_ids = np.asarray(groups)
        if group_ids.shape != (num_pairs,):
            raise ValueError(f"expected [B] = [{num_pairs}] group ids, got {group_ids.shape}")
    if train_mask is not None:
        mask = np.asarray(train_mask)
        if mask.shape != (num_pairs,) or mask.dtype != np.bool_:
            raise ValueError(f"expected a [B] = [{num_pairs}] bool train_mask")
        if mask.all() or not mask.any():
            raise ValueError("train_mask must leave pairs on both sides")
        folds = np.where(mask, 1, 0)  # fold 0 is held out
        fold_ids = [0]
    else:
        folds = group_folds(group_ids, num_folds, seed=seed)
        fold_ids = list(range(num_folds))
    scores = np.zeros(num_pairs)
    fold_accuracies, fold_l2 = [], []
    for fold in fold_ids:
        train, test = folds != fold, folds == fold
        strength = _choose_l2(
            x[train], group_ids[train], grid, num_inner_folds, seed + 1 + fold, max_newton_steps
        )
        scale = _scale(x[train])
        w = _fit_logistic(x[train] / scale, strength, np.zeros(x.shape[1]), max_newton_steps)
        scores[test] = (x[test] / scale) @ w
        fold_accuracies.append(_scores(scores[test])[0])
        fold_l2.append(strength)
    held_out = np.isin(folds, fold_ids)
    accuracy, tie_rate = _scores(scores[held_out])
    return FloorResult(
        accuracy, tie_rate, int(held_out.sum()), tuple(fold_accuracies), tuple(fold_l2)
    )
