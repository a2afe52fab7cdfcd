"""Tests of the allocation diagnostics (distance from uniform) and the margin statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mars_jax.allocation import (
    AllocationDiagnostics,
    MarginStatistics,
    allocation_diagnostics,
    largest_remainder_budgets,
    margin_statistics,
    mars_weights,
    pool_size_weights,
)


def eager(fn):
    return fn


@pytest.fixture(params=[eager, jax.jit], ids=["eager", "jit"])
def transform(request):
    """Runs a test once on the plain function and once under ``jax.jit``."""
    return request.param


def _values(result) -> dict[str, float]:
    return {name: float(value) for name, value in result._asdict().items()}


def test_diagnostics_hand_computed(transform):
    result = transform(allocation_diagnostics)(jnp.array([3, 1, 0, 0]), jnp.array([1, 1, 1, 1]))
    assert isinstance(result, AllocationDiagnostics)
    # q = (3/4, 1/4, 0, 0) against 1/4 each: TV = (1/2 + 0 + 1/4 + 1/4) / 2,
    # ESS = 1 / (9/16 + 1/16).
    assert _values(result) == pytest.approx(
        {"total_variation": 0.5, "effective_num_pairs": 1.6, "zero_share": 0.5, "max_budget": 3.0}
    )
    one_pair = transform(allocation_diagnostics)(jnp.array([0, 0, 8]), jnp.array([3, 3, 2]))
    assert _values(one_pair) == pytest.approx(
        {
            "total_variation": 0.75,
            "effective_num_pairs": 1.0,
            "zero_share": 2 / 3,
            "max_budget": 8.0,
        }
    )


@pytest.mark.parametrize("num_pairs", [1, 3, 1000])
def test_even_split_has_effective_number_n_and_zero_distance(num_pairs):
    budgets = jnp.full(num_pairs, 2, jnp.int32)
    result = allocation_diagnostics(budgets, budgets)
    assert float(result.effective_num_pairs) == pytest.approx(num_pairs, rel=1e-5)
    assert float(result.total_variation) == 0.0
    assert float(result.zero_share) == 0.0
    # Same proportions at another total are at distance 0 too (up to float32 rounding).
    assert float(allocation_diagnostics(budgets, 3 * budgets).total_variation) < 1e-6


@given(
    budgets=hnp.arrays(np.int32, 12, elements=st.integers(0, 20)),
    reference=hnp.arrays(np.int32, 12, elements=st.integers(0, 20)),
)
@settings(max_examples=60, deadline=None)
def test_diagnostics_match_numpy(budgets, reference):
    budgets[0] += 1  # nonzero totals
    reference[0] += 1
    result = allocation_diagnostics(budgets, reference)
    share, ref = budgets / budgets.sum(), reference / reference.sum()
    tv = 0.5 * np.abs(share - ref).sum()
    assert float(result.total_variation) == pytest.approx(tv, abs=1e-6)
    assert float(result.effective_num_pairs) == pytest.approx(1 / np.sum(share**2), rel=1e-5)
    assert float(result.zero_share) == pytest.approx(np.mean(budgets == 0))
    assert float(result.max_budget) == budgets.max()
    # With equal totals the distance is 0 exactly when the budgets are equal.
    same_total = reference.copy()
    same_total[0] += budgets.sum() - reference.sum()
    if same_total[0] >= 0:
        distance = float(allocation_diagnostics(budgets, same_total).total_variation)
        assert (distance == 0.0) == np.array_equal(budgets, same_total)
        assert distance == 0.0 or distance >= 0.5 / budgets.sum() - 1e-6


def test_diagnostics_see_flat_mars_equal_to_stratified_uniform():
    # Method.md section 6: tau = 0.1, B / N = 2 and margins of a few units give exactly
    # the stratified uniform budgets; tau = 3 does not.
    num_pairs, budget = 100, 200
    margins = jax.random.normal(jax.random.key(0), (num_pairs,))
    offsets = jnp.arange(num_pairs + 1, dtype=jnp.int32) * 25
    key = jax.random.key(1)
    uniform = largest_remainder_budgets(pool_size_weights(offsets), budget=budget, key=key)
    flat = largest_remainder_budgets(mars_weights(margins, temperature=0.1), budget=budget, key=key)
    sharp = largest_remainder_budgets(
        mars_weights(margins, temperature=3.0), budget=budget, key=key
    )
    assert float(allocation_diagnostics(flat, uniform).total_variation) == 0.0
    assert float(allocation_diagnostics(sharp, uniform).total_variation) > 0.2


def test_margin_statistics_hand_computed(transform):
    result = transform(margin_statistics)(jnp.array([-1.0, 2.0, -3.0, 4.0]))
    assert isinstance(result, MarginStatistics)
    # |m| = 1, 2, 3, 4: the q-quantile sits at position 3q with linear interpolation.
    assert _values(result) == pytest.approx(
        {
            "mean": 0.5,
            "std": np.sqrt(7.25),
            "abs_q10": 1.3,
            "abs_q25": 1.75,
            "abs_median": 2.5,
            "abs_q75": 3.25,
            "abs_q90": 3.7,
            "negative_share": 0.5,
        },
        rel=1e-6,
    )


def test_margin_statistics_match_numpy():
    margins = np.asarray(jax.random.normal(jax.random.key(3), (501,))) * 2 + 0.3
    result = margin_statistics(margins)
    quantiles = np.quantile(np.abs(margins), [0.1, 0.25, 0.5, 0.75, 0.9])
    expected = [margins.mean(), margins.std(), *quantiles, np.mean(margins < 0)]
    np.testing.assert_allclose(np.array(result), expected, rtol=1e-5, atol=1e-6)
