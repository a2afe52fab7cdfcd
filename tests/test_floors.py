"""Tests of the accuracy floors (length, and the cross-validated linear probe)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mars_jax.floors import FloorResult, group_folds, length_floor, linear_probe_floor


def _oriented(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) features whose difference is ``x`` where the label is 1, else ``-x``."""
    sign = np.where(labels, 1.0, -1.0)[:, None]
    base = np.ones_like(x)
    return base + sign * x, base


# Length floor.


def test_length_floor_counts_ties_as_half() -> None:
    result = length_floor([10, 3, 5, 8, 1], [2, 7, 5, 8, 0])
    # right, wrong, tie, tie, right -> (1 + 0 + 0.5 + 0.5 + 1) / 5
    assert result.accuracy == pytest.approx(0.6)
    assert result.tie_rate == pytest.approx(0.4)
    assert result.num_pairs == 5
    assert (result.fold_accuracies, result.fold_l2) == ((), ())


def test_length_floor_extremes_and_json() -> None:
    assert length_floor([5, 6], [1, 2]).accuracy == 1.0
    assert length_floor([1, 2], [5, 6]).accuracy == 0.0
    result = length_floor(np.array([3.0]), np.array([3.0]))
    assert (result.accuracy, result.tie_rate) == (0.5, 1.0)
    assert json.loads(json.dumps(result.to_json())) == {
        "accuracy": 0.5,
        "tie_rate": 1.0,
        "num_pairs": 1,
        "fold_accuracies": [],
        "fold_l2": [],
    }


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [([1, 2], [1]), ([], []), ([[1, 2]], [[1, 2]]), ([1, math.nan], [1, 2])],
    ids=["shapes", "empty", "2d", "nan"],
)
def test_length_floor_rejects_bad_input(chosen: list, rejected: list) -> None:
    with pytest.raises(ValueError):
        length_floor(chosen, rejected)


# Grouped folds.


def test_group_folds_keep_groups_together_and_balance() -> None:
    groups = np.repeat(np.arange(40), np.arange(40) % 4 + 1)  # group sizes 1..4
    folds = group_folds(groups, 5, seed=3)
    assert folds.shape == groups.shape
    assert set(folds.tolist()) == set(range(5))
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 4  # greedy fill: within one largest group
    np.testing.assert_array_equal(folds, group_folds(groups, 5, seed=3))


def test_group_folds_needs_enough_groups() -> None:
    with pytest.raises(ValueError, match="num_folds"):
        group_folds([0, 0, 1, 1], 3)


# Linear probe.


def test_probe_separable_data_is_perfect() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    direction = rng.normal(size=6)
    x[np.abs(x @ direction) < 0.5] += 1.0 * direction / np.linalg.norm(direction)  # keep a gap
    labels = x @ direction > 0
    chosen, rejected = _oriented(x, labels)
    result = linear_probe_floor(chosen, rejected, l2=1e-3)
    assert result.accuracy == 1.0
    assert result.fold_accuracies == (1.0,) * 5
    assert result.num_pairs == 200
    assert result.tie_rate == 0.0


def test_probe_random_labels_is_chance() -> None:
    rng = np.random.default_rng(1)
    num_pairs = 600
    x = rng.normal(size=(num_pairs, 5)) + 0.5  # a shared offset the probe must not exploit
    labels = rng.random(num_pairs) < 0.5
    chosen, rejected = _oriented(x, labels)
    result = linear_probe_floor(chosen, rejected, l2=(1e-2, 1.0), seed=2)
    bound = 4 * math.sqrt(0.25 / num_pairs)
    assert abs(result.accuracy - 0.5) < bound
    assert len(result.fold_accuracies) == 5
    assert set(result.fold_l2) <= {1e-2, 1.0}


def test_probe_folds_never_share_a_group() -> None:
    # Each group is 10 copies of one random pair: a probe that saw a group's copies in training
    # would recall its label (D > number of groups), one that did not can only guess.
    rng = np.random.default_rng(4)
    num_groups, copies, dim = 60, 10, 80
    x = np.repeat(rng.normal(size=(num_groups, dim)), copies, axis=0)
    labels = np.repeat(rng.random(num_groups) < 0.5, copies)
    groups = np.repeat(np.arange(num_groups), copies)
    chosen, rejected = _oriented(x, labels)
    leaky = linear_probe_floor(chosen, rejected, l2=1e-3)
    grouped = linear_probe_floor(chosen, rejected, groups=groups, l2=1e-3)
    assert leaky.accuracy > 0.95
    assert grouped.accuracy < 0.8


def test_probe_train_mask_scores_the_rest_deterministically() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 4))
    labels = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.normal(size=120) > 0
    chosen, rejected = _oriented(x, labels)
    mask = np.arange(120) < 80
    result = linear_probe_floor(chosen, rejected, train_mask=mask)
    assert result.num_pairs == 40
    assert len(result.fold_accuracies) == 1
    assert result.fold_accuracies[0] == result.accuracy > 0.8
    assert isinstance(result, FloorResult)
    assert result == linear_probe_floor(chosen, rejected, train_mask=mask)


def test_probe_identical_features_are_ties() -> None:
    features = np.ones((10, 3))
    result = linear_probe_floor(features, features, l2=1.0)
    assert (result.accuracy, result.tie_rate) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chosen_features": np.ones((4, 2)), "rejected_features": np.ones((4, 3))}, "shapes"),
        ({"l2": 0.0}, "l2"),
        ({"l2": ()}, "l2"),
        ({"groups": [0, 1]}, "group ids"),
        ({"train_mask": np.ones(4, dtype=bool)}, "both sides"),
        ({"num_folds": 5}, "num_folds"),
    ],
    ids=["shapes", "l2 zero", "l2 empty", "groups", "mask", "folds"],
)
def test_probe_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    arguments = {"chosen_features": np.eye(4), "rejected_features": np.zeros((4, 4)), "l2": 1.0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_probe_floor(
            arguments.pop("chosen_features"), arguments.pop("rejected_features"), **arguments
        )
