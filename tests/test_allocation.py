"""Tests of the allocation weights, the largest-remainder budgets and pool draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mars_jax.allocation import (
    Draws,
    adaboost_weights,
    draw_from_pool,
    ensemble_weights,
    largest_remainder_budgets,
    mars_weights,
    pool_size_weights,
)

N = 16


def eager(fn):
    return fn


@pytest.fixture(params=[eager, jax.jit], ids=["eager", "jit"])
def transform(request):
    """Runs a test once on the plain function and once under ``jax.jit``."""
    return request.param


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def assert_order(scores, weights):
    """A strictly smaller score never gets a strictly smaller weight."""
    scores = np.asarray(scores)
    weights = np.asarray(weights)
    smaller = scores[:, None] < scores[None, :]
    assert not np.any(smaller & (weights[:, None] < weights[None, :]))


margins_strategy = hnp.arrays(np.float32, N, elements=st.floats(-20, 20, width=32))
temperature_strategy = st.floats(0.0, 5.0, width=32)


# ---------------------------------------------------------------------------------------
# mars_weights
# ---------------------------------------------------------------------------------------


@jax.jit
def _mars_abs(margins, temperature):
    return mars_weights(margins, temperature=temperature)


@jax.jit
def _mars_signed(margins, temperature):
    return mars_weights(margins, temperature=temperature, signed=True)


@given(margins=margins_strategy, temperature=temperature_strategy)
@settings(max_examples=40, deadline=None)
def test_mars_weights_match_numpy_softmax(margins, temperature):
    tau = np.float32(temperature)
    for fn, score in ((_mars_abs, np.abs(margins)), (_mars_signed, margins)):
        q = np.asarray(fn(margins, tau))
        assert q.shape == (N,)
        assert (q >= 0).all()
        assert q.sum() == pytest.approx(1.0, abs=1e-5)
        expected = np_softmax(-float(tau) * score.astype(np.float64))
        np.testing.assert_allclose(q, expected, rtol=1e-4, atol=1e-7)
        assert_order(score, q)


def test_mars_weights_eager_jit_and_orientation(transform):
    m = jnp.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    q_abs = np.asarray(transform(lambda x: mars_weights(x, temperature=0.7))(m))
    q_signed = np.asarray(transform(lambda x: mars_weights(x, temperature=0.7, signed=True))(m))
    np.testing.assert_allclose(q_abs, np_softmax(-0.7 * np.abs(np.asarray(m))), rtol=1e-5)
    np.testing.assert_allclose(q_signed, np_softmax(-0.7 * np.asarray(m)), rtol=1e-5)
    # v1: ambiguous pairs get the most, symmetric in the sign of the margin.
    assert np.argmax(q_abs) == 2
    np.testing.assert_allclose(q_abs, q_abs[::-1], rtol=1e-6)
    assert q_abs[2] > q_abs[1] > q_abs[0]
    # v2: the most mis-ranked pair gets the most; strictly decreasing in m.
    assert np.all(np.diff(q_signed) < 0)
    # tau = 0 is uniform.
    q0 = np.asarray(transform(lambda x: mars_weights(x, temperature=0.0))(m))
    np.testing.assert_allclose(q0, 0.2, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# pool_size_weights, ensemble_weights, adaboost_weights
# ---------------------------------------------------------------------------------------


@jax.jit
def _pool_size_jit(offsets):
    return pool_size_weights(offsets)


@given(counts=st.lists(st.integers(0, 12), min_size=8, max_size=8))
@settings(max_examples=30, deadline=None)
def test_pool_size_weights_proportional(counts):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    q = np.asarray(_pool_size_jit(offsets))
    total = sum(counts)
    expected = np.asarray(counts, np.float64) / total if total else np.full(8, 1 / 8)
    np.testing.assert_allclose(q, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(pool_size_weights(offsets)), q, rtol=1e-6)


def test_pool_size_weights_examples(transform):
    fn = transform(pool_size_weights)
    np.testing.assert_allclose(np.asarray(fn(jnp.array([0, 2, 2, 8]))), [0.25, 0.0, 0.75])
    np.testing.assert_allclose(np.asarray(fn(jnp.array([0, 0, 0, 0, 0]))), 0.25)


@jax.jit
def _ensemble_jit(member_margins, temperature):
    return ensemble_weights(member_margins, temperature=temperature)


# Quarter-integers keep the float32 standard deviation accurate, so numpy (float64) is a
# fair reference even where spreads are small.
member_strategy = hnp.arrays(
    np.float32, (4, 8), elements=st.integers(-40, 40).map(lambda k: k / 4.0)
)


@given(
    member_margins=member_strategy,
    temperature=st.floats(0.0, 3.0, width=32),
    scale=st.sampled_from([1e-3, 0.37, 3.0, 250.0, -2.0]),
)
@settings(max_examples=40, deadline=None)
def test_ensemble_weights_match_numpy(member_margins, temperature, scale):
    tau = np.float32(temperature)
    q = np.asarray(_ensemble_jit(member_margins, tau))
    spread = member_margins.astype(np.float64).std(axis=0)
    mean_spread = spread.mean()
    expected = np_softmax(float(tau) * spread / (mean_spread if mean_spread > 0 else 1.0))
    np.testing.assert_allclose(q, expected, rtol=1e-4, atol=1e-7)
    assert q.sum() == pytest.approx(1.0, abs=1e-5)
    # More disagreement across members, more weight.
    assert_order(-spread, q)
    # Invariant to the reward scale (and to flipping the sign of every margin).
    scaled = np.asarray(_ensemble_jit((member_margins * scale).astype(np.float32), tau))
    np.testing.assert_allclose(scaled, q, rtol=1e-4, atol=1e-7)


def test_ensemble_weights_disagreement_and_eager(transform):
    # Pair 0: members agree; pair 1: mild disagreement; pair 2: strong disagreement.
    mm = jnp.array([[1.0, 0.5, -2.0], [1.0, 1.5, 4.0], [1.0, 0.5, -2.0], [1.0, 1.5, 4.0]])
    q = np.asarray(transform(lambda x: ensemble_weights(x, temperature=1.0))(mm))
    assert q[0] < q[1] < q[2]
    s = np.array([0.0, 0.5, 3.0])
    np.testing.assert_allclose(q, np_softmax(s / s.mean()), rtol=1e-5)
    # No disagreement anywhere: uniform, not NaN.
    flat = np.asarray(transform(lambda x: ensemble_weights(x, temperature=1.0))(jnp.ones((3, 4))))
    np.testing.assert_allclose(flat, 0.25, rtol=1e-6)


@jax.jit
def _adaboost_jit(margins, temperature):
    return adaboost_weights(margins, temperature=temperature)


@given(margins=margins_strategy, temperature=st.floats(0.0, 2.0, width=32))
@settings(max_examples=40, deadline=None)
def test_adaboost_weights_match_numpy(margins, temperature):
    tau = np.float32(temperature)
    w = np.asarray(_adaboost_jit(margins, tau))
    e = np.exp(-float(tau) * margins.astype(np.float64))
    np.testing.assert_allclose(w, e / e.mean(), rtol=1e-4, atol=1e-6)
    assert w.mean() == pytest.approx(1.0, abs=1e-4)
    assert (w >= 0).all()
    assert_order(margins, w)


def test_adaboost_weights_favour_misranked(transform):
    m = jnp.array([-2.0, -0.1, 0.1, 2.0])
    w = np.asarray(transform(lambda x: adaboost_weights(x, temperature=0.5))(m))
    assert w.mean() == pytest.approx(1.0, rel=1e-6)
    assert np.all(np.diff(w) < 0)
    # w_i / w_j = exp(-tau (m_i - m_j)), and a margin and its negation are not symmetric.
    assert w[0] / w[3] == pytest.approx(np.exp(2.0), rel=1e-5)
    assert w[0] > 1.0 > w[3]
    e = np.exp(-0.5 * np.asarray(m))
    np.testing.assert_allclose(w, e / e.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(transform(lambda x: adaboost_weights(x, temperature=0.0))(m)), 1.0
    )


# ---------------------------------------------------------------------------------------
# largest_remainder_budgets
# ---------------------------------------------------------------------------------------


@jax.jit
def _budgets_jit(weights, budget, key):
    return largest_remainder_budgets(weights, budget=budget, key=key)


def reference_budgets(weights, budget):
    """Largest remainder in float64 with a stable order (for inputs without ties)."""
    w = np.asarray(weights, np.float64)
    quota = budget * w / w.sum()
    floors = np.floor(quota).astype(np.int64)
    remainders = quota - floors
    leftover = budget - floors.sum()
    order = np.argsort(-remainders, kind="stable")
    out = floors.copy()
    out[order[:leftover]] += 1
    return out, remainders, leftover


weights_strategy = st.one_of(
    # Continuous weights, with some zeros.
    hnp.arrays(
        np.float32, N, elements=st.one_of(st.just(0.0), st.floats(0.0078125, 100.0, width=32))
    ),
    # Few distinct values: many exact ties.
    hnp.arrays(np.float32, N, elements=st.sampled_from([0.0, 1.0, 2.0, 3.0])),
    # MARS-like softmax weights.
    margins_strategy.map(lambda m: np.asarray(_mars_abs(m, np.float32(0.5)))),
)
budget_strategy = st.one_of(
    st.just(0),
    st.integers(1, N - 1),  # fewer units than pairs
    st.integers(N, 4 * N),
    st.integers(1000, 50_000),  # budget >> N
)


@given(
    weights=weights_strategy,
    budget=budget_strategy,
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=80, deadline=None)
def test_budgets_properties(weights, budget, seed):
    assume(weights.sum() > 0)
    b = np.asarray(_budgets_jit(weights, np.int32(budget), jax.random.key(seed)))
    assert b.dtype == np.int32
    assert b.sum() == budget
    assert (b >= 0).all()
    q = weights.astype(np.float64) / weights.astype(np.float64).sum()
    assert np.all(np.abs(b - budget * q) < 1.0)
    assert_order(-weights, b)  # q_i > q_j implies b_i >= b_j
    # Equal weights get budgets within one unit of each other.
    same = weights[:, None] == weights[None, :]
    assert np.all(np.abs(b[:, None] - b[None, :])[same] <= 1)
    # Same key, same budgets.
    again = _budgets_jit(weights, np.int32(budget), jax.random.key(seed))
    np.testing.assert_array_equal(np.asarray(again), b)


@given(
    weights=hnp.arrays(np.float32, N, elements=st.floats(0.0078125, 100.0, width=32), unique=True),
    budget=st.one_of(st.integers(1, N - 1), st.integers(N, 4 * N), st.integers(100, 5000)),
)
@settings(max_examples=60, deadline=None)
def test_budgets_match_numpy_reference_without_ties(weights, budget):
    expected, remainders, leftover = reference_budgets(weights, budget)
    quota = budget * weights.astype(np.float64) / weights.astype(np.float64).sum()
    # float32 quotas are off by up to ~1e-6 * budget: skip inputs with a quota that close to
    # an integer or two remainders that close at the cut, where the tie-free order is moot.
    tol = 1e-6 * budget + 1e-5
    assume(np.all(np.abs(quota - np.round(quota)) > tol))
    ranked = np.sort(remainders)[::-1]
    if 0 < leftover < N:
        assume(ranked[leftover - 1] - ranked[leftover] > tol)
    got = np.asarray(_budgets_jit(weights, np.int32(budget), jax.random.key(0)))
    np.testing.assert_array_equal(got, expected)


def test_budgets_static_budget_eager_and_jit(transform):
    weights = jnp.array([0.5, 0.3, 0.2])
    fn = transform(lambda w, k: largest_remainder_budgets(w, budget=7, key=k))
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1, one leftover to the largest remainder (0.5).
    np.testing.assert_array_equal(np.asarray(fn(weights, jax.random.key(3))), [4, 2, 1])
    fn0 = transform(lambda w, k: largest_remainder_budgets(w, budget=0, key=k))
    np.testing.assert_array_equal(np.asarray(fn0(weights, jax.random.key(3))), [0, 0, 0])
    # Unnormalised weights are normalised first.
    np.testing.assert_array_equal(np.asarray(fn(weights * 10.0, jax.random.key(3))), [4, 2, 1])


def test_budgets_ties_broken_by_key():
    weights = jnp.ones(10)
    results = [
        tuple(np.asarray(_budgets_jit(weights, np.int32(5), jax.random.key(s))).tolist())
        for s in range(8)
    ]
    for r in results:
        assert sorted(r) == [0] * 5 + [1] * 5
    assert len(set(results)) >= 2
    # Over many keys every tied pair wins the extra unit about half of the time.
    keys = jax.random.split(jax.random.key(123), 2000)
    many = np.asarray(
        jax.jit(jax.vmap(lambda k: largest_remainder_budgets(weights, budget=5, key=k)))(keys)
    )
    np.testing.assert_array_equal(many.sum(axis=1), 5)
    freq = many.mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 0.06), freq


# ---------------------------------------------------------------------------------------
# draw_from_pool
# ---------------------------------------------------------------------------------------

REAL_SOURCES = 6
POOL = 40  # fixed pool size; a last padding source holds the rows not in a real source
SLOTS = 72


def make_pool(counts):
    """CSR offsets with ``counts`` rows for the real sources, padded to ``POOL`` rows."""
    counts = [*counts, POOL - sum(counts)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return offsets


@jax.jit
def _draw_random(key, budgets, offsets):
    return draw_from_pool(key, budgets, offsets, num_draws=SLOTS, max_per_source=POOL)


@jax.jit
def _draw_priority(key, budgets, offsets, priority):
    return draw_from_pool(
        key, budgets, offsets, num_draws=SLOTS, max_per_source=POOL, priority=priority
    )


def check_draws(draws, budgets, offsets, priority=None):
    """Every documented property of one draw, checked slot by slot in numpy."""
    assert isinstance(draws, Draws)
    indices = np.asarray(draws.indices)
    slot_source = np.asarray(draws.source)
    valid = np.asarray(draws.valid)
    assert indices.shape == slot_source.shape == valid.shape == (SLOTS,)
    total = int(budgets.sum())
    np.testing.assert_array_equal(valid, np.arange(SLOTS) < total)
    np.testing.assert_array_equal(slot_source[:total], np.repeat(np.arange(budgets.size), budgets))
    assert np.all((indices >= 0) & (indices < POOL))
    for i, b in enumerate(budgets):
        rows = indices[:total][slot_source[:total] == i]
        assert rows.size == b
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        size = hi - lo
        if size == 0:
            continue  # anywhere in the pool, checked above
        assert np.all((rows >= lo) & (rows < hi))
        head = rows[: min(b, size)]
        assert np.unique(head).size == head.size  # distinct: without replacement
        if b >= size:
            np.testing.assert_array_equal(np.sort(head), np.arange(lo, hi))  # all rows
        if priority is not None:
            expected = lo + np.argsort(-priority[lo:hi], kind="stable")[: min(b, size)]
            np.testing.assert_array_equal(head, expected)


pool_case = st.tuples(
    st.lists(st.integers(0, 6), min_size=REAL_SOURCES, max_size=REAL_SOURCES),
    st.lists(st.integers(0, 11), min_size=REAL_SOURCES, max_size=REAL_SOURCES),
)


@given(case=pool_case, seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_draw_from_pool_properties(case, seed):
    counts, budgets = case
    offsets = make_pool(counts)
    budgets = np.asarray([*budgets, 0], np.int32)
    key = jax.random.key(seed)
    draws = _draw_random(key, budgets, offsets)
    check_draws(draws, budgets, offsets)
    again = _draw_random(key, budgets, offsets)
    np.testing.assert_array_equal(np.asarray(again.indices), np.asarray(draws.indices))


@given(case=pool_case, seed=st.integers(0, 2**31 - 1), perm_seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_draw_from_pool_priority_order(case, seed, perm_seed):
    counts, budgets = case
    offsets = make_pool(counts)
    budgets = np.asarray([*budgets, 0], np.int32)
    priority = np.random.default_rng(perm_seed).permutation(POOL).astype(np.float32)
    draws = _draw_priority(jax.random.key(seed), budgets, offsets, priority)
    check_draws(draws, budgets, offsets, priority)


def test_draw_from_pool_eager_matches_jit():
    offsets = make_pool([3, 0, 5, 1, 6, 2])
    budgets = np.asarray([2, 3, 7, 1, 4, 0, 0], np.int32)
    key = jax.random.key(11)
    eager_draws = draw_from_pool(key, budgets, offsets, num_draws=SLOTS, max_per_source=POOL)
    jit_draws = _draw_random(key, budgets, offsets)
    for a, b in zip(eager_draws, jit_draws, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    check_draws(eager_draws, budgets, offsets)


def test_draw_from_pool_west_of_n_example():
    # Two sources of 4 rows; keep the K = 2 highest-margin synthetic pairs of each.
    offsets = jnp.array([0, 4, 8], jnp.int32)
    priority = jnp.array([0.1, 0.9, -1.0, 0.5, 2.0, 3.0, 1.0, 0.0])
    fn = jax.jit(
        lambda k, b: draw_from_pool(k, b, offsets, num_draws=6, max_per_source=8, priority=priority)
    )
    draws = fn(jax.random.key(0), jnp.array([2, 2], jnp.int32))
    np.testing.assert_array_equal(np.asarray(draws.indices)[:4], [1, 3, 5, 4])
    np.testing.assert_array_equal(np.asarray(draws.source)[:4], [0, 0, 1, 1])
    np.testing.assert_array_equal(np.asarray(draws.valid), [True] * 4 + [False] * 2)


def test_draw_from_pool_keys_differ():
    offsets = make_pool([6, 6, 6, 6, 6, 6])
    budgets = np.asarray([4, 4, 4, 4, 4, 4, 0], np.int32)
    a = np.asarray(_draw_random(jax.random.key(0), budgets, offsets).indices)
    b = np.asarray(_draw_random(jax.random.key(1), budgets, offsets).indices)
    assert not np.array_equal(a[:24], b[:24])


def chi_square(observed, expected):
    observed = np.asarray(observed, np.float64)
    return float(np.sum((observed - expected) ** 2 / expected))


def loose_bound(df):
    # Far beyond the 99.99% quantile of chi^2(df) for df <= 12, far below any real bias.
    return df + 8.0 * np.sqrt(2.0 * df)


def test_draw_from_pool_uniform_frequencies():
    # Source 0: 5 rows, budget 2 (without replacement); source 1: 3 rows, budget 8 (5 with
    # replacement); source 2: empty, budget 3 (whole pool); source 3: 4 rows, budget 4.
    counts = [5, 3, 0, 4]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    budgets = np.asarray([2, 8, 3, 4], np.int32)
    pool = int(offsets[-1])
    offsets, budgets = jnp.asarray(offsets), jnp.asarray(budgets)
    keys = jax.random.split(jax.random.key(2024), 3000)
    draw = jax.jit(
        jax.vmap(
            lambda k: draw_from_pool(k, budgets, offsets, num_draws=17, max_per_source=POOL).indices
        )
    )
    idx = np.asarray(draw(keys))  # [keys, 17]
    slot_source = np.repeat(np.arange(4), [2, 8, 3, 4])
    rank = np.concatenate([np.arange(b) for b in [2, 8, 3, 4]])

    def freq(sel, lo, hi):
        values = idx[:, sel].ravel()
        assert np.all((values >= lo) & (values < hi))
        return np.bincount(values - lo, minlength=hi - lo)

    # Source 0: each of the 5 rows in 2/5 of the keys.
    f0 = freq(slot_source == 0, 0, 5)
    assert chi_square(f0, f0.sum() / 5) < loose_bound(4)
    # Source 1: the first 3 draws are each row once; the 5 extras are uniform.
    assert np.all(np.sort(idx[:, (slot_source == 1) & (rank < 3)], axis=1) == [5, 6, 7])
    f1 = freq((slot_source == 1) & (rank >= 3), 5, 8)
    assert chi_square(f1, f1.sum() / 3) < loose_bound(2)
    # Source 2 (empty pool): uniform over the whole pool.
    f2 = freq(slot_source == 2, 0, pool)
    assert chi_square(f2, f2.sum() / pool) < loose_bound(pool - 1)
    # Source 3: a random permutation; its first draw is uniform over its rows.
    first = (slot_source == 3) & (rank == 0)
    f3 = freq(first, 8, 12)
    assert chi_square(f3, f3.sum() / 4) < loose_bound(3)


def test_draw_ranking_is_the_same_by_comparison_and_by_sort():
    offsets = make_pool([7, 0, 12, 3, 9, 1])
    priority = jax.random.normal(jax.random.key(3), (POOL,)).round(1)  # rounded: ties
    budgets = jnp.array([4, 2, 12, 5, 1, 1, 0], jnp.int32)
    key = jax.random.key(4)
    by_comparison = draw_from_pool(
        key, budgets, offsets, num_draws=SLOTS, max_per_source=POOL, priority=priority
    )
    by_sort = draw_from_pool(
        key, budgets, offsets, num_draws=SLOTS, max_per_source=200, priority=priority
    )
    np.testing.assert_array_equal(np.asarray(by_comparison.indices), np.asarray(by_sort.indices))
    check_draws(by_sort, budgets, offsets, priority)
