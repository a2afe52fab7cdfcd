"""Tests of the pairwise losses and the masked mean against closed forms and numpy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit

from mars_jax.losses import (
    bradley_terry_loss,
    hinge_loss,
    masked_mean,
    reward_centering_penalty,
)

SIZE = 16


def eager(fn):
    return fn


@pytest.fixture(params=[eager, jax.jit], ids=["eager", "jit"])
def transform(request):
    """Runs a test once on the plain function and once under ``jax.jit``."""
    return request.param


def np_softplus(x):
    return np.logaddexp(0.0, x)


# A dense grid plus the extremes; float64 so derivatives can be checked tightly.
GRID = np.concatenate([np.linspace(-100.0, 100.0, 801), [-1e-3, 1e-3, -37.5, 37.5]])


# ---------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------


def test_bt_at_zero_is_log2(transform):
    loss = transform(bradley_terry_loss)(jnp.zeros(5))
    np.testing.assert_allclose(np.asarray(loss), math.log(2.0), rtol=1e-7)


def test_bt_at_target_is_log2(transform):
    fn = transform(lambda m: bradley_terry_loss(m, target_margin=1.5))
    np.testing.assert_allclose(np.asarray(fn(jnp.full(3, 1.5))), math.log(2.0), rtol=1e-7)


def test_bt_values_match_numpy(x64, transform):
    loss = transform(bradley_terry_loss)(jnp.asarray(GRID))
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(loss), np_softplus(-GRID), rtol=1e-12, atol=1e-300)


def test_bt_derivatives_closed_form_float64(x64, transform):
    def scalar(m):
        return bradley_terry_loss(m[None])[0]

    first = transform(jax.vmap(jax.grad(scalar)))(jnp.asarray(GRID))
    second = transform(jax.vmap(jax.grad(jax.grad(scalar))))(jnp.asarray(GRID))
    assert np.isfinite(np.asarray(first)).all()
    assert np.isfinite(np.asarray(second)).all()
    np.testing.assert_allclose(np.asarray(first), -expit(-GRID), rtol=1e-12, atol=1e-14)
    # Autodiff of softplus loses relative precision in the curvature for very negative
    # margins (cancellation in 1 - sigmoid), so the absolute tolerance does the work there.
    curvature = expit(GRID) * expit(-GRID)
    np.testing.assert_allclose(np.asarray(second), curvature, rtol=1e-6, atol=1e-14)
    # The curvature peaks at 1/4 at m = 0.
    np.testing.assert_allclose(float(jax.grad(jax.grad(scalar))(jnp.float64(0.0))), 0.25)


def test_bt_float32_extremes_finite(transform):
    m = jnp.array([-100.0, -50.0, 0.0, 50.0, 100.0], jnp.float32)

    def scalar(x):
        return bradley_terry_loss(x[None])[0]

    loss = np.asarray(transform(bradley_terry_loss)(m))
    first = np.asarray(transform(jax.vmap(jax.grad(scalar)))(m))
    second = np.asarray(transform(jax.vmap(jax.grad(jax.grad(scalar))))(m))
    for arr in (loss, first, second):
        assert np.isfinite(arr).all()
    m64 = np.asarray(m, np.float64)
    np.testing.assert_allclose(loss, np_softplus(-m64), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(first, -expit(-m64), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second, expit(m64) * expit(-m64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [-2.0, 0.5, 1.0, 3.0])
def test_bt_target_margin_shifts(x64, transform, gamma):
    fn = transform(lambda m: bradley_terry_loss(m, target_margin=gamma))
    got = np.asarray(fn(jnp.asarray(GRID)))
    np.testing.assert_allclose(got, np_softplus(gamma - GRID), rtol=1e-12, atol=1e-300)
    # A pure shift: loss(m; gamma) == loss(m - gamma; 0).
    shifted = np.asarray(bradley_terry_loss(jnp.asarray(GRID - gamma)))
    np.testing.assert_allclose(got, shifted, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(("gamma", "eps"), [(0.0, 0.1), (1.0, 0.05), (-0.5, 0.3), (2.0, 0.5)])
def test_bt_label_smoothing_mixture(x64, transform, gamma, eps):
    fn = transform(lambda m: bradley_terry_loss(m, target_margin=gamma, label_smoothing=eps))
    got = np.asarray(fn(jnp.asarray(GRID)))
    expected = (1 - eps) * np_softplus(gamma - GRID) + eps * np_softplus(GRID - gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize(("gamma", "eps"), [(0.0, 0.1), (1.0, 0.25), (-3.0, 0.4)])
def test_bt_label_smoothing_symmetric_about_target(x64, gamma, eps):
    d = jnp.asarray(np.linspace(-30.0, 30.0, 121))

    def loss(m, e):
        return np.asarray(bradley_terry_loss(m, target_margin=gamma, label_smoothing=e))

    # Flipping the label mirrors the loss about gamma.
    np.testing.assert_allclose(loss(gamma + d, eps), loss(gamma - d, 1 - eps), rtol=1e-12)
    # At eps = 1/2 the loss itself is even about gamma.
    np.testing.assert_allclose(loss(gamma + d, 0.5), loss(gamma - d, 0.5), rtol=1e-12)
    # And it is not even for eps < 1/2 (smoothing keeps the preferred direction).
    assert loss(jnp.array([gamma + 1.0]), eps)[0] < loss(jnp.array([gamma - 1.0]), eps)[0]


@pytest.mark.parametrize(("gamma", "eps"), [(0.0, 0.1), (1.0, 0.2), (-1.0, 0.01)])
def test_bt_label_smoothing_minimiser(x64, transform, gamma, eps):
    # d/dm = -(1-eps) sigmoid(gamma - m) + eps sigmoid(m - gamma), zero at
    # m* = gamma + log((1 - eps) / eps): smoothing bounds how far the margin is pushed.
    def scalar(m):
        return bradley_terry_loss(m[None], target_margin=gamma, label_smoothing=eps)[0]

    grad = transform(jax.grad(scalar))
    m_star = gamma + math.log((1 - eps) / eps)
    assert abs(float(grad(jnp.float64(m_star)))) < 1e-12
    assert float(grad(jnp.float64(m_star - 1.0))) < 0 < float(grad(jnp.float64(m_star + 1.0)))
    m = jnp.asarray(GRID)
    expected = -(1 - eps) * expit(gamma - GRID) + eps * expit(GRID - gamma)
    np.testing.assert_allclose(np.asarray(transform(jax.vmap(grad))(m)), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Hinge and reward centering
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [None, 0.0, 2.5])
def test_hinge_values_and_subgradient(transform, gamma):
    kwargs = {} if gamma is None else {"target_margin": gamma}
    g = 1.0 if gamma is None else gamma
    # Points away from the kink, on both sides.
    m = np.array([-5.0, -1.0, g - 0.5, g - 1e-2, g + 1e-2, g + 0.5, 7.0], np.float32)
    m = m[m != g]
    fn = transform(lambda x: hinge_loss(x, **kwargs))
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(m))), np.maximum(0.0, g - m), rtol=1e-6)

    def scalar(x):
        return hinge_loss(x[None], **kwargs)[0]

    grads = np.asarray(transform(jax.vmap(jax.grad(scalar)))(jnp.asarray(m)))
    np.testing.assert_array_equal(grads, np.where(m < g, -1.0, 0.0))
    # At the kink the value is 0 and the derivative is a valid subgradient in [-1, 0].
    assert float(fn(jnp.array([g], jnp.float32))[0]) == 0.0
    kink = float(jax.grad(scalar)(jnp.array(g, jnp.float32)))
    assert -1.0 <= kink <= 0.0


@given(
    chosen=hnp.arrays(np.float32, SIZE, elements=st.floats(-50, 50, width=32)),
    rejected=hnp.arrays(np.float32, SIZE, elements=st.floats(-50, 50, width=32)),
    coef=st.floats(0.0, 10.0, width=32),
)
@settings(max_examples=30, deadline=None)
def test_reward_centering_closed_form(chosen, rejected, coef):
    got = np.asarray(_centering_jit(chosen, rejected, np.float32(coef)))
    c64, r64 = chosen.astype(np.float64), rejected.astype(np.float64)
    expected = float(coef) * (c64 + r64) ** 2
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    eager_val = np.asarray(reward_centering_penalty(chosen, rejected, coef=float(coef)))
    np.testing.assert_allclose(eager_val, got, rtol=1e-6, atol=1e-6)
    # d/dr+ = d/dr- = 2 c (r+ + r-) per pair.
    g_chosen, g_rejected = _centering_grad_jit(chosen, rejected, np.float32(coef))
    expected_grad = 2.0 * float(coef) * (c64 + r64)
    np.testing.assert_allclose(np.asarray(g_chosen), expected_grad, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_rejected), expected_grad, rtol=1e-5, atol=1e-4)


@jax.jit
def _centering_jit(chosen, rejected, coef):
    return reward_centering_penalty(chosen, rejected, coef=coef)


@jax.jit
def _centering_grad_jit(chosen, rejected, coef):
    return jax.grad(lambda c, r: jnp.sum(reward_centering_penalty(c, r, coef=coef)), (0, 1))(
        chosen, rejected
    )


def test_reward_centering_zero_when_rewards_cancel(transform):
    r = jnp.array([-3.0, 0.0, 2.0, 10.0])
    fn = transform(lambda c, rj: reward_centering_penalty(c, rj, coef=0.7))
    np.testing.assert_array_equal(np.asarray(fn(r, -r)), 0.0)
    np.testing.assert_allclose(np.asarray(fn(r, r)), 0.7 * 4 * np.asarray(r) ** 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# masked_mean
# ---------------------------------------------------------------------------------------


@jax.jit
def _masked_mean_jit(values, weights):
    return masked_mean(values, weights)


@jax.jit
def _masked_mean_grad_jit(values, weights):
    return jax.grad(masked_mean)(values, weights)


weights_strategy = hnp.arrays(
    np.float32,
    SIZE,
    elements=st.one_of(st.just(0.0), st.floats(0.0009765625, 10.0, width=32)),
)


@given(
    values=hnp.arrays(np.float32, SIZE, elements=st.floats(-100, 100, width=32)),
    weights=weights_strategy,
)
@settings(max_examples=50, deadline=None)
def test_masked_mean_matches_numpy(values, weights):
    got = float(_masked_mean_jit(values, weights))
    w64 = weights.astype(np.float64)
    if w64.sum() > 0:
        expected = float(np.average(values.astype(np.float64), weights=w64))
        expected_grad = w64 / w64.sum()
    else:
        expected = 0.0
        expected_grad = np.zeros(SIZE)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert float(masked_mean(values, weights)) == pytest.approx(got, rel=1e-6, abs=1e-6)
    # d/dv_i = w_i / sum(w): a weighted mean is linear in the values.
    grad = np.asarray(_masked_mean_grad_jit(values, weights))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_masked_mean_without_weights_is_mean(transform):
    v = jnp.array([1.0, 2.0, 6.0, -1.0])
    assert float(transform(masked_mean)(v)) == pytest.approx(2.0)


def test_masked_mean_bool_mask(transform):
    v = jnp.array([1.0, 2.0, 6.0, -1.0])
    mask = jnp.array([True, False, True, False])
    assert float(transform(masked_mean)(v, mask)) == pytest.approx(3.5)


def test_masked_mean_all_masked_is_zero_with_finite_gradient(transform):
    v = jnp.array([1.0, -2.0, 3.0, 4.0])
    w = jnp.zeros(4)
    out = transform(masked_mean)(v, w)
    assert float(out) == 0.0
    assert not np.isnan(float(out))
    grad = np.asarray(transform(jax.grad(masked_mean))(v, w))
    np.testing.assert_array_equal(grad, np.zeros(4))
    # Even if the masked values are not finite.
    bad = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1.0])
    assert float(transform(masked_mean)(bad, w)) == 0.0
    np.testing.assert_array_equal(np.asarray(transform(jax.grad(masked_mean))(bad, w)), 0.0)


def test_masked_mean_nonfinite_masked_entries_do_not_leak(transform):
    v = jnp.array([1.0, jnp.nan, jnp.inf, 3.0, -jnp.inf])
    w = jnp.array([1.0, 0.0, 0.0, 3.0, 0.0])
    out = float(transform(masked_mean)(v, w))
    assert out == pytest.approx((1.0 + 9.0) / 4.0)
    grad = np.asarray(transform(jax.grad(masked_mean))(v, w))
    np.testing.assert_allclose(grad, [0.25, 0.0, 0.0, 0.75, 0.0])
    # The same through a loss: a NaN margin in a padded slot stays out of the loss value
    # (its gradient is the caller's concern: 0 * NaN from the loss's own derivative).
    m = jnp.array([0.0, jnp.nan, 0.0])
    mask = jnp.array([1.0, 0.0, 1.0])
    loss = transform(lambda x: masked_mean(bradley_terry_loss(x), mask))(m)
    assert float(loss) == pytest.approx(math.log(2.0))


# ---------------------------------------------------------------------------------------
# jit: same values, no recompilation
# ---------------------------------------------------------------------------------------


def test_jit_matches_eager_and_does_not_recompile():
    traces = []

    def objective(margins, chosen, rejected, weights):
        traces.append(None)  # runs only while tracing
        per_pair = bradley_terry_loss(margins, target_margin=0.5, label_smoothing=0.1)
        per_pair = (
            per_pair + hinge_loss(margins) + reward_centering_penalty(chosen, rejected, coef=0.01)
        )
        return masked_mean(per_pair, weights)

    jitted = jax.jit(objective)
    rng = np.random.default_rng(0)
    for _ in range(3):
        chosen = rng.normal(size=8).astype(np.float32)
        rejected = rng.normal(size=8).astype(np.float32)
        weights = (rng.random(8) < 0.7).astype(np.float32)
        args = (chosen - rejected, chosen, rejected, weights)
        np.testing.assert_allclose(
            float(jitted(*args)), float(objective(*args)), rtol=1e-6, atol=1e-7
        )
    eager_traces = 3
    assert len(traces) == eager_traces + 1
    assert jitted._cache_size() == 1
    # A new shape does retrace, so the counter above is live.
    jitted(*(np.zeros(4, np.float32),) * 3, np.ones(4, np.float32))
    assert len(traces) == eager_traces + 2


def test_bradley_terry_curvature_keeps_precision_for_misranked_pairs():
    margins = jnp.array([-30.0, -20.0, -10.0, 0.0, 10.0, 20.0])
    second = jax.vmap(jax.grad(jax.grad(lambda m: bradley_terry_loss(m[None])[0])))(margins)
    expected = np.exp(-np.abs(np.asarray(margins, np.float64)))
    expected = expected / (1.0 + expected) ** 2
    np.testing.assert_allclose(np.asarray(second), expected, rtol=1e-5)
