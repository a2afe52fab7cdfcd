"""Tests of mars_jax.metrics against independent numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mars_jax.metrics import (
    bootstrap_ci,
    evaluate_margins,
    expected_calibration_error,
    pairwise_accuracy,
    reward_auc,
    roc_auc,
    signal_to_noise,
)

PAD = 32  # fixed padded size for the property test, so that jit compiles once
_jit_roc_auc = jax.jit(roc_auc)
_jit_bootstrap_ci = jax.jit(bootstrap_ci, static_argnames=("statistic", "num_resamples", "level"))


def brute_force_auc(scores, labels, weights=None) -> float:
    """O(B^2) weighted Mann-Whitney count, ties 1/2; 0.5 when a class is empty."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) > 0
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    wins = total = 0.0
    for i in np.flatnonzero(labels):
        for j in np.flatnonzero(~labels):
            pair_w = weights[i] * weights[j]
            total += pair_w
            wins += pair_w * (
                1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0
            )
    return wins / total if total > 0 else 0.5


def numpy_ece(margins, num_bins: int, weights=None) -> float:
    """Plain-loop symmetrised ECE."""
    margins = np.asarray(margins, np.float64)
    weights = np.ones(len(margins)) if weights is None else np.asarray(weights, np.float64)
    p = 1 / (1 + np.exp(-margins))
    probs = np.concatenate([p, 1 - p])
    outcomes = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    w = np.concatenate([weights, weights])
    n = w.sum()
    ece = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        in_bin = (probs >= lo) & ((probs < hi) if b < num_bins - 1 else (probs <= hi))
        n_bin = w[in_bin].sum()
        if n_bin > 0:
            mean_p = (w[in_bin] * probs[in_bin]).sum() / n_bin
            mean_y = (w[in_bin] * outcomes[in_bin]).sum() / n_bin
            ece += n_bin / n * abs(mean_p - mean_y)
    return ece


def test_pairwise_accuracy_hand_example():
    margins = jnp.array([1.0, -0.5, 0.0, 2.0, 0.0, -3.0, 0.1, 4.0])
    result = pairwise_accuracy(margins)
    assert float(result.accuracy) == pytest.approx(4 / 8)
    assert float(result.tie_rate) == pytest.approx(2 / 8)


def test_pairwise_accuracy_weights_and_all_masked():
    margins = jnp.array([1.0, -1.0, 0.0, 5.0])
    weights = jnp.array([2.0, 1.0, 1.0, 0.0])
    result = pairwise_accuracy(margins, weights)
    assert float(result.accuracy) == pytest.approx(2 / 4)
    assert float(result.tie_rate) == pytest.approx(1 / 4)
    masked = pairwise_accuracy(margins, jnp.zeros(4))
    assert float(masked.accuracy) == 0.0
    assert float(masked.tie_rate) == 0.0


@pytest.mark.parametrize("size", [2, 7, 50, 301])
def test_roc_auc_matches_brute_force_with_ties(size):
    rng = np.random.default_rng(size)
    scores = rng.integers(0, 6, size).astype(np.float32)  # few values: many ties
    labels = rng.integers(0, 2, size)
    weights = rng.uniform(0.0, 2.0, size).astype(np.float32)
    got = _jit_roc_auc(jnp.asarray(scores), jnp.asarray(labels))
    assert float(got) == pytest.approx(brute_force_auc(scores, labels), abs=1e-6)
    got_w = _jit_roc_auc(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(weights))
    assert float(got_w) == pytest.approx(brute_force_auc(scores, labels, weights), abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-3, 3), st.booleans(), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        min_size=1,
        max_size=PAD,
    )
)
def test_roc_auc_property_padded(rows):
    scores, labels, weights = (np.array(col) for col in zip(*rows, strict=True))
    pad = PAD - len(rows)
    got = _jit_roc_auc(
        jnp.asarray(np.pad(scores, (0, pad)), jnp.float32),
        jnp.asarray(np.pad(labels, (0, pad))),
        jnp.asarray(np.pad(weights, (0, pad)), jnp.float32),
    )
    assert float(got) == pytest.approx(brute_force_auc(scores, labels, weights), abs=1e-5)


