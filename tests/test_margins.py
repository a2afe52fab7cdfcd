"""Tests of pair and group margins and of the chunked lowest-margin search."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mars_jax.margins import (
    all_pair_indices,
    group_margins,
    group_rewards,
    lowest_margin_pairs,
    pair_margins,
)


def linear_reward(params, inputs):
    return inputs @ params


def dict_reward(params, inputs):
    return inputs["x"] @ params["w"] + params["b"] * inputs["bias"]


class CountingReward:
    """Wraps a reward function and records the leading axis of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.batch_sizes: list[int] = []

    def __call__(self, params, inputs):
        self.batch_sizes.append(jax.tree.leaves(inputs)[0].shape[0])
        return self.fn(params, inputs)


def random_groups(seed: int, groups: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``[G, K]`` float32 rewards and a padding mask with a random count per group."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(groups, size)).astype(np.float32)
    counts = rng.integers(0, size + 1, size=groups)
    mask = np.arange(size)[None, :] < counts[:, None]
    return rewards, mask


def brute_force_pairs(rewards: np.ndarray, mask: np.ndarray) -> list[tuple[float, int, int, int]]:
    """All valid pairs as ``(|margin|, group, first, second)``, sorted lexicographically."""
    pairs = []
    groups, size = rewards.shape
    for g in range(groups):
        for i in range(size):
            for j in range(i + 1, size):
                if mask[g, i] and mask[g, j]:
                    margin = np.float32(rewards[g, i]) - np.float32(rewards[g, j])
                    pairs.append((float(abs(margin)), g, i, j))
    return sorted(pairs)


def test_pair_margins_single_call_matches_separate_evaluations():
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    chosen = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
    rejected = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
    reward_fn = CountingReward(linear_reward)

    out = pair_margins(reward_fn, params, chosen, rejected)

    assert reward_fn.batch_sizes == [14]
    np.testing.assert_allclose(out.chosen, linear_reward(params, chosen), rtol=1e-6)
    np.testing.assert_allclose(out.rejected, linear_reward(params, rejected), rtol=1e-6)
    np.testing.assert_allclose(out.margins, out.chosen - out.rejected, rtol=1e-6)
    assert out.margins.shape == (7,)


def test_pair_margins_dict_inputs_under_jit():
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "b": jnp.float32(0.5)}

    def make(n):
        return {
            "x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
        }

    chosen, rejected = make(4), make(4)
    reward_fn = CountingReward(dict_reward)

    out = jax.jit(functools.partial(pair_margins, reward_fn))(params, chosen, rejected)

    assert reward_fn.batch_sizes == [8]
    expected = dict_reward(params, chosen) - dict_reward(params, rejected)
    np.testing.assert_allclose(out.margins, expected, rtol=1e-5, atol=1e-6)


def test_group_rewards_one_call_with_one_evaluation_per_response():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "b": jnp.float32(-1.0)}
    responses = {
        "x": jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
    }
    reward_fn = CountingReward(dict_reward)

    rewards = group_rewards(reward_fn, params, responses)

    assert reward_fn.batch_sizes == [24]
    assert rewards.shape == (4, 6)
    for g in range(4):
        expected = dict_reward(params, {"x": responses["x"][g], "bias": responses["bias"][g]})
        np.testing.assert_allclose(rewards[g], expected, rtol=1e-5, atol=1e-6)


def test_all_pair_indices_lexicographic():
    first, second = all_pair_indices(4)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    assert first.dtype == np.int32
    assert all_pair_indices(1)[0].shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_margins_match_double_loop(seed):
    rewards, mask = random_groups(seed, groups=6, size=5)

    margins, valid = jax.jit(group_margins)(rewards, mask)

    assert margins.shape == valid.shape == (6, 5, 5)
    for g in range(6):
        for i in range(5):
            for j in range(5):
                assert margins[g, i, j] == np.float32(rewards[g, i] - rewards[g, j])
                assert bool(valid[g, i, j]) == (i < j and mask[g, i] and mask[g, j])


