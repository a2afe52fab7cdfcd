"""Tests of the synthetic suite's labelling regimes ("noisy", the default, and "informative")."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np
import pytest

from mars_jax.data.synthetic import REGIMES, SyntheticSuite, make_synthetic_suite, true_reward
from mars_jax.errors import MarsError


def _suite(**overrides: Any) -> SyntheticSuite:
    kwargs: dict[str, Any] = {"seed": 0, "num_base_pairs": 2000, "num_heldout_pairs": 50}
    return make_synthetic_suite(**(kwargs | overrides))


def _leaves(suite: SyntheticSuite) -> list[np.ndarray]:
    arrays = (suite.base, suite.heldout, suite.pool, suite.pool_true_margin, suite.reward_params)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(arrays)]


def _rounded_digest(suite: SyntheticSuite) -> str:
    """A digest of every array (floats rounded to 4 decimals, so that a last-bit change of a
    BLAS reduction on another machine does not matter) and of the info dict."""
    digest = hashlib.sha256()
    for leaf in _leaves(suite):
        if leaf.dtype.kind == "f":
            leaf = np.round(leaf.astype(np.float64), 4) + 0.0
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    info = {k: round(v, 6) if isinstance(v, float) else v for k, v in suite.info.items()}
    digest.update(json.dumps(info, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _unordered_pairs(chosen, rejected) -> np.ndarray:
    """``[M, 2, D]`` pairs with their two responses in a canonical order."""
    pairs = np.stack([np.asarray(chosen), np.asarray(rejected)], axis=1)
    swap = np.asarray(chosen)[:, 0] > np.asarray(rejected)[:, 0]
    return np.where(swap[:, None, None], pairs[:, ::-1], pairs)


# Digests of the suite computed from the code before the regimes existed (commit 216fb40,
# with the helper above), so the default stays the suite every earlier result used.
NOISY_DIGESTS = [
    ({"seed": 0, "num_base_pairs": 60, "num_heldout_pairs": 50}, "cde06d0b80ada2f2"),
    (
        {
            "seed": 3,
            "num_base_pairs": 37,
            "num_heldout_pairs": 23,
            "feature_dim": 5,
            "paraphrases": 3,
            "label_flip_rate": 0.1,
        },
        "a799eb97471a2892",
    ),
]


@pytest.mark.parametrize(("kwargs", "digest"), NOISY_DIGESTS)
def test_noisy_default_is_unchanged(kwargs, digest):
    default = make_synthetic_suite(**kwargs)
    assert _rounded_digest(default) == digest
    explicit = make_synthetic_suite(**kwargs, regime="noisy")
    for a, b in zip(_leaves(default), _leaves(explicit), strict=True):
        np.testing.assert_array_equal(a, b)
    assert default.info == explicit.info
    assert "regime" not in default.info
    assert not np.asarray(default.base_hard).any()


def test_informative_labels_agree_with_the_true_reward():
    noisy, clean = _suite(), _suite(regime="informative")
    assert REGIMES == ("noisy", "informative")
    assert (np.asarray(clean.base.true_margin) > 0).all()
    assert not np.asarray(clean.base.flipped).any()
    assert (np.asarray(clean.pool_true_margin) > 0).all()
    assert clean.info["base_label_disagreement"] == clean.info["pool_label_disagreement"] == 0
    assert clean.info["pool_drift_fraction"] == 0
    assert clean.info["regime"] == "informative"
    # Same base pairs, held-out set and reward; only the orientations differ. The pool's
    # draws follow the base pair's orientation, so where both regimes orient a base pair
    # alike, its variants are the same pairs.
    np.testing.assert_array_equal(
        _unordered_pairs(noisy.base.chosen, noisy.base.rejected),
        _unordered_pairs(clean.base.chosen, clean.base.rejected),
    )
    same = (np.asarray(noisy.base.chosen) == np.asarray(clean.base.chosen)).all(axis=1)
    rows = same[np.asarray(clean.pool.source)]
    assert 0 < same.mean() < 1
    np.testing.assert_array_equal(
        _unordered_pairs(noisy.pool.chosen, noisy.pool.rejected)[rows],
        _unordered_pairs(clean.pool.chosen, clean.pool.rejected)[rows],
    )
    for a, b in zip(
        jax.tree.leaves((noisy.heldout, noisy.reward_params)),
        jax.tree.leaves((clean.heldout, clean.reward_params)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # The stored margins are the true reward's, after the swaps.
    params = clean.reward_params
    for chosen, rejected, margin in (
        (clean.base.chosen, clean.base.rejected, clean.base.true_margin),
        (clean.pool.chosen, clean.pool.rejected, clean.pool_true_margin),
    ):
        recomputed = true_reward(params, chosen) - true_reward(params, rejected)
        np.testing.assert_allclose(recomputed, margin, rtol=1e-5, atol=1e-5)


def test_label_noise_rate_and_variants_share_their_base_pair_errors():
    noise = 0.2
    suite = _suite(regime="informative", label_noise=noise)
    margin = np.asarray(suite.base.true_margin)
    wrong = margin < 0
    np.testing.assert_array_equal(wrong, np.asarray(suite.base.flipped))
    assert suite.info["num_noise_flips"] == wrong.sum()
    assert wrong.mean() == pytest.approx(noise, abs=0.04)  # 4.5 binomial standard errors
    # A variant agrees with the true reward exactly when its base pair does.
    source = np.asarray(suite.pool.source)
    np.testing.assert_array_equal(np.asarray(suite.pool_true_margin) < 0, wrong[source])
    assert suite.info["pool_label_disagreement"] == pytest.approx(wrong.mean())
    # Errors do not concentrate at small margins (they do in the noisy regime).
    lowest = np.argsort(np.abs(margin))[: margin.size // 10]
    assert wrong[lowest].mean() == pytest.approx(noise, abs=0.1)


def test_hard_pairs_have_small_margins_and_correct_labels():
    hard_margin = 0.4
    kwargs = {"regime": "informative", "label_noise": 0.3, "hard_margin": hard_margin}
    suite = _suite(hard_fraction=0.25, **kwargs)
    plain = _suite(**kwargs)
    hard = np.asarray(suite.base_hard)
    margin = np.asarray(suite.base.true_margin)
    assert hard.sum() == round(0.25 * 2000) == suite.info["num_hard_pairs"]
    assert (margin[hard] > 0).all()  # exempt from label_noise
    assert (margin[hard] < hard_margin + 1e-4).all()
    assert np.median(margin[hard]) > hard_margin / 4  # spread over [0, hard_margin)
    # The other pairs are the same pairs as without hard ones; a hard pair keeps its
    # first response and moves its second along the segment towards it.
    chosen, rejected = np.asarray(suite.base.chosen), np.asarray(suite.base.rejected)
    plain_pairs = _unordered_pairs(plain.base.chosen, plain.base.rejected)
    np.testing.assert_array_equal(_unordered_pairs(chosen, rejected)[~hard], plain_pairs[~hard])
    plain_chosen, plain_rejected = np.asarray(plain.base.chosen), np.asarray(plain.base.rejected)
    kept = np.where(
        (chosen == plain_chosen).all(axis=1) | (chosen == plain_rejected).all(axis=1),
        chosen.T,
        rejected.T,
    ).T
    moved = np.where((kept == chosen).all(axis=1)[:, None], rejected, chosen)
    other = np.where((kept == plain_chosen).all(axis=1)[:, None], plain_rejected, plain_chosen)
    direction = other - kept
    step = np.sum((moved - kept) * direction, axis=1) / np.sum(direction * direction, axis=1)
    residual = moved - kept - step[:, None] * direction
    assert np.abs(residual[hard]).max() < 1e-4
    assert ((step[hard] > 0) & (step[hard] <= 1 + 1e-6)).all()


def test_label_flip_rate_applies_in_both_regimes():
    suite = _suite(regime="informative", label_flip_rate=0.1)
    flipped = np.asarray(suite.base.flipped)
    assert flipped.sum() == suite.info["num_flipped"] == 200
    np.testing.assert_array_equal(np.asarray(suite.base.true_margin) < 0, flipped)
    source = np.asarray(suite.pool.source)
    np.testing.assert_array_equal(np.asarray(suite.pool_true_margin) < 0, flipped[source])


def test_low_margin_pairs_are_coin_flips_only_in_the_noisy_regime():
    # Method.md section 6: the reason for the informative regime.
    for regime, low_wrong in (("noisy", (0.3, 0.6)), ("informative", (0.0, 0.0))):
        margin = np.asarray(_suite(regime=regime).base.true_margin)
        lowest = np.argsort(np.abs(margin))[: margin.size // 10]
        assert low_wrong[0] <= np.mean(margin[lowest] < 0) <= low_wrong[1]


def test_informative_is_deterministic():
    kwargs = {"regime": "informative", "label_noise": 0.1, "hard_fraction": 0.1}
    first, second = _suite(**kwargs), _suite(**kwargs)
    for a, b in zip(_leaves(first), _leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.base_hard, second.base_hard)
    assert first.info == second.info


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"regime": "clean"}, "regime"),
        ({"label_noise": 0.1}, "informative' only"),
        ({"hard_fraction": 0.1}, "informative' only"),
        ({"regime": "informative", "label_noise": 1.5}, "label_noise"),
        ({"regime": "informative", "hard_fraction": -0.1}, "hard_fraction"),
        ({"regime": "informative", "hard_margin": 0.0}, "hard_margin"),
    ],
)
def test_bad_regime_arguments(overrides, match):
    with pytest.raises(MarsError, match=match):
        make_synthetic_suite(seed=0, num_base_pairs=10, num_heldout_pairs=0, **overrides)
