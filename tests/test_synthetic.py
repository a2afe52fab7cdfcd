"""Tests of the synthetic preference suite and the representation-level pool generator."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from mars_jax.data.synthetic import (
    SyntheticSuite,
    make_pool_variations,
    make_synthetic_suite,
    true_reward,
)
from mars_jax.errors import MarsError


def _suite(**overrides: Any) -> SyntheticSuite:
    """A small suite with overridable settings."""
    kwargs: dict[str, Any] = {"seed": 0, "num_base_pairs": 60, "num_heldout_pairs": 50}
    return make_synthetic_suite(**(kwargs | overrides))


def _leaves(suite: SyntheticSuite) -> list[np.ndarray]:
    """All array leaves of a suite, as numpy arrays."""
    arrays = (suite.base, suite.heldout, suite.pool, suite.pool_true_margin, suite.reward_params)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(arrays)]


def test_same_seed_identical_different_seed_differs() -> None:
    first, second, other = _suite(), _suite(), _suite(seed=1)
    for a, b in zip(_leaves(first), _leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.info == second.info
    assert not np.array_equal(first.base.chosen, other.base.chosen)
    assert not np.array_equal(first.pool.chosen, other.pool.chosen)
    assert not np.array_equal(first.reward_params.linear, other.reward_params.linear)


def test_shapes_dtypes_and_csr_invariants() -> None:
    n, m, d, p = 37, 23, 5, 3
    suite = _suite(num_base_pairs=n, num_heldout_pairs=m, feature_dim=d, paraphrases=p)
    for pairs, size in ((suite.base, n), (suite.heldout, m)):
        assert pairs.chosen.shape == pairs.rejected.shape == (size, d)
        assert pairs.chosen.dtype == pairs.rejected.dtype == np.float32
        assert pairs.prompt.shape == pairs.true_margin.shape == pairs.flipped.shape == (size,)
        assert pairs.prompt.dtype == np.int32
        assert pairs.true_margin.dtype == np.float32
        assert pairs.flipped.dtype == np.bool_
    pool = suite.pool
    num_pool = n * p * p
    assert pool.chosen.shape == pool.rejected.shape == (num_pool, d)
    assert pool.source.shape == suite.pool_true_margin.shape == (num_pool,)
    assert pool.source.dtype == pool.offsets.dtype == np.int32
    offsets, source = np.asarray(pool.offsets), np.asarray(pool.source)
    assert offsets.shape == (n + 1,)
    assert offsets[0] == 0 and offsets[-1] == num_pool
    np.testing.assert_array_equal(np.diff(offsets), p * p)
    assert np.all(np.diff(source) >= 0)
    for i in range(n):
        np.testing.assert_array_equal(source[offsets[i] : offsets[i + 1]], i)
    assert suite.info["num_pool_pairs"] == num_pool
    assert suite.info["num_base_prompts"] == int(np.ceil(n / suite.info["pairs_per_prompt"]))


def test_true_reward_matches_stored_margins() -> None:
    suite = _suite()
    params = suite.reward_params
    for pairs in (suite.base, suite.heldout):
        margin = true_reward(params, pairs.chosen) - true_reward(params, pairs.rejected)
        np.testing.assert_allclose(margin, pairs.true_margin, rtol=1e-5, atol=1e-5)
    pool_margin = true_reward(params, suite.pool.chosen) - true_reward(params, suite.pool.rejected)
    np.testing.assert_allclose(pool_margin, suite.pool_true_margin, rtol=1e-5, atol=1e-5)
    assert true_reward(params, np.zeros((2, 3, 16), np.float32)).shape == (2, 3)


def test_base_pairs_are_distinct_within_prompt() -> None:
    suite = _suite(num_base_pairs=400, responses_per_prompt=4, pairs_per_prompt=6)
    chosen, rejected = np.asarray(suite.base.chosen), np.asarray(suite.base.rejected)
    prompt = np.asarray(suite.base.prompt)
    assert np.bincount(prompt).max() == 6
    keys = {
        (int(pid), *sorted((c.tobytes(), r.tobytes())))
        for pid, c, r in zip(prompt, chosen, rejected, strict=True)
    }
    assert len(keys) == 400
    assert not np.any(np.all(chosen == rejected, axis=1))


def test_pool_without_noise_repeats_base_pair() -> None:
    suite = _suite(perturbation_scale=0.0, prompt_shift_scale=0.0)
    source = np.asarray(suite.pool.source)
    np.testing.assert_array_equal(suite.pool.chosen, np.asarray(suite.base.chosen)[source])
    np.testing.assert_array_equal(suite.pool.rejected, np.asarray(suite.base.rejected)[source])
    np.testing.assert_allclose(
        suite.pool_true_margin, np.asarray(suite.base.true_margin)[source], rtol=1e-6, atol=1e-6
    )
    assert suite.info["pool_drift_fraction"] == 0.0


def test_prompt_shift_only_keeps_feature_difference() -> None:
    suite = _suite(perturbation_scale=0.0, prompt_shift_scale=1.0)
    source = np.asarray(suite.pool.source)
    base_diff = np.asarray(suite.base.chosen) - np.asarray(suite.base.rejected)
    pool_diff = np.asarray(suite.pool.chosen) - np.asarray(suite.pool.rejected)
    np.testing.assert_allclose(pool_diff, base_diff[source], atol=1e-5)
    assert not np.allclose(suite.pool.chosen, np.asarray(suite.base.chosen)[source])


def test_pool_follows_method_scheme() -> None:
    rng = np.random.default_rng(3)
    n, d, p = 4, 6, 3
    chosen, rejected = rng.standard_normal((n, d)), rng.standard_normal((n, d))

    def pool_grid(perturbation: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
        pool = make_pool_variations(
            7,
            chosen,
            rejected,
            paraphrases=p,
            perturbation_scale=perturbation,
            prompt_shift_scale=shift,
        )
        grid = (n, p, p, d)
        return (
            np.asarray(pool.chosen, np.float64).reshape(grid),
            np.asarray(pool.rejected, np.float64).reshape(grid),
        )

    # Shift only: both responses of pair (ci, rj) get shift s[(ci + rj) mod p].
    pool_chosen, pool_rejected = pool_grid(0.0, 1.0)
    shift = pool_chosen - chosen[:, None, None, :]
    np.testing.assert_allclose(pool_rejected - rejected[:, None, None, :], shift, atol=1e-5)
    for ci in range(p):
        for rj in range(p):
            np.testing.assert_allclose(shift[:, ci, rj], shift[:, 0, (ci + rj) % p], atol=1e-5)
    assert not np.allclose(shift[:, 0, 0], shift[:, 0, 1])

    # Perturbation only: the chosen side depends on ci alone, the rejected side on rj alone.
    pool_chosen, pool_rejected = pool_grid(0.5, 0.0)
    np.testing.assert_array_equal(
        pool_chosen, np.broadcast_to(pool_chosen[:, :, :1], shape=pool_chosen.shape)
    )
    np.testing.assert_array_equal(
        pool_rejected, np.broadcast_to(pool_rejected[:, :1], shape=pool_rejected.shape)
    )
    assert not np.allclose(pool_chosen[:, 0, 0], pool_chosen[:, 1, 0])
    assert not np.allclose(pool_rejected[:, 0, 0], pool_rejected[:, 0, 1])
    assert not np.any(np.all(pool_chosen == chosen[:, None, None, :], axis=-1))


def test_pool_rng_forms() -> None:
    rng = np.random.default_rng(0)
    chosen, rejected = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    kwargs = {"paraphrases": 2, "perturbation_scale": 0.5, "prompt_shift_scale": 0.5}
    typed = make_pool_variations(jax.random.key(1), chosen, rejected, **kwargs)
    raw = make_pool_variations(jax.random.PRNGKey(1), chosen, rejected, **kwargs)
    other = make_pool_variations(jax.random.key(2), chosen, rejected, **kwargs)
    seeded = make_pool_variations(9, chosen, rejected, **kwargs)
    generator = make_pool_variations(np.random.default_rng(9), chosen, rejected, **kwargs)
    np.testing.assert_array_equal(typed.chosen, raw.chosen)
    np.testing.assert_array_equal(seeded.rejected, generator.rejected)
    assert not np.array_equal(typed.chosen, other.chosen)


def test_label_flips_reverse_margins() -> None:
    n, rate = 200, 0.13
    clean, noisy = _suite(num_base_pairs=n), _suite(num_base_pairs=n, label_flip_rate=rate)
    flipped = np.asarray(noisy.base.flipped)
    assert flipped.sum() == round(rate * n) == noisy.info["num_flipped"]
    assert not np.asarray(clean.base.flipped).any()
    clean_margin, noisy_margin = (
        np.asarray(clean.base.true_margin),
        np.asarray(noisy.base.true_margin),
    )
    np.testing.assert_array_equal(noisy_margin[flipped], -clean_margin[flipped])
    np.testing.assert_array_equal(noisy_margin[~flipped], clean_margin[~flipped])
    np.testing.assert_array_equal(
        np.asarray(noisy.base.chosen)[flipped], np.asarray(clean.base.rejected)[flipped]
    )
    np.testing.assert_array_equal(noisy.base.prompt, clean.base.prompt)
    np.testing.assert_array_equal(noisy.heldout.chosen, clean.heldout.chosen)
    assert noisy.info["base_label_disagreement"] == np.mean(noisy_margin < 0)


def test_heldout_labelled_by_true_reward_on_fresh_prompts() -> None:
    suite = _suite(num_heldout_pairs=301)
    heldout = suite.heldout
    assert np.all(np.asarray(heldout.true_margin) > 0)
    assert not np.asarray(heldout.flipped).any()
    base_prompts = set(np.asarray(suite.base.prompt).tolist())
    heldout_prompts = set(np.asarray(heldout.prompt).tolist())
    assert not base_prompts & heldout_prompts
    assert min(heldout_prompts) >= suite.info["num_base_prompts"]
    empty = _suite(num_heldout_pairs=0)
    assert empty.heldout.chosen.shape == (0, 16)


def test_bradley_terry_label_noise_matches_expectation() -> None:
    n = 20000
    suite = _suite(num_base_pairs=n, num_heldout_pairs=0, paraphrases=1)
    margin = np.asarray(suite.base.true_margin, np.float64)
    p_wrong = 1.0 / (1.0 + np.exp(np.abs(margin)))
    observed = np.mean(margin < 0)
    stderr = np.sqrt(np.sum(p_wrong * (1.0 - p_wrong))) / n
    assert abs(observed - p_wrong.mean()) < 4.0 * stderr
    assert 0.02 < observed < 0.4
    assert suite.info["base_bt_expected_disagreement"] == pytest.approx(p_wrong.mean(), rel=1e-4)


@pytest.mark.parametrize(("reward_scale", "nonlinear_weight"), [(3.0, 1.0), (1.5, 0.0)])
def test_reward_scale_is_realised(reward_scale: float, nonlinear_weight: float) -> None:
    suite = _suite(
        num_base_pairs=4000,
        num_heldout_pairs=0,
        paraphrases=1,
        reward_scale=reward_scale,
        nonlinear_weight=nonlinear_weight,
    )
    assert suite.info["reward_std"] == pytest.approx(reward_scale, rel=0.06)
    linear_only = not np.asarray(suite.reward_params.out).any()
    assert linear_only == (nonlinear_weight == 0.0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_base_pairs": 0},
        {"num_heldout_pairs": -1},
        {"responses_per_prompt": 1},
        {"pairs_per_prompt": 29},
        {"paraphrases": 0},
        {"perturbation_scale": -0.1},
        {"reward_scale": 0.0},
        {"nonlinear_weight": -1.0},
        {"label_flip_rate": 1.5},
    ],
)
def test_invalid_arguments_raise(overrides: dict[str, object]) -> None:
    (name,) = overrides
    with pytest.raises(MarsError, match=rf"\b{name}\b"):
        _suite(**overrides)
