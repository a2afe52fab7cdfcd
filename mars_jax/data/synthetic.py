"""The built-in synthetic preference suite: feature-vector responses with a hidden true reward.

Shapes: ``N`` base pairs, ``M`` held-out pairs, ``P`` pool pairs, ``D`` features, ``K``
responses per prompt, ``p`` paraphrases.

Generative process (all draws from ``numpy.random.SeedSequence(seed)``, one independent child
stream per stage, so e.g. changing ``label_flip_rate`` leaves every other draw unchanged):

- **Prompts and responses.** A prompt has a context ``c ~ N(0, I_D)``; each of its ``K``
  responses has features ``φ = c + e`` with ``e ~ N(0, I_D)``. The reward model sees ``φ`` only.
- **True reward.** ``r(φ) = w·φ + Σ_h a_h tanh(u_h·φ)`` with ``H = 8`` hidden units,
  ``w, u_h ~ N(0, I_D / D)`` and ``a ~ N(0, I_H)``. The linear and the tanh parts are each
  scaled to unit std over responses, the tanh part is multiplied by ``nonlinear_weight`` (so it
  is the ratio of the two parts' stds), and the sum is scaled so that the std of ``r`` over
  responses is ``reward_scale``. The three stds are estimated once from 16384 responses drawn
  with the suite's seed.
- **Base pairs.** ``ceil(N / pairs_per_prompt)`` prompts, each contributing ``pairs_per_prompt``
  (default 4) distinct random pairs of its responses (the last prompt may contribute fewer).
  Labels are sampled from Bradley-Terry on the true reward (``a`` is chosen with probability
  ``σ(r(a) - r(b))``), then exactly ``round(label_flip_rate * N)`` random labels are flipped.
- **Held-out pairs.** Fresh prompts, same pairs-per-prompt scheme, labelled by the true reward
  (the higher-reward response is chosen; exact ties are dropped).
- **Pool.** :func:`make_pool_variations` on the base pairs (the scheme of method.md §2).

Two regimes (``regime=``) differ in the base labels and the pool's labels; the held-out set
is the same in both:

- ``"noisy"`` (the default; the process above): Bradley-Terry labels, inherited by the
  variants. The lowest-margin base pairs are then close to coin flips and their variants
  repeat the coin flip, so a method that spends its budget on them spends it on noise
  (method.md §6).
- ``"informative"``: labels carry the true preference, also where the margin is small.

  - **Hard pairs.** Exactly ``round(hard_fraction * N)`` random base pairs are made hard:
    their second response ``b`` is moved along the segment towards the first, ``a``, to
    ``a + t (b - a)`` with ``t`` in ``(0, 1]`` found by bisection so that
    ``|r(a) - r(b')|`` equals a target drawn uniformly from ``[0, hard_margin)`` (a pair
    whose margin is already below its target is kept). A hard pair has a small true
    margin, a correct label and close features; :attr:`SyntheticSuite.base_hard` marks it.
  - **Labels.** The response with the higher true reward is chosen; then each non-hard
    label is flipped independently with probability ``label_noise`` (errors independent
    of the margin), and finally the ``round(label_flip_rate * N)`` flips above apply to
    all pairs. ``flipped`` marks the pairs whose label ends up wrong, so
    ``true_margin < 0`` exactly where ``flipped``.
  - **Pool.** The same variations, re-labelled by the true reward: a variant's chosen and
    rejected responses are swapped where needed so that it agrees with the true reward
    exactly when its base pair's label does (the variants of a mislabelled pair carry the
    same error, as paraphrases of an annotator's mistake would). So pool labels agree with
    the true reward at the base pairs' rate and ``pool_drift_fraction`` is 0.

  The ``info`` of this regime has five more entries: ``regime``, ``label_noise``,
  ``num_noise_flips``, ``num_hard_pairs`` and ``hard_margin``.

The ``noisy`` outputs are bit-identical to those before the regimes existed. The
``informative`` regime draws its label noise from the label stream and its hard pairs from
a seventh child stream of the seed.

Every returned array is a ``jax.Array``; features and margins are float32.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.errors import MarsError
from mars_jax.types import Pool

__all__ = [
    "REGIMES",
    "PairSet",
    "RewardParams",
    "RngLike",
    "SyntheticSuite",
    "make_pool_variations",
    "make_synthetic_suite",
    "true_reward",
]

REGIMES = ("noisy", "informative")
"""The labelling regimes of :func:`make_synthetic_suite` (see the module docstring)."""

RngLike = np.random.Generator | int | jax.Array
"""A numpy ``Generator``, an integer seed, or a JAX PRNG key (typed or raw ``uint32``)."""

_NUM_HIDDEN = 8
_NORMALISER_SAMPLES = 16384
_DEFAULT_PAIRS_PER_PROMPT = 4


class RewardParams(NamedTuple):
    """Parameters of the hidden true reward ``r(φ) = φ·linear + tanh(φ hiddenᵀ)·out``.

    Attributes:
      linear: ``[D]`` float32 linear weights (normaliser folded in).
      hidden: ``[H, D]`` float32 hidden-unit directions.
      out: ``[H]`` float32 hidden-unit output weights (normaliser and nonlinear weight folded in).
    """

    linear: jax.Array
    hidden: jax.Array
    out: jax.Array


class PairSet(NamedTuple):
    """Labelled preference pairs of feature vectors.

    Attributes:
      chosen: ``[M, D]`` float32 features of the preferred responses.
      rejected: ``[M, D]`` float32 features of the dispreferred responses.
      prompt: ``[M]`` int32 prompt id (ids are unique across base and held-out sets).
      true_margin: ``[M]`` float32 ``r(chosen) - r(rejected)``; negative means the label is
        wrong with respect to the true reward.
      flipped: ``[M]`` bool, whether the label was deliberately flipped.
    """

    chosen: jax.Array
    rejected: jax.Array
    prompt: jax.Array
    true_margin: jax.Array
    flipped: jax.Array


class SyntheticSuite(NamedTuple):
    """The synthetic preference suite.

    Attributes:
      base: the ``N`` labelled training pairs.
      heldout: the ``M`` evaluation pairs, from prompts not used by ``base``.
      pool: the ``P = N p²`` synthetic pairs grouped by base pair.
      pool_true_margin: ``[P]`` float32 true margin of each pool pair in its inherited
        orientation.
      reward_params: parameters for :func:`true_reward`.
      info: summary numbers: counts, ``base_label_disagreement`` (fraction of base labels that
        disagree with the true reward), ``base_bt_expected_disagreement`` (its Bradley-Terry
        expectation before flips, ``mean σ(-|margin|)``), ``pool_label_disagreement`` (fraction
        of pool pairs whose true preference differs from their inherited label),
        ``pool_drift_fraction`` (fraction whose true preference differs from their base pair's)
        and ``reward_std`` (realised std of true rewards over the base prompts' responses);
        the ``informative`` regime adds the entries listed in the module docstring.
      base_hard: ``[N]`` bool, the base pairs made hard (small true margin, correct
        label; all False in the ``noisy`` regime).
    """

    base: PairSet
    heldout: PairSet
    pool: Pool
    pool_true_margin: jax.Array
    reward_params: RewardParams
    info: dict[str, Any]
    base_hard: jax.Array


def true_reward(params: RewardParams, features: jax.Array) -> jax.Array:
    """Hidden true reward of responses.

    Args:
      params: the suite's reward parameters.
      features: ``[..., D]`` response features.

    Returns:
      ``[...]`` float32 rewards.
    """
    hi = jax.lax.Precision.HIGHEST
    features = jnp.asarray(features, jnp.float32)
    linear = jnp.dot(features, params.linear, precision=hi)
    hidden = jnp.tanh(jnp.dot(features, params.hidden.T, precision=hi))
    return linear + jnp.dot(hidden, params.out, precision=hi)


def _host_reward(params: RewardParams, features: np.ndarray) -> np.ndarray:
    """Float64 host evaluation of :func:`true_reward` (``[..., D] -> [...]``) for labelling."""
    linear = np.asarray(params.linear, np.float64)
    hidden = np.asarray(params.hidden, np.float64)
    out = np.asarray(params.out, np.float64)
    features = np.asarray(features, np.float64)
    return features @ linear + np.tanh(features @ hidden.T) @ out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _as_generator(rng: RngLike) -> np.random.Generator:
    """A numpy ``Generator`` from a ``Generator``, an integer seed or a JAX key."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, jax.Array):
        data = rng if rng.dtype == jnp.uint32 else jax.random.key_data(rng)
        return np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())
    return np.random.default_rng(rng)


def _make_reward_params(
    rng: np.random.Generator, *, feature_dim: int, nonlinear_weight: float, reward_scale: float
) -> RewardParams:
    """Draw the true reward and normalise it on a sample of responses from ``rng``."""
    linear = rng.standard_normal(feature_dim) / math.sqrt(feature_dim)
    hidden = rng.standard_normal((_NUM_HIDDEN, feature_dim)) / math.sqrt(feature_dim)
    out = rng.standard_normal(_NUM_HIDDEN)
    sample_shape = (_NORMALISER_SAMPLES, feature_dim)
    sample = rng.standard_normal(sample_shape) + rng.standard_normal(sample_shape)
    sample = sample.astype(np.float32).astype(np.float64)
    linear = linear / np.std(sample @ linear)
    out = nonlinear_weight * out / np.std(np.tanh(sample @ hidden.T) @ out)
    total_std = np.std(sample @ linear + np.tanh(sample @ hidden.T) @ out)
    scale = reward_scale / total_std
    return RewardParams(
        linear=jnp.asarray(scale * linear, jnp.float32),
        hidden=jnp.asarray(hidden, jnp.float32),
        out=jnp.asarray(scale * out, jnp.float32),
    )


def _make_prompt_pairs(
    rng: np.random.Generator,
    *,
    num_prompts: int,
    responses_per_prompt: int,
    feature_dim: int,
    pairs_per_prompt: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw prompts, their responses and distinct response pairs per prompt.

    Returns:
      ``(first[Q, D], second[Q, D], prompt[Q], responses[num_prompts, K, D])`` with
      ``Q = num_prompts * pairs_per_prompt``, features float32, ``prompt`` local to this call.
    """
    contexts = rng.standard_normal((num_prompts, 1, feature_dim))
    noise = rng.standard_normal((num_prompts, responses_per_prompt, feature_dim))
    responses = (contexts + noise).astype(np.float32)
    first_idx, second_idx = np.triu_indices(responses_per_prompt, k=1)
    picks = np.argsort(rng.random((num_prompts, first_idx.size)), axis=1)[:, :pairs_per_prompt]
    rows = np.repeat(np.arange(num_prompts), pairs_per_prompt)
    cols = picks.ravel()
    first = responses[rows, first_idx[cols]]
    second = responses[rows, second_idx[cols]]
    return first, second, rows, responses


def make_pool_variations(
    rng: RngLike,
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    paraphrases: int,
    perturbation_scale: float,
    prompt_shift_scale: float,
) -> Pool:
    """Representation-level "paraphrase" pool for feature pairs (method.md §2 scheme).

    For base pair ``i`` draw ``p`` prompt shifts ``s ~ prompt_shift_scale · N(0, I)`` and ``p``
    variants each of the chosen and rejected features (``x + perturbation_scale · N(0, I)``).
    Pool pair ``(ci, rj)`` (row ``offsets[i] + ci · p + rj``) is
    ``(chosen_var[ci] + s[(ci + rj) mod p], rejected_var[rj] + s[(ci + rj) mod p])``; it inherits
    the base pair's orientation. The original pair is not included.

    Args:
      rng: numpy ``Generator``, integer seed or JAX PRNG key.
      chosen: ``[N, D]`` chosen features.
      rejected: ``[N, D]`` rejected features.
      paraphrases: ``p >= 1`` variants per prompt, chosen and rejected response.
      perturbation_scale: std of the per-response perturbation.
      prompt_shift_scale: std of the shift shared by both responses of a pool pair.

    Returns:
      ``Pool`` with ``chosen, rejected [N p², D]`` float32, ``source [N p²]`` int32 and
      ``offsets [N + 1]`` int32.

    Raises:
      MarsError: on mismatched shapes or invalid scales.
    """
    chosen_np = np.asarray(chosen, np.float64)
    rejected_np = np.asarray(rejected, np.float64)
    if chosen_np.ndim != 2 or chosen_np.shape != rejected_np.shape:
        raise MarsError(
            f"chosen and rejected must both be [N, D]; got {chosen_np.shape} and "
            f"{rejected_np.shape}"
        )
    if paraphrases < 1:
        raise MarsError(f"paraphrases must be >= 1; got {paraphrases}")
    if perturbation_scale < 0 or prompt_shift_scale < 0:
        raise MarsError(
            "perturbation_scale and prompt_shift_scale must be >= 0; got "
            f"{perturbation_scale} and {prompt_shift_scale}"
        )
    gen = _as_generator(rng)
    num_pairs, feature_dim = chosen_np.shape
    shape = (num_pairs, paraphrases, feature_dim)
    shifts = prompt_shift_scale * gen.standard_normal(shape)
    chosen_var = chosen_np[:, None, :] + perturbation_scale * gen.standard_normal(shape)
    rejected_var = rejected_np[:, None, :] + perturbation_scale * gen.standard_normal(shape)
    index = np.arange(paraphrases)
    shift = shifts[:, (index[:, None] + index[None, :]) % paraphrases]
    pool_chosen = chosen_var[:, :, None, :] + shift
    pool_rejected = rejected_var[:, None, :, :] + shift
    per_pair = paraphrases * paraphrases
    return Pool(
        chosen=jnp.asarray(pool_chosen.reshape(-1, feature_dim), jnp.float32),
        rejected=jnp.asarray(pool_rejected.reshape(-1, feature_dim), jnp.float32),
        source=jnp.asarray(np.repeat(np.arange(num_pairs), per_pair), jnp.int32),
        offsets=jnp.asarray(np.arange(num_pairs + 1) * per_pair, jnp.int32),
    )


def _make_hard(
    rng: np.random.Generator,
    params: RewardParams,
    first: np.ndarray,
    second: np.ndarray,
    *,
    num_hard: int,
    hard_margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Move the second response of ``num_hard`` random pairs towards the first.

    For each chosen pair, ``second`` becomes ``first + t (second - first)`` with ``t`` in
    ``(0, 1]`` such that ``|r(first) - r(second)|`` equals a target uniform in
    ``[0, hard_margin)`` (bisection on ``t``; the gap is 0 at ``t = 0``, so a crossing
    exists whenever the gap at ``t = 1`` exceeds the target; otherwise ``t = 1``).

    Returns:
      ``(second[N, D] float32, hard[N] bool)``.
    """
    num_pairs = first.shape[0]
    hard = np.zeros(num_pairs, bool)
    rows = rng.choice(num_pairs, num_hard, replace=False)
    hard[rows] = True
    target = hard_margin * rng.random(num_hard)
    start = first[rows].astype(np.float64)
    step = second[rows].astype(np.float64) - start
    start_reward = _host_reward(params, start)

    def gap(t: np.ndarray) -> np.ndarray:
        return np.abs(start_reward - _host_reward(params, start + t[:, None] * step))

    low, high = np.zeros(num_hard), np.ones(num_hard)
    for _ in range(60):
        middle = 0.5 * (low + high)
        above = gap(middle) > target
        low, high = np.where(above, low, middle), np.where(above, middle, high)
    t = np.where(gap(np.ones(num_hard)) > target, high, 1.0)
    second = second.copy()
    second[rows] = (start + t[:, None] * step).astype(np.float32)
    return second, hard


def _orient_pool(
    pool: Pool, margin: np.ndarray, source_wrong: np.ndarray
) -> tuple[Pool, np.ndarray]:
    """Swap pool pairs so each agrees with the true reward iff its base pair's label does.

    Args:
      pool: the pool, in the base pairs' orientation.
      margin: ``[P]`` true margins of the pool pairs as given.
      source_wrong: ``[N]`` bool, whether each base pair's label is wrong.

    Returns:
      The re-oriented pool and its ``[P]`` true margins (exact ties are left as they are).
    """
    wrong = source_wrong[np.asarray(pool.source)]
    swap = (margin != 0) & ((margin < 0) != wrong)
    chosen, rejected = np.asarray(pool.chosen), np.asarray(pool.rejected)
    oriented = pool._replace(
        chosen=jnp.asarray(np.where(swap[:, None], rejected, chosen)),
        rejected=jnp.asarray(np.where(swap[:, None], chosen, rejected)),
    )
    return oriented, np.where(swap, -margin, margin)


def _pair_set(
    chosen: np.ndarray,
    rejected: np.ndarray,
    prompt: np.ndarray,
    true_margin: np.ndarray,
    flipped: np.ndarray,
) -> PairSet:
    """Pack host arrays into a ``PairSet`` of JAX arrays."""
    return PairSet(
        chosen=jnp.asarray(chosen, jnp.float32),
        rejected=jnp.asarray(rejected, jnp.float32),
        prompt=jnp.asarray(prompt, jnp.int32),
        true_margin=jnp.asarray(true_margin, jnp.float32),
        flipped=jnp.asarray(flipped, jnp.bool_),
    )


def _validate(
    *,
    num_base_pairs: int,
    num_heldout_pairs: int,
    responses_per_prompt: int,
    feature_dim: int,
    pairs_per_prompt: int,
    nonlinear_weight: float,
    reward_scale: float,
    label_flip_rate: float,
    regime: str,
    label_noise: float,
    hard_fraction: float,
    hard_margin: float,
) -> None:
    """Raise ``MarsError`` on arguments the suite cannot honour."""
    if num_base_pairs < 1 or num_heldout_pairs < 0:
        raise MarsError(
            "need num_base_pairs >= 1 and num_heldout_pairs >= 0; got "
            f"{num_base_pairs} and {num_heldout_pairs}"
        )
    if responses_per_prompt < 2 or feature_dim < 1:
        raise MarsError(
            "need responses_per_prompt >= 2 and feature_dim >= 1; got "
            f"{responses_per_prompt} and {feature_dim}"
        )
    max_pairs = responses_per_prompt * (responses_per_prompt - 1) // 2
    if not 1 <= pairs_per_prompt <= max_pairs:
        raise MarsError(
            f"pairs_per_prompt must be in [1, {max_pairs}] for {responses_per_prompt} "
            f"responses per prompt; got {pairs_per_prompt}"
        )
    if nonlinear_weight < 0 or reward_scale <= 0:
        raise MarsError(
            "need nonlinear_weight >= 0 and reward_scale > 0; got "
            f"{nonlinear_weight} and {reward_scale}"
        )
    if not 0.0 <= label_flip_rate <= 1.0:
        raise MarsError(f"label_flip_rate must be in [0, 1]; got {label_flip_rate}")
    if regime not in REGIMES:
        raise MarsError(f"regime must be one of {REGIMES}; got {regime!r}")
    if not (0.0 <= label_noise <= 1.0 and 0.0 <= hard_fraction <= 1.0 and hard_margin > 0):
        raise MarsError(
            "need label_noise and hard_fraction in [0, 1] and hard_margin > 0; got "
            f"{label_noise}, {hard_fraction} and {hard_margin}"
        )
    if regime == "noisy" and (label_noise or hard_fraction):
        raise MarsError(
            "label_noise and hard_fraction apply to regime 'informative' only; got "
            f"{label_noise} and {hard_fraction} with regime 'noisy'"
        )


def make_synthetic_suite(
    *,
    seed: int,
    num_base_pairs: int,
    num_heldout_pairs: int,
    responses_per_prompt: int = 8,
    feature_dim: int = 16,
    paraphrases: int = 5,
    perturbation_scale: float = 0.5,
    prompt_shift_scale: float = 0.5,
    nonlinear_weight: float = 1.0,
    reward_scale: float = 3.0,
    label_flip_rate: float = 0.0,
    pairs_per_prompt: int = _DEFAULT_PAIRS_PER_PROMPT,
    regime: str = "noisy",
    label_noise: float = 0.0,
    hard_fraction: float = 0.0,
    hard_margin: float = 0.5,
) -> SyntheticSuite:
    """Build the synthetic preference suite (see the module docstring for the process).

    Args:
      seed: seed of every draw (reward, prompts, labels, flips, held-out set, pool).
      num_base_pairs: ``N`` labelled training pairs.
      num_heldout_pairs: ``M`` evaluation pairs from fresh prompts.
      responses_per_prompt: ``K`` responses per prompt.
      feature_dim: ``D`` features per response.
      paraphrases: ``p`` variants per prompt/response in the pool (``p²`` pairs per base pair).
      perturbation_scale: std of the per-response pool perturbation.
      prompt_shift_scale: std of the pool prompt shift shared by both responses of a pair.
      nonlinear_weight: std of the tanh part of the reward relative to the linear part.
      reward_scale: std of the true reward over responses.
      label_flip_rate: fraction of base labels flipped after Bradley-Terry labelling.
      pairs_per_prompt: distinct response pairs drawn per prompt.
      regime: ``"noisy"`` (Bradley-Terry labels, inherited by the pool) or
        ``"informative"`` (true-reward labels, pool re-labelled by the true reward).
      label_noise: ``informative`` only: probability of flipping each non-hard base label.
      hard_fraction: ``informative`` only: share of base pairs made hard.
      hard_margin: ``informative`` only: hard pairs' true margins are below this.

    Returns:
      The ``SyntheticSuite``.

    Raises:
      MarsError: on invalid arguments.
    """
    _validate(
        num_base_pairs=num_base_pairs,
        num_heldout_pairs=num_heldout_pairs,
        responses_per_prompt=responses_per_prompt,
        feature_dim=feature_dim,
        pairs_per_prompt=pairs_per_prompt,
        nonlinear_weight=nonlinear_weight,
        reward_scale=reward_scale,
        label_flip_rate=label_flip_rate,
        regime=regime,
        label_noise=label_noise,
        hard_fraction=hard_fraction,
        hard_margin=hard_margin,
    )
    root_seq = np.random.SeedSequence(seed)
    reward_seq, base_seq, label_seq, flip_seq, heldout_seq, pool_seq = root_seq.spawn(6)
    informative = regime == "informative"
    params = _make_reward_params(
        np.random.default_rng(reward_seq),
        feature_dim=feature_dim,
        nonlinear_weight=nonlinear_weight,
        reward_scale=reward_scale,
    )
    prompt_kwargs = {
        "responses_per_prompt": responses_per_prompt,
        "feature_dim": feature_dim,
        "pairs_per_prompt": pairs_per_prompt,
    }

    num_base_prompts = math.ceil(num_base_pairs / pairs_per_prompt)
    first, second, prompt, responses = _make_prompt_pairs(
        np.random.default_rng(base_seq), num_prompts=num_base_prompts, **prompt_kwargs
    )
    first, second, prompt = first[:num_base_pairs], second[:num_base_pairs], prompt[:num_base_pairs]
    hard = np.zeros(num_base_pairs, bool)
    if informative:
        (hard_seq,) = root_seq.spawn(1)
        second, hard = _make_hard(
            np.random.default_rng(hard_seq),
            params,
            first,
            second,
            num_hard=round(hard_fraction * num_base_pairs),
            hard_margin=hard_margin,
        )
    first_margin = _host_reward(params, first) - _host_reward(params, second)
    label_rng = np.random.default_rng(label_seq)
    if informative:
        noise = (label_rng.random(num_base_pairs) < label_noise) & ~hard
        first_wins = (first_margin > 0) ^ noise
    else:
        first_wins = label_rng.random(num_base_pairs) < _sigmoid(first_margin)
    num_flips = round(label_flip_rate * num_base_pairs)
    flipped = np.zeros(num_base_pairs, bool)
    flipped[np.random.default_rng(flip_seq).choice(num_base_pairs, num_flips, replace=False)] = True
    first_chosen = first_wins ^ flipped
    sign = np.where(first_chosen, 1.0, -1.0)
    base = _pair_set(
        np.where(first_chosen[:, None], first, second),
        np.where(first_chosen[:, None], second, first),
        prompt,
        sign * first_margin,
        flipped ^ noise if informative else flipped,
    )

    heldout_rng = np.random.default_rng(heldout_seq)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    num_heldout, next_prompt = 0, num_base_prompts
    while num_heldout < num_heldout_pairs:
        num_prompts = math.ceil((num_heldout_pairs - num_heldout) / pairs_per_prompt)
        a, b, local_prompt, _ = _make_prompt_pairs(
            heldout_rng, num_prompts=num_prompts, **prompt_kwargs
        )
        margin = _host_reward(params, a) - _host_reward(params, b)
        a_wins = margin > 0
        keep = margin != 0
        chunks.append(
            (
                np.where(a_wins[:, None], a, b)[keep],
                np.where(a_wins[:, None], b, a)[keep],
                (next_prompt + local_prompt)[keep],
                np.abs(margin)[keep],
            )
        )
        num_heldout += int(keep.sum())
        next_prompt += num_prompts
    if chunks:
        h_chosen, h_rejected, h_prompt, h_margin = (
            np.concatenate(c) for c in zip(*chunks, strict=True)
        )
    else:
        h_chosen = h_rejected = np.zeros((0, feature_dim), np.float32)
        h_prompt, h_margin = np.zeros(0, np.int32), np.zeros(0)
    heldout = _pair_set(
        h_chosen[:num_heldout_pairs],
        h_rejected[:num_heldout_pairs],
        h_prompt[:num_heldout_pairs],
        h_margin[:num_heldout_pairs],
        np.zeros(num_heldout_pairs, bool),
    )

    pool = make_pool_variations(
        np.random.default_rng(pool_seq),
        base.chosen,
        base.rejected,
        paraphrases=paraphrases,
        perturbation_scale=perturbation_scale,
        prompt_shift_scale=prompt_shift_scale,
    )
    pool_margin = _host_reward(params, np.asarray(pool.chosen)) - _host_reward(
        params, np.asarray(pool.rejected)
    )
    base_margin = np.asarray(base.true_margin)
    if informative:
        pool, pool_margin = _orient_pool(pool, pool_margin, base_margin < 0)
    info = {
        "num_base_pairs": num_base_pairs,
        "num_heldout_pairs": num_heldout_pairs,
        "num_pool_pairs": int(pool_margin.size),
        "num_base_prompts": num_base_prompts,
        "num_heldout_prompts": int(np.unique(h_prompt[:num_heldout_pairs]).size),
        "pairs_per_prompt": pairs_per_prompt,
        "num_flipped": num_flips,
        "base_label_disagreement": float(np.mean(base_margin < 0)),
        "base_bt_expected_disagreement": float(np.mean(_sigmoid(-np.abs(first_margin)))),
        "pool_label_disagreement": float(np.mean(pool_margin < 0)),
        "pool_drift_fraction": float(
            np.mean((pool_margin < 0) != (base_margin[np.asarray(pool.source)] < 0))
        ),
        "reward_std": float(np.std(_host_reward(params, responses))),
    }
    if informative:
        info |= {
            "regime": regime,
            "label_noise": label_noise,
            "num_noise_flips": int(noise.sum()),
            "num_hard_pairs": int(hard.sum()),
            "hard_margin": hard_margin,
        }
    return SyntheticSuite(
        base=base,
        heldout=heldout,
        pool=pool,
        pool_true_margin=jnp.asarray(pool_margin, jnp.float32),
        reward_params=params,
        info=info,
        base_hard=jnp.asarray(hard),
    )
