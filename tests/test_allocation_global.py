"""Tests of the unstratified uniform baseline's budgets (B draws from the whole pool)."""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mars_jax.allocation import draw_from_pool, uniform_global_budgets

# The statistical tests use fixed keys, so they are deterministic; the threshold only
# says how unlikely a correct sampler would have to be to fail with these keys.
P_VALUE_FLOOR = 1e-3
NUM_KEYS = 20_000


def _offsets(sizes) -> jax.Array:
    return jnp.asarray(np.concatenate([[0], np.cumsum(sizes)]), jnp.int32)


@partial(jax.jit, static_argnames=("budget", "num_keys"))
def _many(seed, offsets, *, budget, num_keys):
    keys = jax.random.split(jax.random.key(seed), num_keys)
    return jax.vmap(lambda k: uniform_global_budgets(k, offsets, budget=budget))(keys)


_budgets = jax.jit(uniform_global_budgets, static_argnames="budget")


def _chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """p-value of a chi-square goodness of fit, bins with expected < 5 merged into one."""
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize(
    ("sizes", "budget"),
    [([5, 0, 12, 3, 20], 15), ([25] * 8, 16), ([1, 2, 3], 6), ([7, 0, 0, 4], 1)],
)
def test_budgets_are_a_subset_of_the_pool(sizes, budget):
    budgets = np.asarray(_many(0, _offsets(sizes), budget=budget, num_keys=500))
    assert budgets.dtype == np.int32
    assert budgets.shape == (500, len(sizes))
    assert (budgets.sum(axis=1) == budget).all()
    assert (budgets >= 0).all()
    assert (budgets <= np.asarray(sizes)).all()


def test_every_subset_equally_likely():
    # One row per source, so the budgets are the indicator of the drawn subset.
    pool_size, budget = 6, 3
    budgets = np.asarray(_many(1, _offsets([1] * pool_size), budget=budget, num_keys=NUM_KEYS))
    assert (budgets.sum(axis=1) == budget).all()
    subsets = list(itertools.combinations(range(pool_size), budget))
    code = {s: i for i, s in enumerate(subsets)}
    drawn = [code[tuple(np.flatnonzero(row))] for row in budgets]
    observed = np.bincount(drawn, minlength=len(subsets))
    assert _chi_square_p(observed, np.full(len(subsets), NUM_KEYS / len(subsets))) > P_VALUE_FLOOR


def test_counts_follow_the_multivariate_hypergeometric_law():
    sizes = np.array([5, 0, 12, 3, 20])
    total, budget = sizes.sum(), 15
    budgets = np.asarray(_many(2, _offsets(sizes), budget=budget, num_keys=NUM_KEYS))
    share = sizes / total
    mean = budget * share
    variance = budget * share * (1 - share) * (total - budget) / (total - 1)
    # Means within 4 standard errors; variances within 4 standard errors of a sample
    # variance (sqrt(2 / n) relative, up to kurtosis), i.e. about 4%.
    np.testing.assert_allclose(
        budgets.mean(axis=0), mean, atol=(4 * np.sqrt(variance / NUM_KEYS)).max() + 1e-9
    )
    np.testing.assert_allclose(budgets.var(axis=0), variance, rtol=0.04, atol=1e-9)
    # Covariances of the multivariate hypergeometric: -B p_i p_j (P - B) / (P - 1).
    covariance = np.cov(budgets.T)
    expected_cov = -budget * np.outer(share, share) * (total - budget) / (total - 1)
    off_diagonal = ~np.eye(sizes.size, dtype=bool)
    np.testing.assert_allclose(covariance[off_diagonal], expected_cov[off_diagonal], atol=0.03)
    # The whole distribution of one source's count against the hypergeometric pmf.
    source = 2
    support = np.arange(budget + 1)
    pmf = stats.hypergeom(total, sizes[source], budget).pmf(support)
    observed = np.bincount(budgets[:, source], minlength=budget + 1)
    assert _chi_square_p(observed, pmf * NUM_KEYS) > P_VALUE_FLOOR


def test_budget_above_pool_takes_every_row_then_a_subset():
    # P = 4 rows (one per source), B = 10: every row twice, then a uniform 2-subset.
    pool_size, budget = 4, 10
    budgets = np.asarray(_many(3, _offsets([1] * pool_size), budget=budget, num_keys=6000))
    assert (budgets.sum(axis=1) == budget).all()
    extra = budgets - 2
    assert ((extra == 0) | (extra == 1)).all()
    assert (extra.sum(axis=1) == 2).all()
    subsets = list(itertools.combinations(range(pool_size), 2))
    code = {s: i for i, s in enumerate(subsets)}
    observed = np.bincount(
        [code[tuple(np.flatnonzero(row))] for row in extra], minlength=len(subsets)
    )
    assert _chi_square_p(observed, np.full(len(subsets), 1000.0)) > P_VALUE_FLOOR
    # An exact multiple of the pool: every row the same number of times.
    sizes = np.array([3, 0, 2])
    exact = np.asarray(_budgets(jax.random.key(0), _offsets(sizes), budget=15))
    np.testing.assert_array_equal(exact, 3 * sizes)


def test_draw_from_pool_draws_distinct_rows():
    sizes = np.array([5, 0, 12, 3, 20])
    offsets = _offsets(sizes)

    @partial(jax.jit, static_argnames="budget")
    def draw(key, *, budget):
        budget_key, draw_key = jax.random.split(key)
        budgets = uniform_global_budgets(budget_key, offsets, budget=budget)
        draws = draw_from_pool(
            draw_key, budgets, offsets, num_draws=budget, max_per_source=int(sizes.max())
        )
        return budgets, draws

    for seed in range(20):
        budgets, draws = draw(jax.random.key(seed), budget=15)
        rows = np.asarray(draws.indices)
        assert np.asarray(draws.valid).all()
        assert np.unique(rows).size == 15
        np.testing.assert_array_equal(np.bincount(np.asarray(draws.source), minlength=5), budgets)
    # Twice the pool: every row at least twice over (the first n_i draws of a source are
    # distinct, the rest with replacement).
    budgets, draws = draw(jax.random.key(0), budget=2 * int(sizes.sum()) + 5)
    np.testing.assert_array_equal(np.asarray(budgets) >= 2 * sizes, np.ones(sizes.size, bool))
    assert np.unique(np.asarray(draws.indices)).size == sizes.sum()


def test_jit_with_traced_offsets_does_not_recompile():
    jitted = jax.jit(lambda key, offsets: uniform_global_budgets(key, offsets, budget=5))
    first = jitted(jax.random.key(0), _offsets([4, 4, 4]))
    second = jitted(jax.random.key(0), _offsets([1, 10, 2]))
    assert int(first.sum()) == int(second.sum()) == 5
    assert (np.asarray(second) <= [1, 10, 2]).all()
    assert jitted._cache_size() == 1
    eager = uniform_global_budgets(jax.random.key(0), _offsets([1, 10, 2]), budget=5)
    np.testing.assert_array_equal(eager, second)


def test_keys_matter_and_edge_cases():
    offsets = _offsets([10] * 10)
    draws = {tuple(np.asarray(_budgets(jax.random.key(s), offsets, budget=20))) for s in range(10)}
    assert len(draws) > 1
    np.testing.assert_array_equal(_budgets(jax.random.key(0), offsets, budget=0), np.zeros(10))
    np.testing.assert_array_equal(
        _budgets(jax.random.key(0), _offsets([0, 0, 0]), budget=7), np.zeros(3)
    )
    with pytest.raises(ValueError, match="budget"):
        uniform_global_budgets(jax.random.key(0), offsets, budget=-1)
