"""Hessian and Gauss-Newton products against closed forms and explicit matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.special import expit

from mars_jax.curvature import (
    dense_matvec,
    gauss_newton_vector_product,
    hessian_vector_product,
    linear_head_hessian,
    materialize,
    mean_weights,
    tree_axpy,
    tree_dot,
    tree_norm,
    tree_random_like,
    tree_scale,
)
from mars_jax.losses import LossSettings, pairwise_loss, pairwise_loss_fn
from mars_jax.margins import pair_margins
from mars_jax.models.heads import mlp_reward_model
from mars_jax.types import PairBatch

NUM_FEATURES = 5
NUM_PAIRS = 8
# Per-pair weights; the fifth pair is padding (its features are large, to show they are ignored).
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 1.0, 3.0, 1.0])
PADDED = 4


def linear_reward(params, features):
    return features @ params["theta"]


def make_batch(key, num_features=NUM_FEATURES, dtype=jnp.float64):
    chosen_key, rejected_key = jax.random.split(key)
    chosen = jax.random.normal(chosen_key, (NUM_PAIRS, num_features), dtype)
    rejected = jax.random.normal(rejected_key, (NUM_PAIRS, num_features), dtype)
    chosen = chosen.at[PADDED].multiply(100.0)
    return PairBatch(chosen, rejected, jnp.asarray(WEIGHTS, dtype))


def linear_heads(key):
    """(reward_fn, params, theta getter) for a linear head with and without a bias."""
    theta = 1.5 * jax.random.normal(key, (NUM_FEATURES,), jnp.float64)
    model = mlp_reward_model(NUM_FEATURES, [])
    with_bias = {"output": {"kernel": theta[:, None], "bias": jnp.array([0.3])}}
    return {
        "no_bias": (linear_reward, {"theta": theta}, lambda tree: tree["theta"]),
        "bias": (model.reward_fn, with_bias, lambda tree: tree["output"]["kernel"][:, 0]),
    }


SETTINGS = {
    "plain": LossSettings(),
    "target_smoothing": LossSettings(target_margin=0.5, label_smoothing=0.1),
}


@pytest.mark.parametrize("head", ["no_bias", "bias"])
@pytest.mark.parametrize("settings", list(SETTINGS))
def test_linear_head_products_match_closed_form(x64, head, settings):
    loss = SETTINGS[settings]
    reward_fn, params, theta_of = linear_heads(jax.random.key(1))[head]
    batch = make_batch(jax.random.key(2))
    vector = tree_random_like(jax.random.key(3), params, kind="normal")
    margins = pair_margins(reward_fn, params, batch.chosen, batch.rejected).margins
    assert float(jnp.std(margins)) > 0.5
    hessian = linear_head_hessian(
        batch.chosen, batch.rejected, batch.weight, margins, target_margin=loss.target_margin
    )
    expected = hessian @ theta_of(vector)

    hvp = jax.jit(hessian_vector_product(pairwise_loss_fn(reward_fn, loss=loss)))
    ggn = jax.jit(gauss_newton_vector_product(reward_fn, loss=loss))
    for product in (hvp(params, batch, vector), ggn(params, batch, vector)):
        np.testing.assert_allclose(theta_of(product), expected, rtol=1e-10, atol=1e-12)
        if head == "bias":
            np.testing.assert_allclose(product["output"]["bias"], 0.0, atol=1e-12)


def test_linear_head_hessian_matches_numpy_sum(x64):
    batch = make_batch(jax.random.key(4))
    margins = jnp.linspace(-2.0, 2.0, NUM_PAIRS)
    differences = np.asarray(batch.chosen - batch.rejected)
    curvature = expit(np.asarray(margins)) * expit(-np.asarray(margins))
    expected = (
        sum(w * c * np.outer(d, d) for w, c, d in zip(WEIGHTS, curvature, differences, strict=True))
        / WEIGHTS.sum()
    )
    actual = linear_head_hessian(batch.chosen, batch.rejected, batch.weight, margins)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_centering_gauss_newton_is_exact_for_linear_head(x64):
    loss = LossSettings(centering_coef=0.2)
    reward_fn, params, _ = linear_heads(jax.random.key(5))["bias"]
    batch = make_batch(jax.random.key(6))
    flat, unravel = ravel_pytree(params)
    loss_fn = pairwise_loss_fn(reward_fn, loss=loss)
    expected = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    ggn = gauss_newton_vector_product(reward_fn, loss=loss)
    actual = jax.jit(lambda p, b: materialize(lambda v: ggn(p, b, v), p))(params, batch)
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
    # The centering term makes the bias direction curved, unlike plain Bradley-Terry.
    assert float(expected[-1, -1]) > 0.1


def mlp_problem():
    model = mlp_reward_model(3, [4])
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(7)))
    batch = make_batch(jax.random.key(8), num_features=3)
    return model.reward_fn, params, batch


def test_mlp_hvp_materialized_equals_jax_hessian(x64):
    reward_fn, params, batch = mlp_problem()
    loss_fn = pairwise_loss_fn(reward_fn)
    flat, unravel = ravel_pytree(params)
    expected = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    hvp = hessian_vector_product(loss_fn)
    actual = jax.jit(lambda p, b: materialize(lambda v: hvp(p, b, v), p))(params, batch)
    assert actual.shape == (21, 21)
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("centering_coef", [0.0, 0.3])
def test_mlp_ggn_materialized_equals_explicit_jacobians(x64, centering_coef):
    loss = LossSettings(target_margin=0.2, centering_coef=centering_coef)
    reward_fn, params, batch = mlp_problem()
    flat, unravel = ravel_pytree(params)

    def side_rewards(f):
        rewards = pair_margins(reward_fn, unravel(f), batch.chosen, batch.rejected)
        return rewards.margins, rewards.chosen + rewards.rejected

    margins, _ = jax.jit(side_rewards)(flat)
    margin_jacobian, sum_jacobian = jax.jit(jax.jacobian(side_rewards))(flat)
    shifted = np.asarray(margins) - loss.target_margin
    scale = np.where(WEIGHTS > 0, WEIGHTS, 0.0) / WEIGHTS.sum()
    curvature = scale * expit(shifted) * expit(-shifted)
    jm, js = np.asarray(margin_jacobian), np.asarray(sum_jacobian)
    expected = jm.T @ (curvature[:, None] * jm) + 2 * centering_coef * js.T @ (scale[:, None] * js)

    ggn = gauss_newton_vector_product(reward_fn, loss=loss)
    actual = jax.jit(lambda p, b: materialize(lambda v: ggn(p, b, v), p))(params, batch)
    actual = np.asarray(actual)
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(actual, actual.T, atol=1e-14)
    assert np.linalg.eigvalsh(actual).min() > -1e-12
    # The Hessian of an MLP differs from its Gauss-Newton matrix (the test can tell them apart).
    loss_fn = pairwise_loss_fn(reward_fn, loss=loss)
    hessian = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    assert np.abs(np.asarray(hessian) - actual).max() > 1e-3


def test_all_padding_batch_has_zero_curvature():
    model = mlp_reward_model(3, [4])
    params = model.init(jax.random.key(9))
    batch = make_batch(jax.random.key(10), num_features=3, dtype=jnp.float32)
    batch = batch._replace(weight=jnp.zeros(NUM_PAIRS))
    vector = tree_random_like(jax.random.key(11), params)
    for operator in (
        hessian_vector_product(pairwise_loss_fn(model.reward_fn)),
        gauss_newton_vector_product(model.reward_fn, loss=LossSettings(centering_coef=0.1)),
    ):
        product = jax.jit(operator)(params, batch, vector)
        assert float(tree_norm(product)) == 0.0
    np.testing.assert_array_equal(mean_weights(batch.weight, NUM_PAIRS, jnp.float32), 0.0)


def test_hinge_gauss_newton_is_zero_and_unknown_kind_raises():
    model = mlp_reward_model(3, [4])
    params = model.init(jax.random.key(12))
    batch = make_batch(jax.random.key(13), num_features=3, dtype=jnp.float32)
    ggn = gauss_newton_vector_product(model.reward_fn, loss=LossSettings(kind="hinge"))
    assert float(tree_norm(jax.jit(ggn)(params, batch, params))) == 0.0
    with pytest.raises(ValueError, match=r"loss kind must be one of"):
        LossSettings(kind="logistic")


def test_loss_fn_wraps_pairwise_loss():
    model = mlp_reward_model(3, [4])
    params = model.init(jax.random.key(14))
    batch = make_batch(jax.random.key(15), num_features=3, dtype=jnp.float32)
    loss = LossSettings(label_smoothing=0.1, centering_coef=0.05)
    expected, _ = pairwise_loss(params, batch, reward_fn=model.reward_fn, loss=loss)
    actual = pairwise_loss_fn(model.reward_fn, loss=loss)(params, batch)
    assert float(actual) == float(expected)


def test_tree_helpers():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.array([1.0, -2.0]),)}
    np.testing.assert_allclose(float(tree_dot(tree, tree)), 55.0 + 5.0)
    np.testing.assert_allclose(float(tree_norm(tree)), 60.0**0.5)
    doubled = tree_scale(2.0, tree)
    np.testing.assert_allclose(doubled["b"][0], [2.0, -4.0])
    np.testing.assert_allclose(tree_axpy(-1.0, tree, doubled)["a"], tree["a"])
    signs = tree_random_like(jax.random.key(0), tree)
    assert jax.tree.map(jnp.shape, signs) == jax.tree.map(jnp.shape, tree)
    values = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(signs)])
    assert set(np.unique(values)) == {-1.0, 1.0}
    normal = tree_random_like(jax.random.key(0), tree, kind="normal")
    assert normal["a"].dtype == jnp.float32
    with pytest.raises(ValueError, match="kind"):
        tree_random_like(jax.random.key(0), tree, kind="uniform")


def test_dense_round_trip():
    like = {"x": jnp.zeros((2, 2)), "y": jnp.zeros(3)}
    matrix = jax.random.normal(jax.random.key(1), (7, 7))
    np.testing.assert_allclose(
        materialize(lambda v: dense_matvec(v, matrix), like), matrix, rtol=1e-6
    )
