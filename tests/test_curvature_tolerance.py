"""Curvature to a tolerance: stopping rules, honest error estimates, one compile."""

from __future__ import annotations

import doctest
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import symmetric_matrix
from jax.flatten_util import ravel_pytree

import mars_jax.curvature.tolerance as tolerance_module
from mars_jax.curvature import (
    dense_matvec,
    hessian_vector_product,
    top_eigenvalues,
    trace_to_tolerance,
    tree_dot,
)
from mars_jax.losses import pairwise_loss_fn
from mars_jax.models.heads import mlp_reward_model
from mars_jax.types import PairBatch

LIKE = {"kernel": jnp.zeros((4, 10)), "bias": jnp.zeros(20)}
SIZE = 60


def spectrum(seed, top):
    """A GOE-like bulk in [-1, 1] with the given outliers at the top and -6, -4 at the bottom."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((SIZE, SIZE))
    eigenvalues = np.linalg.eigvalsh((noise + noise.T) / np.sqrt(4 * SIZE))
    eigenvalues[:2] = [-6.0, -4.0]
    eigenvalues[-len(top) :] = top
    return eigenvalues


@functools.partial(
    jax.jit, static_argnames=("k", "which", "max_order", "check_every", "return_vectors")
)
def eigen(matrix, key, rtol, atol=0.0, **options):
    like = jax.tree.map(lambda leaf: leaf.astype(matrix.dtype), LIKE)
    matvec = functools.partial(dense_matvec, matrix=matrix)
    return top_eigenvalues(matvec, key, like, rtol=rtol, atol=atol, **options)


@functools.partial(
    jax.jit, static_argnames=("method", "max_matvecs", "block", "min_probes", "max_sketch")
)
def trace(matrix, key, rtol, **options):
    like = jax.tree.map(lambda leaf: leaf.astype(matrix.dtype), LIKE)
    matvec = functools.partial(dense_matvec, matrix=matrix)
    return trace_to_tolerance(matvec, key, like, rtol=rtol, **options)


def test_docstring_example():
    result = doctest.testmod(tolerance_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize(
    ("which", "k", "expected"),
    [
        ("largest", 3, lambda exact: exact[::-1][:3]),
        ("smallest", 2, lambda exact: exact[:2]),
        ("magnitude", 2, lambda exact: exact[np.argsort(-np.abs(exact))][:2]),
    ],
)
@pytest.mark.parametrize("rtol", [1e-2, 1e-4])
def test_eigenvalues_stop_within_tolerance_of_eigh(which, k, expected, rtol):
    matrix = symmetric_matrix(0, spectrum(0, [3.0, 4.5, 7.0]))
    exact = expected(np.linalg.eigvalsh(matrix))
    result = eigen(
        jnp.asarray(matrix, jnp.float32),
        jax.random.key(0),
        rtol,
        k=k,
        which=which,
        return_vectors=True,
    )
    assert bool(result.converged)
    assert np.all(np.asarray(result.errors) <= rtol)
    np.testing.assert_allclose(
        np.asarray(result.errors), np.asarray(result.residuals) / np.abs(exact), rtol=1e-3
    )
    actual = np.abs(np.asarray(result.eigenvalues) - exact)
    # The residual bounds the error (float32 roundoff aside), and so the tolerance does.
    assert np.all(actual <= np.asarray(result.residuals) + 1e-5 * np.abs(exact))
    assert np.all(actual <= rtol * np.abs(exact))
    assert int(result.num_matvecs) < SIZE
    # The Ritz vectors (asked for in every case: one compile with the tests below) have the
    # residuals reported.
    for i, value in enumerate(np.asarray(result.eigenvalues, np.float64)):
        vector = ravel_pytree(jax.tree.map(lambda s, i=i: s[i], result.eigenvectors))[0]
        vector = np.asarray(vector, np.float64)
        true_residual = np.linalg.norm(matrix @ vector - value * vector)
        assert true_residual == pytest.approx(float(result.residuals[i]), rel=0.05, abs=1e-5)


def clustered_spectrum(seed, kind):
    """A GOE-like bulk in [-1, 1] with clustered ends: ``kind`` at the top, mirrored below."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((SIZE, SIZE))
    eigenvalues = np.linalg.eigvalsh((noise + noise.T) / np.sqrt(4 * SIZE))
    ends = {
        "pair 10%": [9.0, 10.0],  # relative gaps of the top pair
        "pair 1%": [9.9, 10.0],
        "triple 1%": [9.8, 9.9, 10.0],
        "pair 1% and an isolated third": [5.0, 9.9, 10.0],
        "dense": list(3.0 + 0.3 * np.sort(rng.random(15))),  # 15 eigenvalues in [3, 3.3]
    }[kind]
    eigenvalues[-len(ends) :] = ends
    eigenvalues[: len(ends)] = -np.asarray(ends[::-1])  # the same at the bottom
    return eigenvalues


