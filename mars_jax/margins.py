"""Reward margins of preference pairs and of ranked response groups.

A reward model is a function ``reward_fn(params, inputs) -> rewards[B]`` where ``inputs`` is a
pytree whose leaves share the leading axis ``B``. Axis letters: ``B`` pairs, ``G`` groups,
``K`` responses per group, ``P = K (K - 1) / 2`` ordered pairs per group.

Group convention: within a group the responses are ordered best first (rank order), so a pair
``(i, j)`` with ``i < j`` has ``i`` as the chosen response and its margin is
``rewards[g, i] - rewards[g, j]`` (positive when the model agrees with the ranking). Padded
responses are marked ``False`` in a ``[G, K]`` boolean mask and never form a pair.

All functions are pure, jit- and vmap-able; integer hyperparameters are static under jit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.types import PyTree, ResponsePairs, RewardFn, tree_concat

__all__ = [
    "LowestPairs",
    "PairRewards",
    "all_pair_indices",
    "group_margins",
    "group_rewards",
    "lowest_margin_pairs",
    "pair_margins",
    "response_pair_margins",
    "response_pairs",
]


class PairRewards(NamedTuple):
    """Rewards of both sides of a batch of preference pairs.

    Attributes:
      margins: ``[B]`` ``chosen - rejected``.
      chosen: ``[B]`` rewards of the chosen responses.
      rejected: ``[B]`` rewards of the rejected responses.
    """

    margins: jax.Array
    chosen: jax.Array
    rejected: jax.Array


class LowestPairs(NamedTuple):
    """The ``k`` within-group pairs with the smallest absolute margin, ascending by ``|margin|``.

    Slots beyond the number of valid pairs have ``valid`` False, margin 0 and indices 0.

    Attributes:
      margins: ``[k]`` signed margins ``rewards[group, first] - rewards[group, second]``.
      group: ``[k]`` int32 group index.
      first: ``[k]`` int32 index of the chosen (better-ranked) response, ``first < second``.
      second: ``[k]`` int32 index of the rejected response.
      valid: ``[k]`` bool, False for filler slots when fewer than ``k`` valid pairs exist.
    """

    margins: jax.Array
    group: jax.Array
    first: jax.Array
    second: jax.Array
    valid: jax.Array


def pair_margins(
    reward_fn: RewardFn,
    params: PyTree,
    chosen: PyTree,
    rejected: PyTree,
) -> PairRewards:
    """Rewards and margins of preference pairs with a single call of ``reward_fn``.

    Args:
      reward_fn: ``reward_fn(params, inputs) -> [N]`` for inputs with leading axis ``N``.
      params: model parameters, passed through unchanged.
      chosen: pytree of inputs with leading axis ``B``.
      rejected: pytree of the same structure, leading axis ``B``.

    Returns:
      ``PairRewards`` of ``[B]`` arrays; ``reward_fn`` sees both sides concatenated (``2B``).
    """
    batch = jax.tree.leaves(chosen)[0].shape[0]
    rewards = reward_fn(params, tree_concat([chosen, rejected]))
    chosen_rewards, rejected_rewards = rewards[:batch], rewards[batch:]
    return PairRewards(chosen_rewards - rejected_rewards, chosen_rewards, rejected_rewards)


def response_pair_margins(
    reward_fn: RewardFn,
    params: PyTree,
    pairs: ResponsePairs,
) -> PairRewards:
    """Rewards and margins of pairs of distinct responses, one reward per response.

    Args:
      reward_fn: ``reward_fn(params, inputs) -> [N]`` for inputs with leading axis ``N``.
      params: model parameters, passed through unchanged.
      pairs: ``U`` distinct responses and the ``[B]`` rows of each pair's two sides.

    Returns:
      ``PairRewards`` of ``[B]`` arrays from ``U`` reward evaluations.
    """
    rewards = reward_fn(params, pairs.responses)
    chosen, rejected = rewards[pairs.chosen], rewards[pairs.rejected]
    return PairRewards(chosen - rejected, chosen, rejected)


def response_pairs(
    chosen_keys: list, rejected_keys: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct responses among the pairs' sides, by hashable key (host-side, numpy).

    Args:
      chosen_keys: ``[B]`` key of each pair's preferred response (e.g. its text).
      rejected_keys: ``[B]`` key of each pair's dispreferred response.

    Returns:
      ``(first, chosen, rejected)``: ``first`` ``[U]`` the position in ``chosen_keys +
      rejected_keys`` of each distinct key's first occurrence, and ``[B]`` int32 rows of each
      pair's sides among them, for :class:`~mars_jax.types.ResponsePairs`.
    """
    rows: dict = {}
    first = []
    for position, key in enumerate([*chosen_keys, *rejected_keys]):
        if key not in rows:
            rows[key] = len(first)
            first.append(position)
    index = np.array([rows[key] for key in [*chosen_keys, *rejected_keys]], np.int32)
    count = len(chosen_keys)
    return np.asarray(first, np.int64), index[:count], index[count:]