def test_roc_auc_separated_reversed_and_degenerate():
    scores = jnp.arange(10.0)
    labels = (scores >= 5).astype(jnp.int32)
    assert float(_jit_roc_auc(scores, labels)) == 1.0
    assert float(_jit_roc_auc(-scores, labels)) == 0.0
    assert float(_jit_roc_auc(scores, jnp.ones(10, jnp.int32))) == 0.5
    assert float(_jit_roc_auc(scores, jnp.zeros(10, jnp.int32))) == 0.5
    assert float(_jit_roc_auc(scores, labels, jnp.zeros(10))) == 0.5


def test_reward_auc():
    chosen = jnp.array([3.0, 2.0, 1.0])
    rejected = jnp.array([0.0, 1.0, -1.0])
    expected = brute_force_auc(np.r_[chosen, rejected], np.r_[np.ones(3), np.zeros(3)])
    assert float(reward_auc(chosen, rejected)) == pytest.approx(expected)
    assert expected == pytest.approx(8.5 / 9)


def test_signal_to_noise_matches_numpy():
    rng = np.random.default_rng(0)
    margins = rng.normal(0.7, 2.0, 200).astype(np.float32)
    expected = margins.astype(np.float64).mean() / margins.astype(np.float64).std()
    assert float(signal_to_noise(jnp.asarray(margins))) == pytest.approx(expected, rel=1e-5)
    weights = np.r_[np.ones(150), np.zeros(50)].astype(np.float32)
    kept = margins[:150].astype(np.float64)
    got = signal_to_noise(jnp.asarray(margins), jnp.asarray(weights))
    assert float(got) == pytest.approx(kept.mean() / kept.std(), rel=1e-5)


def test_signal_to_noise_zero_std():
    assert float(signal_to_noise(jnp.full(7, 0.1))) == 0.0
    assert float(signal_to_noise(jnp.zeros(4))) == 0.0
    assert float(signal_to_noise(jnp.array([1.0, 2.0]), jnp.zeros(2))) == 0.0
    assert float(signal_to_noise(jnp.array([9.0, 0.3, 0.3]), jnp.array([0.0, 1, 1]))) == 0.0


@pytest.mark.parametrize("num_bins", [1, 5, 10, 15])
def test_ece_matches_numpy_loop(num_bins):
    rng = np.random.default_rng(num_bins)
    margins = rng.normal(0.5, 3.0, 500).astype(np.float32)
    weights = rng.uniform(0.0, 1.0, 500).astype(np.float32)
    got = expected_calibration_error(jnp.asarray(margins), num_bins=num_bins)
    assert float(got) == pytest.approx(numpy_ece(margins, num_bins), abs=1e-5)
    got_w = expected_calibration_error(
        jnp.asarray(margins), num_bins=num_bins, weights=jnp.asarray(weights)
    )
    assert float(got_w) == pytest.approx(numpy_ece(margins, num_bins, weights), abs=1e-5)
    masked = expected_calibration_error(jnp.asarray(margins), weights=jnp.zeros(500))
    assert float(masked) == 0.0


def test_ece_near_zero_when_calibrated():
    rng = np.random.default_rng(1)
    latent = rng.normal(0.0, 2.0, 200_000)
    chosen_wins = rng.uniform(size=latent.shape) < 1 / (1 + np.exp(-latent))
    margins = jnp.asarray(np.where(chosen_wins, latent, -latent), jnp.float32)
    # Sampling noise is about 0.5 / sqrt(n_bin) per bin: a few 1e-3 here.
    assert float(expected_calibration_error(margins)) < 0.01
    assert float(expected_calibration_error(3.0 * margins)) > 0.1  # overconfident


def test_bootstrap_normal_mean_interval():
    rng = np.random.default_rng(2)
    data = rng.normal(1.0, 2.0, 400).astype(np.float32)
    ci = _jit_bootstrap_ci(
        jax.random.key(0), jnp.asarray(data), statistic=jnp.mean, num_resamples=2000
    )
    half = 1.96 * data.std() / np.sqrt(len(data))
    assert float(ci.estimate) == pytest.approx(data.mean(), rel=1e-5)
    assert float(ci.lower) < float(ci.estimate) < float(ci.upper)
    assert float(ci.lower) == pytest.approx(data.mean() - half, abs=0.2 * half)
    assert float(ci.upper) == pytest.approx(data.mean() + half, abs=0.2 * half)


