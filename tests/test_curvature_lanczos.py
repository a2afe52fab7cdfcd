"""Lanczos against numpy.linalg.eigh, its breakdown handling, and that its loop is compiled."""

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
    lanczos,
    lanczos_eigenvalues,
    tree_dot,
    tree_random_like,
)
from mars_jax.curvature.krylov import _orthogonalize, lanczos_init
from mars_jax.curvature.trees import stack_orthonormalize

LIKE = {"kernel": jnp.zeros((4, 10)), "bias": jnp.zeros(20)}
SIZE = 60


def indefinite_matrix(seed):
    """Random symmetric (GOE-like) matrix plus two separated outliers at each end."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((SIZE, SIZE))
    bulk = np.linalg.eigvalsh((noise + noise.T) / np.sqrt(4 * SIZE))
    eigenvalues = bulk.copy()
    eigenvalues[:2] = [-6.0, -4.0]
    eigenvalues[-3:] = [3.0, 4.5, 7.0]
    return symmetric_matrix(seed + 100, eigenvalues)


@functools.partial(
    jax.jit, static_argnames=("order", "num_eigenvalues", "which", "reorthogonalize", "vectors")
)
def ritz(matrix, key, *, order, num_eigenvalues, which, reorthogonalize=True, vectors=False):
    like = jax.tree.map(lambda leaf: leaf.astype(matrix.dtype), LIKE)
    return lanczos_eigenvalues(
        functools.partial(dense_matvec, matrix=matrix),
        tree_random_like(key, like),
        order=order,
        num_eigenvalues=num_eigenvalues,
        which=which,
        reorthogonalize=reorthogonalize,
        return_vectors=vectors,
    )


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_ritz_values_match_eigh(which):
    matrix = indefinite_matrix(0)
    exact = np.linalg.eigvalsh(matrix)
    expected = exact[::-1][:3] if which == "largest" else exact[:2]
    result = ritz(
        jnp.asarray(matrix, jnp.float32),
        jax.random.key(0),
        order=30,
        num_eigenvalues=len(expected),
        which=which,
        vectors=True,
    )
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-4)
    # Ritz vectors: unit, and their true residuals are as small as the estimates say.
    for i in range(len(expected)):
        vector = jax.tree.map(lambda stack, i=i: stack[i], result.eigenvectors)
        image = dense_matvec(vector, jnp.asarray(matrix, jnp.float32))
        error = jax.tree.map(lambda a, v, i=i: a - result.eigenvalues[i] * v, image, vector)
        np.testing.assert_allclose(float(tree_dot(vector, vector)), 1.0, rtol=1e-5)
        assert float(tree_dot(error, error)) ** 0.5 < 1e-3
        assert float(result.residuals[i]) < 1e-3
    assert json.loads(json.dumps(result.to_json()))["eigenvalues"][0] == pytest.approx(expected[0])


def test_full_order_reproduces_the_spectrum_float64(x64):
    # With order = P and full reorthogonalisation, T is A in an orthonormal basis.
    matrix = indefinite_matrix(1)
    exact = np.linalg.eigvalsh(matrix)[::-1]
    result = ritz(
        jnp.asarray(matrix), jax.random.key(1), order=SIZE, num_eigenvalues=SIZE, which="largest"
    )
    np.testing.assert_allclose(result.eigenvalues, exact, rtol=1e-11, atol=1e-11)


def test_tridiagonal_and_basis_float64(x64):
    matrix = jnp.asarray(indefinite_matrix(2))
    init = tree_random_like(jax.random.key(2), jax.tree.map(lambda x: x.astype(jnp.float64), LIKE))
    matvec = functools.partial(dense_matvec, matrix=matrix)
    result = jax.jit(functools.partial(lanczos, matvec, order=12, return_basis=True))(init)
    assert result.alphas.shape == (12,) and result.betas.shape == (11,)
    basis = np.stack(
        [ravel_pytree(jax.tree.map(lambda s, i=i: s[i], result.basis))[0] for i in range(12)]
    )
    np.testing.assert_allclose(basis @ basis.T, np.eye(12), atol=1e-12)
    tridiagonal = np.diag(result.alphas) + np.diag(result.betas, 1) + np.diag(result.betas, -1)
    np.testing.assert_allclose(basis @ np.asarray(matrix) @ basis.T, tridiagonal, atol=1e-12)
    np.testing.assert_allclose(basis[0], ravel_pytree(init)[0] / np.sqrt(SIZE), atol=1e-15)


def test_reorthogonalization_removes_ghost_copies(x64):
    matrix = jnp.asarray(indefinite_matrix(3))
    kwargs = {"order": 40, "num_eigenvalues": 2, "which": "magnitude"}
    plain = ritz(matrix, jax.random.key(3), reorthogonalize=False, **kwargs)
    full = ritz(matrix, jax.random.key(3), reorthogonalize=True, **kwargs)
    np.testing.assert_allclose(full.eigenvalues, [7.0, -6.0], rtol=1e-10)
    # Textbook Lanczos still finds the top, but loses orthogonality once it has converged and
    # finds it again: a spurious second copy of 7.
    np.testing.assert_allclose(plain.eigenvalues, [7.0, 7.0], rtol=1e-8)


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_breakdown_restarts_without_nan(reorthogonalize):
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps, so Lanczos breaks
    # down and restarts twice; 9 steps make three complete blocks.
    distinct = np.array([-1.0, 0.5, 2.0])
    matrix = jnp.asarray(symmetric_matrix(4, np.repeat(distinct, SIZE // 3)), jnp.float32)
    result = ritz(
        matrix,
        jax.random.key(4),
        order=9,
        num_eigenvalues=9,
        which="largest",
        reorthogonalize=reorthogonalize,
    )
    assert np.all(np.isfinite(result.eigenvalues)) and np.all(np.isfinite(result.residuals))
    # Every Ritz value is one of the eigenvalues, each found once per block.
    np.testing.assert_allclose(result.eigenvalues, np.repeat(distinct[::-1], 3), atol=1e-5)
    np.testing.assert_allclose(result.residuals, 0.0, atol=1e-5)


def flat_rows(stack, count):
    """The first ``count`` rows of a stack as a ``[count, P]`` float64 array."""
    rows = [ravel_pytree(jax.tree.map(lambda s, i=i: s[i], stack))[0] for i in range(count)]
    return np.asarray(np.stack(rows), np.float64)


def test_float32_basis_stays_orthonormal_to_full_order():
    # One Gram-Schmidt pass per step (a second only after cancellation) keeps V orthonormal
    # to float32 precision all the way to order = P, where the last residuals are tiny.
    matrix = jnp.asarray(indefinite_matrix(7), jnp.float32)
    matvec = functools.partial(dense_matvec, matrix=matrix)
    init = tree_random_like(jax.random.key(7), LIKE)
    result = jax.jit(functools.partial(lanczos, matvec, order=SIZE, return_basis=True))(init)
    basis = flat_rows(result.basis, SIZE)
    np.testing.assert_allclose(basis @ basis.T, np.eye(SIZE), atol=1e-5)
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(basis @ matrix @ basis.T)),
        np.linalg.eigvalsh(np.asarray(matrix, np.float64)),
        atol=1e-4,
    )


@pytest.mark.parametrize("chunk", [None, 2])
def test_second_gram_schmidt_pass_after_cancellation(chunk):
    # A vector 1e-4 away from the span of the basis: one classical Gram-Schmidt pass leaves
    # components of about eps / 1e-4 = 1e-3 along the basis; the second pass removes them.
    # Normal draws by numpy: the property holds for any rows, and eager JAX draws of these
    # shapes would each compile.
    rng = np.random.default_rng(9)

    def normal_stack(count):
        return jax.tree.map(
            lambda leaf: jnp.asarray(rng.standard_normal((count, *leaf.shape)), jnp.float32), LIKE
        )

    rows = stack_orthonormalize(normal_stack(5))
    carry = lanczos_init(jax.tree.map(lambda s: s[0], rows), 5, keep_basis=True)._replace(
        basis=rows
    )
    noise = jax.tree.map(lambda s: s[0], normal_stack(1))
    vector = jax.tree.map(lambda s, n: s[0] + s[3] + 1e-4 * n, rows, noise)
    projected = jax.jit(
        functools.partial(_orthogonalize, reorthogonalize=True, chunk=chunk),
    )(vector, carry, carry.current, jnp.int32(4))
    coefficients = flat_rows(rows, 5) @ np.asarray(ravel_pytree(projected)[0], np.float64)
    norm = float(tree_dot(projected, projected)) ** 0.5
    assert np.max(np.abs(coefficients)) <= 1e-5 * norm


def test_exact_breakdown_on_a_multiple_of_the_identity():
    result = jax.jit(functools.partial(lanczos, lambda v: 2.0 * v, order=5))(jnp.ones(7))
    np.testing.assert_allclose(result.alphas, 2.0, rtol=1e-6)
    np.testing.assert_array_equal(result.betas, 0.0)
    assert float(result.residual_norm) == 0.0


def test_order_is_checked():
    with pytest.raises(ValueError, match="order"):
        lanczos(lambda v: v, jnp.ones(4), order=5)
    with pytest.raises(ValueError, match="num_eigenvalues"):
        lanczos_eigenvalues(lambda v: v, jnp.ones(4), order=2, num_eigenvalues=3)


def count_equations(jaxpr) -> int:
    """Equations of a jaxpr including those of every nested jaxpr (loop bodies, conds)."""
    total = 0
    for equation in jaxpr.eqns:
        total += 1
        for param in equation.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr wraps a Jaxpr
                if hasattr(inner, "eqns"):
                    total += count_equations(inner)
    return total


def test_loop_is_compiled_not_unrolled():
    matrix = jnp.asarray(indefinite_matrix(5), jnp.float32)
    init = tree_random_like(jax.random.key(5), LIKE)

    def traced(order):
        fn = functools.partial(lanczos, functools.partial(dense_matvec, matrix=matrix), order=order)
        return count_equations(jax.make_jaxpr(fn)(init).jaxpr)

    small, large = traced(10), traced(50)
    assert small > 20
    assert abs(large - small) <= 2
