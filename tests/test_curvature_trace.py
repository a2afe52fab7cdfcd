"""Hutchinson and Hutch++ trace estimates against exact traces of dense matrices."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.curvature import dense_matvec, hutch_plus_plus, hutchinson_trace

LIKE = {"kernel": jnp.zeros((5, 8)), "bias": jnp.zeros(10)}
SIZE = 50
# One budget for every test, so that they share compiled estimators.
BUDGET = 18


def rotated(seed, eigenvalues):
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q``, float32."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return jnp.asarray((basis * np.asarray(eigenvalues)) @ basis.T, jnp.float32)


@functools.partial(jax.jit, static_argnames=("estimator", "budget", "probe", "batched"))
def estimate(matrix, key, *, estimator, budget, probe="rademacher", batched=False):
    matvec = functools.partial(dense_matvec, matrix=matrix)
    if estimator == "hutchinson":
        return hutchinson_trace(matvec, key, LIKE, num_probes=budget, probe=probe, batched=batched)
    return hutch_plus_plus(matvec, key, LIKE, num_matvecs=budget, probe=probe, batched=batched)


def test_rademacher_is_exact_on_a_diagonal():
    diagonal = {"kernel": jnp.linspace(0.1, 4.0, 40).reshape(5, 8), "bias": jnp.arange(10.0)}
    result = hutchinson_trace(
        lambda v: jax.tree.map(jnp.multiply, diagonal, v), jax.random.key(0), LIKE, num_probes=6
    )
    exact = float(sum(jnp.sum(leaf) for leaf in jax.tree.leaves(diagonal)))
    np.testing.assert_allclose(float(result.estimate), exact, rtol=1e-6)
    assert float(result.std_error) <= 1e-6 * exact
    assert json.loads(json.dumps(result.to_json())) == pytest.approx(
        {"estimate": exact, "std_error": 0.0, "num_probes": 6}, abs=1e-4
    )


@pytest.mark.parametrize("probe", ["rademacher", "normal"])
def test_dense_estimate_within_four_standard_errors(probe):
    factor = np.random.default_rng(1).standard_normal((SIZE, SIZE))
    matrix = jnp.asarray(factor @ factor.T / SIZE, jnp.float32)
    exact = float(jnp.trace(matrix))
    looped = estimate(matrix, jax.random.key(1), estimator="hutchinson", budget=BUDGET, probe=probe)
    batched = estimate(
        matrix, jax.random.key(1), estimator="hutchinson", budget=BUDGET, probe=probe, batched=True
    )
    np.testing.assert_allclose(float(batched.estimate), float(looped.estimate), rtol=1e-6)
    np.testing.assert_allclose(float(batched.std_error), float(looped.std_error), rtol=1e-5)
    assert 0 < float(looped.std_error) < 0.1 * exact
    assert abs(float(looped.estimate) - exact) < 4 * float(looped.std_error)


def test_hutch_plus_plus_beats_hutchinson_on_decaying_spectrum():
    # Eigenvalues 1/i^2 in a random basis: Hutch++'s sketch captures the few large ones.
    eigenvalues = 1.0 / np.arange(1, SIZE + 1) ** 2
    matrix = rotated(2, eigenvalues)
    exact = eigenvalues.sum()
    keys = jax.random.split(jax.random.key(2), 32)
    errors = {}
    for estimator in ("hutchinson", "hutch_plus_plus"):
        values = [estimate(matrix, k, estimator=estimator, budget=BUDGET).estimate for k in keys]
        errors[estimator] = np.abs(np.asarray(values) - exact)
    # Averaged over 32 seeds; Hutch++ is about ten times more accurate here.
    assert errors["hutch_plus_plus"].mean() < 0.3 * errors["hutchinson"].mean()
    assert np.median(errors["hutch_plus_plus"]) < 0.3 * np.median(errors["hutchinson"])


def test_hutch_plus_plus_is_exact_on_low_rank_and_batched_matches_looped():
    eigenvalues = np.zeros(SIZE)
    eigenvalues[:3] = [5.0, 2.0, 0.5]
    matrix = rotated(3, eigenvalues)
    looped = estimate(matrix, jax.random.key(3), estimator="hutch_plus_plus", budget=BUDGET)
    batched = estimate(
        matrix, jax.random.key(3), estimator="hutch_plus_plus", budget=BUDGET, batched=True
    )
    # A sketch of 6 columns spans the rank-3 range: the trace is exact, the remainder is 0.
    np.testing.assert_allclose(float(looped.estimate), 7.5, rtol=1e-5)
    assert float(looped.std_error) < 1e-5
    assert looped.num_probes == BUDGET
    np.testing.assert_allclose(float(batched.estimate), float(looped.estimate), rtol=1e-5)


def test_budgets_are_checked():
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(lambda v: v, jax.random.key(0), LIKE, num_probes=1)
    with pytest.raises(ValueError, match="num_matvecs"):
        hutch_plus_plus(lambda v: v, jax.random.key(0), LIKE, num_matvecs=3)
    with pytest.raises(ValueError, match="kind"):
        hutchinson_trace(lambda v: v, jax.random.key(0), LIKE, num_probes=4, probe="uniform")