def check_against_brute_force(rewards, mask, k, chunk_size):
    out = lowest_margin_pairs(jnp.asarray(rewards), jnp.asarray(mask), k=k, chunk_size=chunk_size)
    expected = brute_force_pairs(rewards, mask)[:k]
    num_valid = len(expected)

    assert out.margins.shape == out.group.shape == out.valid.shape == (k,)
    assert out.group.dtype == out.first.dtype == out.second.dtype == jnp.int32
    np.testing.assert_array_equal(out.valid, np.arange(k) < num_valid)
    got = list(
        zip(
            np.abs(np.asarray(out.margins[:num_valid])).tolist(),
            out.group[:num_valid].tolist(),
            out.first[:num_valid].tolist(),
            out.second[:num_valid].tolist(),
            strict=True,
        )
    )
    assert got == expected
    group, first, second = (np.asarray(a) for a in (out.group, out.first, out.second))
    np.testing.assert_array_equal(
        out.margins[:num_valid],
        (rewards[group, first] - rewards[group, second])[:num_valid],
    )
    assert not np.any(out.margins[num_valid:])
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    groups=st.integers(1, 23),
    size=st.integers(1, 6),
    k=st.integers(1, 40),
    chunk_size=st.sampled_from([1, 2, 3, 5, 7, 16, 64]),
    coarse=st.booleans(),
)
def test_lowest_margin_pairs_match_brute_force(seed, groups, size, k, chunk_size, coarse):
    rewards, mask = random_groups(seed, groups, size)
    if coarse:
        rewards = np.round(rewards * 2) / 2
    check_against_brute_force(rewards, mask, k, chunk_size)


def test_lowest_margin_pairs_more_k_than_valid_pairs():
    rewards, mask = random_groups(3, groups=5, size=4)
    mask[:] = False
    mask[2, :3] = True
    out = check_against_brute_force(rewards, mask, k=10, chunk_size=2)
    assert out.valid.tolist() == [True] * 3 + [False] * 7
    assert out.group[:3].tolist() == [2, 2, 2]


def test_lowest_margin_pairs_no_valid_pairs():
    rewards, mask = random_groups(4, groups=3, size=1)
    out = lowest_margin_pairs(jnp.asarray(rewards), jnp.asarray(mask), k=4)
    assert not out.valid.any()
    assert out.margins.shape == (4,)


def test_lowest_margin_pairs_independent_of_chunk_size_under_jit():
    rewards, mask = random_groups(5, groups=301, size=8)
    rewards = np.round(rewards * 4) / 4
    fn = jax.jit(lowest_margin_pairs, static_argnames=("k", "chunk_size"))
    outs = [fn(rewards, mask, k=200, chunk_size=c) for c in (1, 7, 64, 300, 301, 1024)]
    for out in outs[1:]:
        for got, want in zip(out, outs[0], strict=True):
            np.testing.assert_array_equal(got, want)
    eager = lowest_margin_pairs(jnp.asarray(rewards), jnp.asarray(mask), k=200, chunk_size=64)
    for got, want in zip(eager, outs[0], strict=True):
        np.testing.assert_array_equal(got, want)
    check_against_brute_force(rewards, mask, k=200, chunk_size=64)


def test_lowest_margin_pairs_vmap():
    rewards, mask = random_groups(6, groups=10, size=4)
    batched = jax.vmap(functools.partial(lowest_margin_pairs, k=5, chunk_size=3))(
        jnp.stack([rewards, -rewards]), jnp.stack([mask, mask])
    )
    single = lowest_margin_pairs(jnp.asarray(rewards), jnp.asarray(mask), k=5, chunk_size=3)
    np.testing.assert_array_equal(batched.group[0], single.group)
    np.testing.assert_array_equal(batched.margins[1], -single.margins)


@pytest.mark.parametrize(("k", "chunk_size"), [(0, 4), (3, 0)])
def test_lowest_margin_pairs_rejects_bad_sizes(k, chunk_size):
    rewards, mask = random_groups(7, groups=2, size=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        lowest_margin_pairs(jnp.asarray(rewards), jnp.asarray(mask), k=k, chunk_size=chunk_size)
