"""Power iteration against numpy.linalg.eigh, on dense matrices and on an MLP's Hessian."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import symmetric_matrix
from jax.flatten_util import ravel_pytree

from mars_jax.curvature import (
    dense_matvec,
    hessian_vector_product,
    lanczos_eigenvalues,
    power_iteration,
    smallest_eigenvalue,
    tree_dot,
    tree_norm,
    tree_random_like,
)
from mars_jax.losses import pairwise_loss_fn
from mars_jax.models.heads import mlp_reward_model
from mars_jax.types import PairBatch

# A pytree of 30 numbers: the operators act on vectors shaped like this.
LIKE = {"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros(10)}
SIZE = 30


def psd_matrix(seed):
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((SIZE, SIZE))
    return factor @ factor.T / SIZE


@functools.partial(jax.jit, static_argnames=("num_iters", "tol"))
def top(matrix, key, *, num_iters, tol=0.0):
    like = jax.tree.map(lambda leaf: leaf.astype(matrix.dtype), LIKE)
    init = tree_random_like(key, like)
    return power_iteration(
        functools.partial(dense_matvec, matrix=matrix), init, num_iters=num_iters, tol=tol
    )


def test_top_eigenvalue_matches_eigh():
    matrix = psd_matrix(0)
    exact = np.linalg.eigh(matrix)
    result = top(jnp.asarray(matrix, jnp.float32), jax.random.key(0), num_iters=300)
    np.testing.assert_allclose(float(result.eigenvalue), exact.eigenvalues[-1], rtol=1e-4)
    assert int(result.num_iters) == 300
    assert abs(float(tree_norm(result.eigenvector)) - 1.0) < 1e-5
    flat, _ = ravel_pytree(result.eigenvector)  # dense_matvec's flattening order
    assert abs(float(flat @ exact.eigenvectors[:, -1])) > 0.999
    assert float(result.residual) < 1e-2
    assert json.loads(json.dumps(result.to_json()))["num_iters"] == 300


def test_tolerance_stops_early_with_consistent_residual():
    matrix = jnp.asarray(psd_matrix(1), jnp.float32)
    result = top(matrix, jax.random.key(1), num_iters=500, tol=1e-3)
    assert 1 < int(result.num_iters) < 500
    assert float(result.residual) < 1e-3
    vector = result.eigenvector
    image = dense_matvec(vector, matrix)
    error = jax.tree.map(lambda a, v: a - result.eigenvalue * v, image, vector)
    np.testing.assert_allclose(
        float(tree_norm(error)) / float(result.eigenvalue), float(result.residual), rtol=1e-3
    )
    np.testing.assert_allclose(float(tree_dot(vector, image)), float(result.eigenvalue), rtol=1e-6)


def test_smallest_eigenvalue_by_shift(x64):
    eigenvalues = np.concatenate([[0.1], np.linspace(1.0, 5.0, SIZE - 2), [10.0]])
    matrix = jnp.asarray(symmetric_matrix(2, eigenvalues))
    key_top, key_bottom = jax.random.split(jax.random.key(2))
    largest = top(matrix, key_top, num_iters=400)
    np.testing.assert_allclose(float(largest.eigenvalue), 10.0, rtol=1e-10)

    @jax.jit
    def bottom(matrix, key, shift):
        init = tree_random_like(key, jax.tree.map(lambda x: x.astype(jnp.float64), LIKE))
        matvec = functools.partial(dense_matvec, matrix=matrix)
        return smallest_eigenvalue(matvec, init, num_iters=400, shift=shift)

    smallest = bottom(matrix, key_bottom, largest.eigenvalue)
    np.testing.assert_allclose(float(smallest.eigenvalue), 0.1, rtol=1e-8)


def test_zero_operator_gives_no_nan():
    result = top(jnp.zeros((SIZE, SIZE)), jax.random.key(3), num_iters=5)
    assert float(result.eigenvalue) == 0.0
    assert float(result.residual) == 0.0
    assert int(result.num_iters) == 5
    assert np.isfinite(float(tree_norm(result.eigenvector)))


def test_num_iters_must_be_positive():
    with pytest.raises(ValueError, match="num_iters"):
        power_iteration(lambda v: v, jnp.ones(3), num_iters=0)


def test_estimators_on_an_mlp_hessian_match_eigh(x64):
    # End to end: params and batch are arguments of one jit; the operator is bound inside.
    model = mlp_reward_model(3, [4])
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(5)))
    features = jax.random.normal(jax.random.key(6), (2, 6, 3), jnp.float64)
    batch = PairBatch(features[0], features[1], jnp.ones(6, jnp.float64))
    loss_fn = pairwise_loss_fn(model.reward_fn)

    @jax.jit
    def curvature(params, batch, key):
        hvp = hessian_vector_product(loss_fn)
        matvec = functools.partial(hvp, params, batch)
        init = tree_random_like(key, params)
        top = power_iteration(matvec, init, num_iters=500, tol=1e-10)
        ritz = lanczos_eigenvalues(matvec, init, order=21, num_eigenvalues=21)
        return top, ritz

    flat, unravel = ravel_pytree(params)
    exact = np.linalg.eigvalsh(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat))
    top, ritz = curvature(params, batch, jax.random.key(7))
    dominant = exact[np.argmax(np.abs(exact))]
    np.testing.assert_allclose(float(top.eigenvalue), dominant, rtol=1e-6)
    np.testing.assert_allclose(ritz.eigenvalues, exact[::-1], rtol=1e-8, atol=1e-10)
    assert exact.min() < 0 < exact.max()  # an MLP's Hessian is indefinite
    # Another batch of the same shape reuses the compiled loop.
    curvature(params, batch._replace(weight=jnp.arange(6.0)), jax.random.key(8))
    assert curvature._cache_size() == 1