@pytest.mark.parametrize(
    "kind", ["pair 10%", "pair 1%", "triple 1%", "pair 1% and an isolated third", "dense"]
)
@pytest.mark.parametrize(("k", "which"), [(1, "largest"), (3, "largest"), (2, "smallest")])
def test_converged_values_are_within_tolerance_of_the_spectrum_on_clustered_ends(
    x64, kind, k, which
):
    # The stopping test's promise, checked against eigh wherever the loop says converged: each
    # value is within its residual, hence the tolerance, of an eigenvalue of A. (Not always
    # the wanted one: on the dense end, seed 0, rtol 1e-2 stops 2.8% below the top eigenvalue,
    # within its residual of another eigenvalue of the cluster.)
    for seed in range(3):
        exact = np.sort(clustered_spectrum(seed, kind))
        matrix = jnp.asarray(symmetric_matrix(seed, exact))
        for rtol in (1e-1, 1e-2, 1e-4, 1e-8):
            result = eigen(matrix, jax.random.key(seed), rtol, k=k, which=which, max_order=SIZE)
            assert bool(result.converged)
            values, residuals = np.asarray(result.eigenvalues), np.asarray(result.residuals)
            nearest = np.min(np.abs(values[:, None] - exact[None, :]), axis=1)
            assert np.all(nearest <= residuals + 1e-12)
            assert np.all(nearest <= rtol * np.abs(values) + 1e-12)
            assert np.all(nearest / np.abs(values) <= np.asarray(result.errors) + 1e-12)


def test_looser_tolerance_spends_fewer_products():
    # A small relative gap at the top (7.0 against 6.8) makes Lanczos take its time.
    matrix = jnp.asarray(symmetric_matrix(1, spectrum(1, [6.8, 7.0])), jnp.float32)
    counts = [
        int(eigen(matrix, jax.random.key(1), rtol, check_every=2).num_matvecs)
        for rtol in (1e-1, 1e-3, 1e-5)
    ]
    assert counts[0] < counts[1] < counts[2]


def test_ritz_vectors_have_the_residuals_reported():
    # k = 3 with vectors: the static arguments of the "largest" case above (one compile).
    matrix = jnp.asarray(symmetric_matrix(2, spectrum(2, [3.0, 4.5, 7.0])), jnp.float32)
    result = eigen(matrix, jax.random.key(2), 1e-3, k=3, which="largest", return_vectors=True)
    for i in range(3):
        vector = jax.tree.map(lambda stack, i=i: stack[i], result.eigenvectors)
        image = dense_matvec(vector, matrix)
        error = jax.tree.map(lambda a, v, i=i: a - result.eigenvalues[i] * v, image, vector)
        np.testing.assert_allclose(float(tree_dot(vector, vector)), 1.0, rtol=1e-5)
        true_residual = float(tree_dot(error, error)) ** 0.5
        assert true_residual == pytest.approx(float(result.residuals[i]), rel=0.05, abs=1e-5)


# The static arguments of the two tests below are shared: one compile.
RESTARTS = {"k": 6, "max_order": 9, "check_every": 4, "return_vectors": True}