def test_bootstrap_narrows_with_more_data():
    rng = np.random.default_rng(3)
    widths = []
    for size in (100, 1600):
        data = jnp.asarray(rng.normal(0.0, 1.0, size), jnp.float32)
        ci = _jit_bootstrap_ci(
            jax.random.key(1), data, statistic=jnp.mean, num_resamples=500, level=0.9
        )
        assert float(ci.lower) <= float(ci.estimate) <= float(ci.upper)
        widths.append(float(ci.upper - ci.lower))
    assert widths[1] < widths[0] / 2  # expected ratio is 4


def test_bootstrap_pytree_uses_same_rows():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=64), jnp.float32)

    def max_gap(tree):
        return jnp.max(jnp.abs(tree["a"] - tree["b"][0]))

    ci = _jit_bootstrap_ci(
        jax.random.key(2), {"a": x, "b": (x,)}, statistic=max_gap, num_resamples=100
    )
    assert (float(ci.estimate), float(ci.lower), float(ci.upper)) == (0.0, 0.0, 0.0)

    def weighted_accuracy(tree):
        return pairwise_accuracy(tree[0], tree[1]).accuracy

    margins = jnp.array([1.0, -1.0, 2.0, 0.5])
    ci = _jit_bootstrap_ci(
        jax.random.key(3), (margins, jnp.ones(4)), statistic=weighted_accuracy, num_resamples=200
    )
    assert float(ci.estimate) == pytest.approx(0.75)
    assert 0.0 <= float(ci.lower) <= 0.75 <= float(ci.upper) <= 1.0


def test_invalid_static_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(jnp.zeros(3), num_bins=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(jax.random.key(0), jnp.zeros(3), jnp.mean, level=1.0)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ci(jax.random.key(0), jnp.zeros(3), jnp.mean, num_resamples=0)
    with pytest.raises(ValueError, match="both"):
        evaluate_margins(jnp.zeros(3), chosen_rewards=jnp.zeros(3))


def test_evaluate_margins():
    chosen = jnp.array([2.0, 1.0, 0.5, 3.0])
    rejected = jnp.array([1.0, 1.5, 0.5, 0.0])
    margins = chosen - rejected
    metrics = evaluate_margins(margins, chosen_rewards=chosen, rejected_rewards=rejected)
    assert set(metrics) == {"accuracy", "tie_rate", "signal_to_noise", "calibration_error", "auc"}
    assert float(metrics["accuracy"]) == pytest.approx(0.5)
    assert float(metrics["tie_rate"]) == pytest.approx(0.25)
    assert float(metrics["auc"]) == pytest.approx(float(reward_auc(chosen, rejected)))
    assert float(metrics["calibration_error"]) == pytest.approx(numpy_ece(margins, 10), abs=1e-6)
    assert "auc" not in evaluate_margins(margins, num_bins=4)


def test_jit_matches_eager():
    rng = np.random.default_rng(5)
    margins = jnp.asarray(np.round(rng.normal(0.3, 1.0, 64), 1), jnp.float32)
    weights = jnp.asarray(rng.integers(0, 2, 64), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, 64))
    rewards = jnp.asarray(rng.normal(size=64), jnp.float32)
    key = jax.random.key(6)

    def run_all(margins, weights, labels, rewards, key):
        return {
            "accuracy": pairwise_accuracy(margins, weights),
            "auc": roc_auc(margins, labels, weights),
            "reward_auc": reward_auc(rewards + margins, rewards),
            "snr": signal_to_noise(margins, weights),
            "ece": expected_calibration_error(margins, num_bins=7, weights=weights),
            "ci": bootstrap_ci(key, margins, jnp.median, num_resamples=50, level=0.8),
            "evaluate": evaluate_margins(
                margins, chosen_rewards=rewards + margins, rejected_rewards=rewards, num_bins=7
            ),
        }

    eager = run_all(margins, weights, labels, rewards, key)
    jitted = jax.jit(run_all)(margins, weights, labels, rewards, key)
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    for want, got in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_vmap_over_batches():
    rng = np.random.default_rng(7)
    margins = jnp.asarray(rng.normal(size=(3, 64)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, (3, 64)))

    def both(margins, labels):
        return roc_auc(margins, labels), expected_calibration_error(margins, num_bins=5)

    batched = jax.jit(jax.vmap(both))(margins, labels)
    singles = [both(margins[i], labels[i]) for i in range(3)]
    for got, want in zip(batched, zip(*singles, strict=True), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