def group_rewards(
    reward_fn: RewardFn,
    params: PyTree,
    responses: PyTree,
) -> jax.Array:
    """Rewards of every response of every group with a single call of ``reward_fn``.

    Args:
      reward_fn: ``reward_fn(params, inputs) -> [N]`` for inputs with leading axis ``N``.
      params: model parameters, passed through unchanged.
      responses: pytree whose leaves have leading axes ``[G, K, ...]``.

    Returns:
      ``[G, K]`` rewards (``G * K`` evaluations, one per response).
    """
    groups, size = jax.tree.leaves(responses)[0].shape[:2]
    flat = jax.tree.map(lambda leaf: leaf.reshape(groups * size, *leaf.shape[2:]), responses)
    return reward_fn(params, flat).reshape(groups, size)


def all_pair_indices(num_responses: int) -> tuple[np.ndarray, np.ndarray]:
    """Static indices of all pairs ``i < j`` among ``K`` responses, in lexicographic order.

    Args:
      num_responses: ``K``.

    Returns:
      ``(first, second)``, each ``[P]`` int32 with ``first < second``.
    """
    first, second = np.triu_indices(num_responses, k=1)
    return first.astype(np.int32), second.astype(np.int32)


def group_margins(rewards: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All within-group margins of ranked groups.

    Args:
      rewards: ``[G, K]`` rewards, responses of each group ordered best first.
      mask: ``[G, K]`` bool, False for padded responses.

    Returns:
      ``(margins, valid)``, both ``[G, K, K]``: ``margins[g, i, j] = rewards[g, i] -
      rewards[g, j]``; ``valid[g, i, j]`` iff ``i < j`` and both responses are real.
    """
    size = rewards.shape[-1]
    margins = rewards[:, :, None] - rewards[:, None, :]
    upper = jnp.triu(jnp.ones((size, size), dtype=bool), k=1)
    valid = upper & mask[:, :, None] & mask[:, None, :]
    return margins, valid


def lowest_margin_pairs(
    rewards: jax.Array,
    mask: jax.Array,
    *,
    k: int,
    chunk_size: int = 1024,
) -> LowestPairs:
    """The ``k`` valid within-group pairs with the smallest ``|margin|``, in bounded memory.

    Groups are processed in chunks of ``C = min(chunk_size, G)`` by a ``lax.scan``; each chunk
    forms only its ``[C, P]`` upper-triangle margins and merges its best ``k`` with the running
    best ``k`` through ``lax.top_k``, so memory is ``O(C * P + k)``, never ``O(G * K * K)``.
    Ties in ``|margin|`` are broken by ascending ``(group, first, second)``, so the result does
    not depend on ``chunk_size``. Rewards are assumed finite.

    Args:
      rewards: ``[G, K]`` rewards, responses of each group ordered best first.
      mask: ``[G, K]`` bool, False for padded responses.
      k: number of pairs to return (static, ``>= 1``).
      chunk_size: groups per scan step (static, ``>= 1``).

    Returns:
      ``LowestPairs`` of ``[k]`` arrays sorted by ascending ``|margin|``.
    """
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
    groups, size = rewards.shape
    first_of, second_of = all_pair_indices(size)
    num_pairs = first_of.shape[0]
    init = (
        jnp.full((k,), -jnp.inf, rewards.dtype),
        jnp.zeros((k,), rewards.dtype),
        jnp.zeros((k,), jnp.int32),
        jnp.zeros((k,), jnp.int32),
        jnp.zeros((k,), bool),
    )
    if groups == 0 or num_pairs == 0:
        _, margins, group, pair, valid = init
        return LowestPairs(margins, group, pair, pair, valid)

    chunk = min(chunk_size, groups)
    num_chunks = -(-groups // chunk)
    pad = num_chunks * chunk - groups
    rewards_chunks = jnp.pad(rewards, ((0, pad), (0, 0))).reshape(num_chunks, chunk, size)
    mask_chunks = jnp.pad(mask, ((0, pad), (0, 0))).reshape(num_chunks, chunk, size)
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
    chunk_k = min(k, chunk * num_pairs)

    def step(best, xs):
        chunk_rewards, chunk_mask, start = xs
        margins = (chunk_rewards[:, first_of] - chunk_rewards[:, second_of]).reshape(-1)
        valid = (chunk_mask[:, first_of] & chunk_mask[:, second_of]).reshape(-1)
        scores = jnp.where(valid, -jnp.abs(margins), -jnp.inf)
        scores, flat = jax.lax.top_k(scores, chunk_k)
        candidates = (
            scores,
            margins[flat],
            start + flat // num_pairs,
            flat % num_pairs,
            valid[flat],
        )
        merged = [jnp.concatenate(pair) for pair in zip(best, candidates, strict=True)]
        _, order = jax.lax.top_k(merged[0], k)
        return tuple(leaf[order] for leaf in merged), None

    (_, margins, group, pair, valid), _ = jax.lax.scan(
        step, init, (rewards_chunks, mask_chunks, starts)
    )
    zero = jnp.zeros((), jnp.int32)
    return LowestPairs(
        margins=jnp.where(valid, margins, 0),
        group=jnp.where(valid, group, zero),
        first=jnp.where(valid, jnp.asarray(first_of)[pair], zero),
        second=jnp.where(valid, jnp.asarray(second_of)[pair], zero),
        valid=valid,
    )