def test_not_converged_at_max_order():
    matrix = jnp.asarray(symmetric_matrix(1, spectrum(1, [6.8, 7.0])), jnp.float32)
    result = eigen(matrix, jax.random.key(3), 1e-6, **RESTARTS)
    assert not bool(result.converged)
    assert int(result.num_matvecs) == 9  # checks at 4 and 8, the last chunk cut at max_order
    assert float(result.errors[0]) > 1e-6  # the top value alone is not converged


def test_absolute_tolerance_for_an_eigenvalue_at_zero(x64):
    # PSD with a null space: the smallest eigenvalue is 0, so only atol can be met.
    # Both runs stop by max_order = 30 (atol is traced: one compile); at the full order the
    # residual would vanish and any tolerance be met.
    eigenvalues = np.concatenate([np.zeros(10), np.linspace(1.0, 5.0, SIZE - 10)])
    matrix = jnp.asarray(symmetric_matrix(4, eigenvalues))
    result = eigen(matrix, jax.random.key(4), 1e-3, 1e-6, which="smallest", max_order=30)
    assert bool(result.converged)
    assert abs(float(result.eigenvalues[0])) <= 1e-6
    without_atol = eigen(matrix, jax.random.key(4), 1e-3, 0.0, which="smallest", max_order=30)
    assert not bool(without_atol.converged)


