"""Allocation of a synthetic-pair budget over base pairs, and drawing from a pool.

MARS (method.md section 2) turns per-pair margins into weights
``q = softmax(-tau * |m|)`` (or the signed ``softmax(-tau * m)``), turns ``B * q`` into
integer budgets by largest remainder, and draws each base pair's budget from its own
pool of synthetic pairs. The baselines use the same three steps with other weights or
orders, so every method runs through one loop:

========================  ==========================  ==============================
method                    weights over base pairs     order of draws within a source
========================  ==========================  ==============================
none                      (no synthetic pairs)        --
uniform                   proportional to pool size   random
uniform_global            :func:`uniform_global_budgets` (unstratified)  random
west_of_n                 proportional to pool size   highest synthetic margin first
mars / mars_signed        :func:`mars_weights`        random
ensemble                  :func:`ensemble_weights`    random
adaboost                  (no synthetic pairs; base-pair loss weights from
                          :func:`adaboost_weights`)
========================  ==========================  ==============================

``uniform`` is *stratified*: its budgets are the largest-remainder split of ``B`` in
proportion to pool sizes, so each base pair gets ``B / N`` pairs in expectation, as
independent uniform draws from the whole pool would give, with less variance.
``uniform_global`` is the authors' baseline: ``B`` rows drawn from the whole pool without
replacement, so some base pairs get none and some several (method.md section 6).
MARS's ``tau`` can be set per round (:data:`TEMPERATURE_MODES`: fixed, normalised by the
spread of ``|m|``, or solved for a target effective sample size).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

METHODS = (
    "none",
    "uniform",
    "uniform_global",
    "west_of_n",
    "mars",
    "mars_signed",
    "adaboost",
    "ensemble",
)

__all__ = [
    "METHODS",
    "TEMPERATURE_MODES",
    "Allocation",
    "AllocationDiagnostics",
    "Draws",
    "MarginStatistics",
    "adaboost_weights",
    "allocate",
    "allocation_diagnostics",
    "curriculum_temperature",
    "draw_from_pool",
    "effective_sample_size",
    "effective_temperature",
    "ensemble_weights",
    "ess_temperature",
    "largest_remainder_budgets",
    "margin_statistics",
    "mars_weights",
    "mars_weights_with_mode",
    "pool_size_weights",
    "scaled_margins",
    "uniform_global_budgets",
]


def mars_weights(margins: jax.Array, *, temperature: float, signed: bool = False) -> jax.Array:
    """MARS allocation weights over base pairs.

    Args:
      margins: ``[N]`` signed margins ``r(chosen) - r(rejected)`` of the base pairs.
      temperature: ``tau``; larger concentrates the budget on the least certain pairs.
      signed: if False (v1), ``softmax(-tau * |m|)``: ambiguous pairs get the most; if
        True (v2), ``softmax(-tau * m)``: mis-ranked pairs get the most.

    Returns:
      ``[N]`` non-negative weights summing to 1.
    """
    score = margins if signed else jnp.abs(margins)
    return jax.nn.softmax(-temperature * score)


def pool_size_weights(offsets: jax.Array) -> jax.Array:
    """Weights proportional to each base pair's pool size (``[N + 1] -> [N]``).

    Falls back to equal weights when the pool is empty.
    """
    counts = (offsets[1:] - offsets[:-1]).astype(jnp.float32)
    total = jnp.sum(counts)
    return jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), 1.0 / counts.size)


def ensemble_weights(member_margins: jax.Array, *, temperature: float) -> jax.Array:
    """Allocation weights from the disagreement of an ensemble of reward heads.

    ``q = softmax(tau * s / mean(s))`` with ``s`` the standard deviation of a pair's margin
    across members; dividing by the mean makes ``tau`` independent of the reward scale.

    Args:
      member_margins: ``[M, N]`` margins of each base pair under each of ``M`` heads.
      temperature: ``tau``.

    Returns:
      ``[N]`` weights summing to 1.
    """
    spread = jnp.std(member_margins, axis=0)
    scale = jnp.mean(spread)
    scale = jnp.where(scale > 0, scale, 1.0)
    return jax.nn.softmax(temperature * spread / scale)


def adaboost_weights(margins: jax.Array, *, temperature: float) -> jax.Array:
    """AdaBoost-style loss weights for base pairs (no synthetic data).

    Our design (v2 of the paper names the baseline without code): exponential weights in
    the signed margin, ``w ∝ exp(-tau * m)``, normalised to mean 1 so the loss scale and
    effective learning rate match unweighted training. Mis-ranked pairs weigh most.

    Args:
      margins: ``[N]`` signed margins.
      temperature: ``tau``.

    Returns:
      ``[N]`` positive weights with mean 1.
    """
    return jax.nn.softmax(-temperature * margins) * margins.shape[0]


def largest_remainder_budgets(weights: jax.Array, *, budget: int, key: jax.Array) -> jax.Array:
    """Integer budgets ``b`` with ``sum(b) == budget``, close to ``budget * weights``.

    Each ``b_i`` is ``floor(budget * q_i)`` plus one unit for the pairs with the largest
    remainders (``q = weights / sum(weights)``); equal remainders go to the larger weight,
    and exact ties are broken in a random order drawn from ``key``. A larger weight never
    gets a smaller budget.
    Quotas are float32 (unless x64 is enabled), so keep ``budget`` below ``2**24``.

    Args:
      weights: ``[N]`` non-negative weights, not all 0.
      budget: total number of units ``B`` (may be a traced integer).
      key: PRNG key for the tie-break.

    Returns:
      ``[N]`` int32 budgets.
    """
    num = weights.shape[0]
    quota = budget * (weights / jnp.sum(weights))
    floors = jnp.floor(quota)
    remainders = (quota - floors).astype(jnp.float32)
    floors = floors.astype(jnp.int32)
    leftover = jnp.clip(budget - jnp.sum(floors), 0, num)
    # Non-negative float32 values order like their bit patterns read as int32. Equal
    # remainders go to the larger weight first (so the budget stays monotone in the weight
    # at float32 resolution), then in a random order.
    remainder_bits = jax.lax.bitcast_convert_type(remainders, jnp.int32)
    weight_bits = jax.lax.bitcast_convert_type(weights.astype(jnp.float32), jnp.int32)
    random_bits = jax.lax.shift_right_logical(
        jax.random.bits(key, (num,), jnp.uint32), jnp.uint32(1)
    ).astype(jnp.int32)
    extra = _largest((remainder_bits, weight_bits, random_bits), leftover)
    budgets = floors + extra.astype(jnp.int32)
    # A floating-point safety net: the sum is exact unless rounding moved a floor.
    return budgets.at[jnp.argmax(weights)].add(budget - jnp.sum(budgets))


def _largest(keys: tuple[jax.Array, ...], count: jax.Array) -> jax.Array:
    """Mask of the ``count`` largest rows in the lexicographic order of ``keys``.

    Each key is ``[N]`` int32 >= 0. A binary search finds the threshold of the first key;
    rows above it are taken, rows equal to it go on to the next key; remaining ties are
    taken by index. Sorting is slow on some backends (about 2 ms for 10k floats on CPU);
    this is ``O(N log range)`` elementwise work per key.
    """
    chosen = jnp.zeros(keys[0].shape, bool)
    candidates = jnp.ones(keys[0].shape, bool)
    wanted = count
    for key in keys:
        values = jnp.where(candidates, key, -1)
        threshold = _threshold(values, wanted)
        above = values > threshold
        chosen = chosen | above
        wanted = wanted - jnp.sum(above)
        candidates = values == threshold
    return chosen | (candidates & (jnp.cumsum(candidates) <= wanted))


def _threshold(values: jax.Array, count: jax.Array) -> jax.Array:
    """The smallest ``t`` with at most ``count`` of ``values`` (int32 >= -1) above it."""

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        fits = jnp.sum(values > middle) <= count
        return jnp.where(fits, low, middle), jnp.where(fits, middle, high)

    low = jnp.asarray(-2, jnp.int32)
    high = jnp.max(values).astype(jnp.int32)
    return jax.lax.fori_loop(0, 32, halve, (low, high))[1]


class Draws(NamedTuple):
    """Synthetic pairs drawn from a pool.

    Attributes:
      indices: ``[S]`` int32 rows of the pool.
      source: ``[S]`` int32 base pair each draw was allocated to.
      valid: ``[S]`` bool; False for slots beyond ``sum(budgets)``.
    """

    indices: jax.Array
    source: jax.Array
    valid: jax.Array


def draw_from_pool(
    key: jax.Array,
    budgets: jax.Array,
    offsets: jax.Array,
    *,
    num_draws: int,
    max_per_source: int,
    priority: jax.Array | None = None,
) -> Draws:
    """Draw ``budgets[i]`` synthetic pairs from the pool rows of each base pair ``i``.

    Within a source, the first ``n_i = offsets[i+1] - offsets[i]`` draws take distinct
    rows in order of decreasing ``priority`` (a uniformly random order when ``priority``
    is None; ties go to the earlier row), so a budget up to the pool size draws without
    replacement; draws beyond ``n_i`` are uniform with replacement. A source with an
    empty pool draws from the whole pool.

    Rows are ordered within each source only (``[N, K]`` with ``K = max_per_source``),
    never by a sort of the whole pool: a random order is a partial Fisher-Yates shuffle
    of the first ``max(budgets)`` positions; a priority order ranks by pairwise
    comparison for small ``K`` and by a batched sort otherwise.

    Args:
      key: PRNG key.
      budgets: ``[N]`` int32 per-source budgets (see :func:`largest_remainder_budgets`).
      offsets: ``[N + 1]`` int32 CSR offsets of the pool (``Pool.offsets``); ``P > 0``.
      num_draws: static number of slots ``S`` (normally the round's budget ``B``).
      max_per_source: static upper bound ``K`` on any source's pool size.
      priority: optional ``[P]`` scores; higher is drawn first (West-of-N passes the
        synthetic pairs' current margins).

    Returns:
      :class:`Draws` with ``S`` slots.
    """
    budgets, offsets = jnp.asarray(budgets), jnp.asarray(offsets)
    num_sources = budgets.shape[0]
    order_key, extra_key, anywhere_key = jax.random.split(key, 3)
    counts = offsets[1:] - offsets[:-1]
    slot = jnp.arange(max_per_source, dtype=jnp.int32)
    rows = offsets[:-1, None] + slot
    in_pool = slot < counts[:, None]
    if priority is None:
        prefix = jnp.minimum(jnp.max(budgets, initial=0), max_per_source)
        ranked_rows = _shuffled_prefix(order_key, rows, counts, prefix)
    else:
        scores = jnp.asarray(priority)[jnp.clip(rows, 0, priority.shape[0] - 1)]
        ranked_rows = _rows_by_rank(rows, jnp.where(in_pool, scores, -jnp.inf))

    slot_source = jnp.repeat(
        jnp.arange(num_sources, dtype=jnp.int32), budgets, total_repeat_length=num_draws
    )
    first_slot = jnp.cumsum(budgets) - budgets
    rank = jnp.arange(num_draws, dtype=jnp.int32) - first_slot[slot_source]
    size = counts[slot_source]
    start = offsets[slot_source]
    ranked = ranked_rows[slot_source, jnp.clip(rank, 0, max_per_source - 1)]
    uniform = jax.random.uniform(extra_key, (num_draws,))
    with_replacement = start + jnp.floor(uniform * size).astype(jnp.int32)
    anywhere = jax.random.randint(anywhere_key, (num_draws,), 0, offsets[-1])
    indices = jnp.where(size == 0, anywhere, jnp.where(rank < size, ranked, with_replacement))
    valid = jnp.arange(num_draws) < jnp.sum(budgets)
    return Draws(indices=indices, source=slot_source, valid=valid)


class Allocation(NamedTuple):
    """A round's allocation.

    Attributes:
      budgets: ``[N]`` int32 synthetic pairs per base pair.
      base_weights: ``[N]`` loss weights of the base pairs (1 except for ``adaboost``).
      draws: the drawn pool rows (``S = num_draws`` slots).
      reference_budgets: ``[N]`` the stratified uniform budgets of the same round (same
        tie-break key), the reference of :func:`allocation_diagnostics`.
      temperature: scalar ``tau`` the MARS weights used (the given one in ``fixed`` mode;
        0 for methods without a temperature).
    """

    budgets: jax.Array
    base_weights: jax.Array
    draws: Draws
    reference_budgets: jax.Array
    temperature: jax.Array


def allocate(
    member_margins: jax.Array,
    pool_offsets: jax.Array,
    key: jax.Array,
    *,
    method: str,
    num_draws: int,
    max_per_source: int,
    temperature: float = 1.0,
    temperature_mode: str = "fixed",
    ess_fraction: float | None = None,
    priority: jax.Array | None = None,
) -> Allocation:
    """Weights, integer budgets and pool draws of one round for ``method``.

    Pure; jit it with the keyword arguments (but ``priority``) static.

    Args:
      member_margins: ``[M, N]`` base-pair margins under each of ``M`` ensemble members
        (``M = 1`` for a single model; methods but ``ensemble`` use the mean over members).
      pool_offsets: ``[N + 1]`` CSR offsets of the pool (``Pool.offsets``).
      key: PRNG key.
      method: one of :data:`METHODS` (see the table in the module docstring).
      num_draws: synthetic pairs to draw this round (0 for ``none`` and ``adaboost``).
      max_per_source: the largest pool of any base pair.
      temperature: the method's temperature: ``tau`` of :func:`mars_weights`,
        :func:`ensemble_weights` or :func:`adaboost_weights` (unused by the others).
      temperature_mode: how MARS's ``tau`` is set (:data:`TEMPERATURE_MODES`).
      ess_fraction: target effective sample size ``/ N`` of the ``target_ess`` mode.
      priority: ``[P]`` draw order for ``west_of_n`` (the pool pairs' margins).

    Returns:
      :class:`Allocation`; the budgets sum to ``num_draws``.
    """
    margins = member_margins.mean(axis=0)
    num_base = margins.shape[0]
    base_weights = jnp.ones(num_base, jnp.float32)
    tau = jnp.zeros((), jnp.float32)
    if method == "adaboost":
        base_weights = adaboost_weights(margins, temperature=temperature)
    if method in ("mars", "mars_signed") and temperature_mode == "fixed":
        weights = mars_weights(margins, temperature=temperature, signed=method == "mars_signed")
        tau = jnp.asarray(temperature, jnp.float32)
    elif method in ("mars", "mars_signed"):
        options = {"temperature": temperature, "ess_fraction": ess_fraction}
        signed = method == "mars_signed"
        tau = effective_temperature(margins, mode=temperature_mode, signed=signed, **options)
        weights = mars_weights_with_mode(margins, mode=temperature_mode, signed=signed, **options)
    elif method == "ensemble":
        weights = ensemble_weights(member_margins, temperature=temperature)
    else:
        weights = pool_size_weights(pool_offsets)
    budget_key, draw_key = jax.random.split(key)
    if num_draws:
        reference = largest_remainder_budgets(
            pool_size_weights(pool_offsets), budget=num_draws, key=budget_key
        )
        if method == "uniform_global":
            budgets = uniform_global_budgets(budget_key, pool_offsets, budget=num_draws)
        else:
            budgets = largest_remainder_budgets(weights, budget=num_draws, key=budget_key)
    else:
        budgets = reference = jnp.zeros(num_base, jnp.int32)
    draws = draw_from_pool(
        draw_key,
        budgets,
        pool_offsets,
        num_draws=num_draws,
        max_per_source=max_per_source,
        priority=priority,
    )
    return Allocation(budgets, base_weights, draws, reference, tau)


_PAIRWISE_RANK_LIMIT = 64


def _shuffled_prefix(
    key: jax.Array, rows: jax.Array, counts: jax.Array, length: jax.Array
) -> jax.Array:
    """``[N, K]`` rows whose first ``length`` columns are a uniform draw without replacement.

    Position ``j`` of source ``i`` swaps with a uniform position in ``[j, counts[i])``,
    for ``j < min(length, counts[i])``: a Fisher-Yates shuffle stopped after ``length``.
    """
    num_sources = rows.shape[0]
    sources = jnp.arange(num_sources)

    def swap(j, carry):
        rows, key = carry
        key, pick_key = jax.random.split(key)
        remaining = jnp.maximum(counts - j, 1)
        pick = j + jnp.floor(jax.random.uniform(pick_key, (num_sources,)) * remaining)
        pick = jnp.where(j < counts, pick.astype(jnp.int32), j)
        here, there = rows[:, j], rows[sources, pick]
        rows = rows.at[:, j].set(there).at[sources, pick].set(here)
        return rows, key

    return jax.lax.fori_loop(0, length, swap, (rows, key))[0]


def _rows_by_rank(rows: jax.Array, scores: jax.Array) -> jax.Array:
    """``[N, K]`` rows reordered within each source by decreasing score (stable)."""
    width = rows.shape[1]
    if width > _PAIRWISE_RANK_LIMIT:
        order = jnp.argsort(-scores, axis=1, stable=True)
        return jnp.take_along_axis(rows, order, axis=1)
    position = jnp.arange(width)
    ahead = (scores[:, None, :] > scores[:, :, None]) | (
        (scores[:, None, :] == scores[:, :, None]) & (position[None, :] < position[:, None])
    )
    rank = jnp.sum(ahead, axis=2)
    sources = jnp.arange(rows.shape[0])[:, None]
    return jnp.zeros_like(rows).at[sources, rank].set(rows)


# ---------------------------------------------------------------------------------------
# The authors' unstratified uniform baseline (method.md section 6)
# ---------------------------------------------------------------------------------------


def uniform_global_budgets(key: jax.Array, offsets: jax.Array, *, budget: int) -> jax.Array:
    """Per-base-pair budgets of ``B`` uniform draws from the whole pool, without replacement.

    The authors' uniform baseline: ``B`` distinct pool rows, uniformly at random, so some
    base pairs get none and some several. The budgets are the counts of drawn rows per
    source, so ``b`` follows the multivariate hypergeometric law
    (``E[b_i] = B n_i / P``); :func:`draw_from_pool` then draws ``b_i <= n_i`` distinct
    rows of source ``i``, which makes the whole draw a uniform ``B``-subset of the pool.
    Unlike :func:`largest_remainder_budgets` on :func:`pool_size_weights` (stratified),
    the counts vary from round to round.

    When the budget exceeds the pool (``B > P``), every row is taken ``B // P`` times and
    the remaining ``B mod P`` rows are a uniform subset without replacement, so
    ``b_i = (B // P) n_i + c_i`` with ``c`` hypergeometric. Such a ``b_i`` exceeds ``n_i``,
    and :func:`draw_from_pool` then takes every row of source ``i`` once and the excess
    uniformly with replacement (the counts per source follow the rule, not the counts per
    row). An empty pool (``P == 0``) gives all-zero budgets (there is nothing to draw).

    The subset is Floyd's algorithm, resolved without a sequential loop: one sort to find
    repeated picks and ``ceil(log2 B)`` rounds of pointer jumping, ``O(B log B)`` work.
    ``P`` may be traced; only ``B`` is static.

    Args:
      key: PRNG key.
      offsets: ``[N + 1]`` int32 CSR offsets of the pool (``Pool.offsets``).
      budget: static total number of draws ``B >= 0``.

    Returns:
      ``[N]`` int32 budgets summing to ``B`` (to 0 if the pool is empty).
    """
    offsets = jnp.asarray(offsets, jnp.int32)
    counts = offsets[1:] - offsets[:-1]
    num_sources = counts.shape[0]
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if budget == 0:
        return jnp.zeros(num_sources, jnp.int32)
    total = offsets[-1]
    safe_total = jnp.maximum(total, 1)
    full_passes = budget // safe_total
    rows, valid = _distinct_rows(key, safe_total, budget - full_passes * safe_total, size=budget)
    source = jnp.clip(jnp.searchsorted(offsets, rows, side="right") - 1, 0, num_sources - 1)
    drawn = jnp.zeros(num_sources, jnp.int32).at[source].add(valid.astype(jnp.int32))
    return jnp.where(total > 0, full_passes * counts + drawn, 0).astype(jnp.int32)


def _distinct_rows(
    key: jax.Array, total: jax.Array, count: jax.Array, *, size: int
) -> tuple[jax.Array, jax.Array]:
    """A uniform ``count``-subset of ``[0, total)`` (``count <= min(size, total)``).

    Floyd's algorithm: step ``j`` (for ``j < count``) picks ``t_j`` uniform in
    ``[0, top_j]`` with ``top_j = total - count + j`` and adds ``t_j``, or ``top_j`` if
    ``t_j`` is already in the set. The set before step ``j`` holds every earlier ``t``
    plus the tops of earlier collisions, so ``t_j`` collides iff it repeats an earlier
    ``t`` or equals the top of an earlier step that collided: a chain back to a first
    repeat or a non-collision, followed here by pointer jumping.

    Returns:
      ``(rows[size], valid[size])``: the subset in its first ``count`` slots, 0 elsewhere.
    """
    step = jnp.arange(size, dtype=jnp.int32)
    active = step < count
    top = total - count + step
    picks = jax.random.randint(key, (size,), 0, jnp.maximum(top, 0) + 1, dtype=jnp.int32)
    picks = jnp.where(active, picks, -1 - step)
    order = jnp.argsort(picks, stable=True)
    ordered = picks[order]
    repeat_sorted = jnp.concatenate([jnp.zeros(1, bool), ordered[1:] == ordered[:-1]])
    repeat = jnp.zeros(size, bool).at[order].set(repeat_sorted)
    earlier = picks - (total - count)
    follows = active & ~repeat & (earlier >= 0) & (earlier < step)
    parent = jnp.where(follows, earlier, step)
    for _ in range(max(1, (size - 1).bit_length())):
        parent = parent[parent]
    rows = jnp.where(repeat[parent], top, picks)
    return jnp.where(active, rows, 0), active


# ---------------------------------------------------------------------------------------
# Diagnostics: how far an allocation is from uniform, and what the margins look like
# ---------------------------------------------------------------------------------------


class AllocationDiagnostics(NamedTuple):
    """How far one round's budgets are from a reference split (float32 scalars).

    Attributes:
      total_variation: ``0.5 * sum |b / sum(b) - u / sum(u)|`` in ``[0, 1]``; for equal
        totals, 0 exactly when the budgets are equal (same proportions of different
        totals give 0 up to float32 rounding).
      effective_num_pairs: ``1 / sum(q²)`` with ``q = b / sum(b)``: ``N`` for an even split,
        1 when one base pair gets everything (0 when ``sum(b) == 0``).
      zero_share: fraction of base pairs with ``b_i == 0``.
      max_budget: largest ``b_i``.
    """

    total_variation: jax.Array
    effective_num_pairs: jax.Array
    zero_share: jax.Array
    max_budget: jax.Array


def _proportions(budgets: jax.Array) -> jax.Array:
    """``b / sum(b)`` as float32; all zeros when the sum is 0."""
    budgets = jnp.asarray(budgets, jnp.float32)
    total = jnp.sum(budgets)
    return budgets / jnp.where(total > 0, total, 1.0)


def allocation_diagnostics(
    budgets: jax.Array, reference_budgets: jax.Array
) -> AllocationDiagnostics:
    """Distance of an allocation from a reference one, and how concentrated it is.

    Method.md section 6: a claim about MARS is untestable where its budgets equal the
    stratified uniform ones, so log this every round with the stratified uniform budgets
    (``largest_remainder_budgets(pool_size_weights(offsets), ...)``) as the reference.

    Args:
      budgets: ``[N]`` integer (or float) budgets of the method.
      reference_budgets: ``[N]`` budgets of the reference allocation.

    Returns:
      :class:`AllocationDiagnostics`.
    """
    share = _proportions(budgets)
    reference = _proportions(reference_budgets)
    concentration = jnp.sum(share * share)
    return AllocationDiagnostics(
        total_variation=0.5 * jnp.sum(jnp.abs(share - reference)),
        effective_num_pairs=jnp.where(
            concentration > 0, 1.0 / jnp.where(concentration > 0, concentration, 1.0), 0.0
        ),
        zero_share=jnp.mean((jnp.asarray(budgets) == 0).astype(jnp.float32)),
        max_budget=jnp.max(jnp.asarray(budgets)).astype(jnp.float32),
    )


class MarginStatistics(NamedTuple):
    """Summary of a set of signed margins (float32 scalars).

    Attributes:
      mean: mean margin.
      std: standard deviation of the margins.
      abs_q10, abs_q25, abs_median, abs_q75, abs_q90: quantiles of ``|m|`` (linear
        interpolation, as ``numpy.quantile``).
      negative_share: fraction of margins below 0 (mis-ranked pairs).
    """

    mean: jax.Array
    std: jax.Array
    abs_q10: jax.Array
    abs_q25: jax.Array
    abs_median: jax.Array
    abs_q75: jax.Array
    abs_q90: jax.Array
    negative_share: jax.Array


def margin_statistics(margins: jax.Array) -> MarginStatistics:
    """Mean, spread, ``|m|`` quantiles and share mis-ranked of ``[N]`` margins (``N >= 1``)."""
    margins = jnp.asarray(margins, jnp.float32)
    quantiles = jnp.quantile(jnp.abs(margins), jnp.array([0.1, 0.25, 0.5, 0.75, 0.9]))
    return MarginStatistics(
        jnp.mean(margins),
        jnp.std(margins),
        *(quantiles[i] for i in range(5)),
        negative_share=jnp.mean((margins < 0).astype(jnp.float32)),
    )


# ---------------------------------------------------------------------------------------
# Temperature modes (beyond the paper; method.md section 6)
# ---------------------------------------------------------------------------------------

TEMPERATURE_MODES = ("fixed", "normalized", "target_ess")
"""How :func:`effective_temperature` turns the settings into the ``tau`` of the softmax."""

_ESS_LOG_TAU_RANGE = (-12.0, 14.0)
_ESS_BISECTION_STEPS = 48


def effective_sample_size(weights: jax.Array) -> jax.Array:
    """``1 / sum(q²)`` with ``q = weights / sum(weights)`` (``[N] -> []``), in ``[1, N]``."""
    share = _proportions(weights)
    return 1.0 / jnp.sum(share * share)


def _softmax_log_ess(scores: jax.Array, temperature: jax.Array) -> jax.Array:
    """``log ESS`` of ``softmax(-temperature * scores)``, without forming the weights."""
    logits = -temperature * scores
    return 2.0 * jax.nn.logsumexp(logits) - jax.nn.logsumexp(2.0 * logits)


def ess_temperature(scores: jax.Array, *, ess_fraction: float | jax.Array) -> jax.Array:
    """The ``tau >= 0`` at which ``softmax(-tau * scores)`` has ESS ``ess_fraction * N``.

    The ESS of ``softmax(-tau s)`` falls monotonically from ``N`` at ``tau = 0`` to the
    number of pairs tied at ``min(s)`` as ``tau -> inf`` (``d log ESS / d tau`` is twice
    the drop in the mean score from ``q`` to ``softmax(-2 tau s)``, never positive), so a
    bisection on ``log tau`` (a compiled loop of fixed length, on scores rescaled to
    ``[0, 1]``) finds it. ``ess_fraction >= 1`` or constant scores give 0; a target below
    the number of tied minima gives the largest ``tau`` searched (about ``1.2e6 / range``).

    Args:
      scores: ``[N]`` scores (``|m|`` for v1 MARS, ``m`` for signed).
      ess_fraction: target ``ESS / N`` in ``(0, 1]`` (may be traced).

    Returns:
      Scalar float32 ``tau`` for the unscaled ``scores``.
    """
    scores = jnp.asarray(scores, jnp.float32)
    lowest = jnp.min(scores)
    spread = jnp.max(scores) - lowest
    safe_spread = jnp.where(spread > 0, spread, 1.0)
    unit = (scores - lowest) / safe_spread
    log_target = jnp.log(jnp.asarray(ess_fraction, jnp.float32) * scores.shape[0])

    def halve(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        too_flat = _softmax_log_ess(unit, jnp.exp(middle)) > log_target
        return jnp.where(too_flat, middle, low), jnp.where(too_flat, high, middle)

    low, high = (jnp.asarray(bound, jnp.float32) for bound in _ESS_LOG_TAU_RANGE)
    low, high = jax.lax.fori_loop(0, _ESS_BISECTION_STEPS, halve, (low, high))
    tau = jnp.exp(0.5 * (low + high)) / safe_spread
    return jnp.where((spread > 0) & (ess_fraction < 1), tau, 0.0)


def _allocation_scores(margins: jax.Array, signed: bool) -> jax.Array:
    """``m`` (signed, v2) or ``|m|`` (v1): lower scores get more budget."""
    margins = jnp.asarray(margins)
    return margins if signed else jnp.abs(margins)


def effective_temperature(
    margins: jax.Array,
    *,
    mode: str,
    temperature: float | jax.Array | None = None,
    ess_fraction: float | jax.Array | None = None,
    signed: bool = False,
) -> jax.Array:
    """The ``tau`` that multiplies the raw scores (``|m|``, or ``m`` if ``signed``).

    Modes:

    - ``"fixed"``: ``temperature`` as given (the paper; :func:`mars_weights`).
    - ``"normalized"``: ``temperature / std(s)`` (``std`` of the scores, 1 where it is 0),
      so the weights do not change when every margin is scaled by the same ``c > 0``.
    - ``"target_ess"``: solved per call by :func:`ess_temperature` so the weights' effective
      sample size is ``ess_fraction * N``; ``temperature`` is unused.

    Why: at ``tau = 0.1`` and ``B / N = 2`` softmax weights over margins of a few units are
    nearly flat, and largest remainder then returns the stratified uniform budgets.

    Args:
      margins: ``[N]`` signed margins of the base pairs.
      mode: one of :data:`TEMPERATURE_MODES` (static).
      temperature: ``tau`` for ``fixed`` and ``normalized``.
      ess_fraction: target ``ESS / N`` in ``(0, 1]`` for ``target_ess``.
      signed: score by the signed margin (v2) rather than its absolute value (v1).

    Returns:
      Scalar float32 ``tau``.

    Raises:
      ValueError: on an unknown mode or a missing setting for it.
    """
    if mode not in TEMPERATURE_MODES:
        raise ValueError(f"mode must be one of {TEMPERATURE_MODES}, got {mode!r}")
    needed = "ess_fraction" if mode == "target_ess" else "temperature"
    if (ess_fraction if mode == "target_ess" else temperature) is None:
        raise ValueError(f"mode {mode!r} needs {needed}")
    scores = _allocation_scores(margins, signed)
    if mode == "target_ess":
        return ess_temperature(scores, ess_fraction=ess_fraction)
    tau = jnp.asarray(temperature, jnp.float32)
    if mode == "fixed":
        return tau
    spread = jnp.std(scores.astype(jnp.float32))
    return tau / jnp.where(spread > 0, spread, 1.0)


def scaled_margins(
    margins: jax.Array,
    *,
    mode: str,
    temperature: float | jax.Array | None = None,
    ess_fraction: float | jax.Array | None = None,
    signed: bool = False,
) -> jax.Array:
    """``tau * s`` (``[N]``): the MARS weights are ``softmax(-scaled_margins(...))``.

    ``s`` is ``|m|`` (or ``m`` if ``signed``) and ``tau`` is
    :func:`effective_temperature` (same arguments).
    """
    tau = effective_temperature(
        margins, mode=mode, temperature=temperature, ess_fraction=ess_fraction, signed=signed
    )
    return tau * _allocation_scores(margins, signed)


def mars_weights_with_mode(
    margins: jax.Array,
    *,
    mode: str,
    temperature: float | jax.Array | None = None,
    ess_fraction: float | jax.Array | None = None,
    signed: bool = False,
) -> jax.Array:
    """MARS weights ``softmax(-tau * s)`` with ``tau`` set by ``mode`` (``[N] -> [N]``).

    ``mode="fixed"`` equals :func:`mars_weights`; see :func:`effective_temperature` for the
    other modes.
    """
    return jax.nn.softmax(
        -scaled_margins(
            margins, mode=mode, temperature=temperature, ess_fraction=ess_fraction, signed=signed
        )
    )


def curriculum_temperature(
    round_index: int | jax.Array,
    num_rounds: int,
    *,
    start: float,
    end: float,
) -> jax.Array:
    """Temperature of round ``t`` on a geometric path from ``start`` to ``end``.

    ``tau_t = start * (end / start) ** (t / (R - 1))`` for ``t = 0 .. R - 1`` (``start``
    for ``R == 1``): equal ratios between successive rounds, so an annealing from
    ``0.1`` to ``10`` over 5 rounds is ``0.1, 0.32, 1, 3.2, 10``. Feed it to the
    ``temperature`` of the ``fixed`` or ``normalized`` mode.

    Args:
      round_index: ``t`` (0-based; may be traced).
      num_rounds: ``R >= 1``.
      start: ``tau_0 > 0``.
      end: ``tau_{R-1} > 0``.

    Returns:
      Scalar float32 temperature.

    Raises:
      ValueError: if ``num_rounds < 1`` or a temperature is not positive.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    if not (start > 0 and end > 0):
        raise ValueError(f"start and end must be > 0, got {start} and {end}")
    fraction = jnp.asarray(round_index, jnp.float32) / max(num_rounds - 1, 1)
    return jnp.float32(start) * jnp.exp(fraction * jnp.log(jnp.float32(end / start)))