def test_invariant_krylov_space_converges_without_nan():
    # Three distinct eigenvalues: the Krylov space of the start vector has dimension 3.
    distinct = np.array([-1.0, 0.5, 2.0])
    # Checked at every step (k = 3 with vectors: one compile with the tests above); the first
    # two checks cannot stop (fewer steps than k).
    matrix = jnp.asarray(symmetric_matrix(5, np.repeat(distinct, SIZE // 3)), jnp.float32)
    result = eigen(matrix, jax.random.key(5), 1e-4, k=3, which="largest", return_vectors=True)
    assert bool(result.converged) and int(result.num_matvecs) == 3
    np.testing.assert_allclose(result.eigenvalues, distinct[::-1], rtol=1e-5)
    assert np.all(np.isfinite(result.errors))
    flat = np.stack(
        [ravel_pytree(jax.tree.map(lambda s, i=i: s[i], result.eigenvectors))[0] for i in range(3)]
    )
    for vector, value in zip(flat, result.eigenvalues, strict=True):
        np.testing.assert_allclose(np.asarray(matrix) @ vector, value * vector, atol=1e-4)


def test_equal_ritz_values_get_orthonormal_vectors():
    # After two restarts T is three copies of the same 3 x 3 block: every Ritz value is
    # threefold, and each copy needs its own vector.
    distinct = np.array([-1.0, 0.5, 2.0])
    matrix = jnp.asarray(symmetric_matrix(5, np.repeat(distinct, SIZE // 3)), jnp.float32)
    result = eigen(matrix, jax.random.key(5), 0.0, **RESTARTS)
    np.testing.assert_allclose(result.eigenvalues, np.repeat(distinct[::-1][:2], 3), rtol=1e-5)
    np.testing.assert_allclose(result.residuals, 0.0, atol=1e-5)
    flat = np.stack(
        [ravel_pytree(jax.tree.map(lambda s, i=i: s[i], result.eigenvectors))[0] for i in range(6)]
    )
    np.testing.assert_allclose(flat @ flat.T, np.eye(6), atol=1e-4)
    for vector, value in zip(flat, result.eigenvalues, strict=True):
        np.testing.assert_allclose(np.asarray(matrix) @ vector, value * vector, atol=1e-4)


def test_mlp_hessian_top_eigenvalues_match_eigh(x64):
    # A pytree operator end to end: the Hessian of a small MLP head's Bradley-Terry loss.
    model = mlp_reward_model(3, [4])
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(5)))
    features = jax.random.normal(jax.random.key(6), (2, 6, 3), jnp.float64)
    batch = PairBatch(features[0], features[1], jnp.ones(6, jnp.float64))
    loss_fn = pairwise_loss_fn(model.reward_fn)

    @jax.jit
    def curvature(params, batch, key):
        hvp = hessian_vector_product(loss_fn)
        return top_eigenvalues(functools.partial(hvp, params, batch), key, params, k=2, rtol=1e-6)

    flat, unravel = ravel_pytree(params)
    exact = np.linalg.eigvalsh(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat))
    exact = exact[::-1]
    result = curvature(params, batch, jax.random.key(7))
    assert bool(result.converged)
    np.testing.assert_allclose(result.eigenvalues, exact[:2], rtol=1e-6)
    assert int(result.num_matvecs) <= flat.size


def test_eigenvalues_compile_once_and_serialise():
    matrix = jnp.asarray(symmetric_matrix(6, spectrum(6, [3.0, 7.0])), jnp.float32)
    fresh = jax.jit(
        lambda *args, **kwargs: eigen(*args, **kwargs), static_argnames=("k", "max_order")
    )
    first = fresh(matrix, jax.random.key(0), 1e-3, k=1, max_order=40)
    fresh(2.0 * matrix, jax.random.key(1), 1e-2, k=1, max_order=40)  # new key, data, rtol
    assert fresh._cache_size() == 1
    loaded = json.loads(json.dumps(first.to_json()))
    assert loaded["converged"] is True
    assert loaded["eigenvalues"][0] == pytest.approx(7.0, rel=1e-3)


def count_equations(jaxpr) -> int:
    """Equations of a jaxpr including those of every nested jaxpr (loop bodies, conds)."""
    total = 0
    for equation in jaxpr.eqns:
        total += 1
        for param in equation.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += count_equations(inner)
    return total


def test_loops_are_compiled_not_unrolled():
    like = {"kernel": jnp.zeros((10, 20)), "bias": jnp.zeros(100)}

    def traced(fn, **options):
        jaxpr = jax.make_jaxpr(functools.partial(fn, lambda v: v, **options))(
            jax.random.key(0), like
        )
        return count_equations(jaxpr.jaxpr)

    # Orders equal to 1 modulo 16: the bisection of eigh_tridiagonal unrolls (order - 1) % 16
    # steps of its Sturm sequence, a bounded amount that does not grow with the order.
    counts = {traced(top_eigenvalues, max_order=order) for order in (17, 49, 145)}
    assert len(counts) == 1
    for method in ("hutchinson", "deflated"):
        small = traced(trace_to_tolerance, method=method, max_matvecs=40, max_sketch=10)
        large = traced(trace_to_tolerance, method=method, max_matvecs=4000, max_sketch=50)
        assert small == large


def test_eigenvalue_arguments_are_checked():
    with pytest.raises(ValueError, match="which"):
        top_eigenvalues(lambda v: v, jax.random.key(0), LIKE, which="top")
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(lambda v: v, jax.random.key(0), jnp.zeros(3), k=4)
    with pytest.raises(ValueError, match="check_every"):
        top_eigenvalues(lambda v: v, jax.random.key(0), LIKE, check_every=0)


# ----------------------------------------------------------------------------- trace


def wishart(seed):
    factor = np.random.default_rng(seed).standard_normal((SIZE, SIZE))
    return jnp.asarray(factor @ factor.T / SIZE, jnp.float32)


def test_trace_stops_within_a_few_standard_errors_of_the_exact_trace():
    matrix = wishart(0)
    exact = float(jnp.trace(matrix))
    counts = []
    for rtol in (1e-1, 3e-2, 1e-2):
        result = trace(matrix, jax.random.key(0), rtol)
        assert bool(result.converged)
        assert float(result.std_error) <= rtol * abs(float(result.estimate))
        assert abs(float(result.estimate) - exact) <= 4 * float(result.std_error)
        assert int(result.num_matvecs) == int(result.num_probes) >= 20
        assert int(result.sketch_size) == 0
        counts.append(int(result.num_matvecs))
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("method", ["hutchinson", "deflated"])
def test_trace_standard_error_is_honest_over_seeds(method):
    # Over 200 seeds, (estimate - exact) / std_error should look like a standard normal,
    # despite the data-dependent stopping.
    matrix = wishart(1)
    exact = float(jnp.trace(matrix))
    keys = jax.random.split(jax.random.key(1), 200)
    results = jax.vmap(lambda key: trace(matrix, key, 3e-2, method=method, max_sketch=10))(keys)
    assert np.all(np.asarray(results.converged))
    scores = (np.asarray(results.estimate) - exact) / np.asarray(results.std_error)
    assert np.mean(np.abs(scores) <= 2.0) >= 0.85
    assert 0.7 <= np.sqrt(np.mean(scores**2)) <= 1.4
    assert abs(np.mean(scores)) < 0.3  # no bias from stopping


def test_deflation_is_exact_on_low_rank_and_saves_products_on_a_decaying_spectrum():
    low_rank = np.zeros(SIZE)
    low_rank[:3] = [5.0, 2.0, 0.5]
    result = trace(
        jnp.asarray(symmetric_matrix(2, low_rank), jnp.float32),
        jax.random.key(2),
        1e-3,
        method="deflated",
    )
    np.testing.assert_allclose(float(result.estimate), 7.5, rtol=1e-5)
    assert bool(result.converged) and float(result.std_error) < 1e-5
    assert 3 <= int(result.sketch_size) <= 10  # stops growing once it stops paying

    eigenvalues = 1.0 / np.arange(1, SIZE + 1) ** 1.5
    decaying = jnp.asarray(symmetric_matrix(3, eigenvalues), jnp.float32)
    plain = trace(decaying, jax.random.key(3), 1e-2)
    deflated = trace(decaying, jax.random.key(3), 1e-2, method="deflated")
    for result in (plain, deflated):
        assert bool(result.converged)
        assert abs(float(result.estimate) - eigenvalues.sum()) <= 4 * float(result.std_error)
    assert int(deflated.num_matvecs) * 10 < int(plain.num_matvecs)
    assert int(deflated.num_matvecs) == int(deflated.sketch_size) + int(deflated.num_probes)


def test_budget_cap_and_blocks_share_probes():
    # rtol = 0 never converges: every variant spends exactly its budget, on the same probes.
    matrix = wishart(4)
    looped = trace(matrix, jax.random.key(4), 0.0, max_matvecs=24)
    blocked = trace(matrix, jax.random.key(4), 0.0, max_matvecs=24, block=8)
    uneven = trace(matrix, jax.random.key(4), 0.0, max_matvecs=30, block=8)  # 3 blocks fit
    for result in (looped, blocked, uneven):
        assert not bool(result.converged)
        assert int(result.num_matvecs) == 24
    np.testing.assert_allclose(float(blocked.estimate), float(looped.estimate), rtol=1e-6)
    np.testing.assert_allclose(float(blocked.std_error), float(looped.std_error), rtol=1e-5)


def test_trace_compiles_once_and_serialises():
    fresh = jax.jit(lambda *args: trace(*args))  # a new function: its own cache
    first = fresh(wishart(5), jax.random.key(5), 5e-2)
    fresh(wishart(6), jax.random.key(6), 2e-2)  # new key, data, rtol
    assert fresh._cache_size() == 1
    loaded = json.loads(json.dumps(first.to_json()))
    assert loaded["num_matvecs"] == loaded["num_probes"] >= 20
    assert loaded["estimate"] == pytest.approx(float(first.estimate))


def test_trace_arguments_are_checked():
    with pytest.raises(ValueError, match="method"):
        trace_to_tolerance(lambda v: v, jax.random.key(0), LIKE, method="hutch++")
    with pytest.raises(ValueError, match="probe"):
        trace_to_tolerance(lambda v: v, jax.random.key(0), LIKE, probe="uniform")
    with pytest.raises(ValueError, match="min_probes"):
        trace_to_tolerance(lambda v: v, jax.random.key(0), LIKE, min_probes=1)
    with pytest.raises(ValueError, match="max_matvecs"):
        trace_to_tolerance(lambda v: v, jax.random.key(0), LIKE, max_matvecs=15)
    with pytest.raises(ValueError, match="block"):
        trace_to_tolerance(lambda v: v, jax.random.key(0), LIKE, block=0)
