"""The MARS round and its options, on a small synthetic suite."""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from mars_jax.allocation import allocate
from mars_jax.losses import bradley_terry_loss
from mars_jax.models.heads import init_members
from mars_jax.refine import Refiner, margin_distance
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_refiners, build_trainer
from mars_jax.train import NonFiniteTrainingError

SMALL = [
    "data.num_base_pairs=300",
    "data.num_heldout_pairs=400",
    "data.paraphrases=3",
    "data.feature_dim=8",
    "model.hidden_sizes=[16]",
    "train.batch_size=32",
    "refine.budget=300",
    "eval.num_bootstrap=50",
]


@functools.cache
def small_setup(*overrides: str):
    config = load_config(None, [*SMALL, *overrides])
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    return config, data, model, trainer


def _refiner(config, trainer, method: str) -> Refiner:
    """The run's refiner of ``method`` (whether or not the config lists it)."""
    return build_refiners(config, trainer, methods=(method,))[method]


def start(method: str, *overrides: str, seed: int = 0):
    config, data, model, trainer = small_setup(*overrides)
    refiner = _refiner(config, trainer, method)
    params = init_members(model, jax.random.key(seed), refiner.num_members)
    return refiner, refiner.init(jax.random.key(seed + 1), params, data), data


def allocate_now(refiner: Refiner, state, data, draw_count: int, priority=None):
    return allocate(
        jnp.asarray(state.base_margins),
        data.pool.offsets,
        jax.random.key(0),
        method=refiner.method,
        num_draws=draw_count,
        max_per_source=int(np.diff(np.asarray(data.pool.offsets)).max()),
        temperature=refiner.settings.temperature_of(refiner.method),
        priority=priority,
    )


def base_loss(refiner: Refiner, state, data) -> float:
    params = jax.tree.map(lambda leaf: leaf[0], state.train.params)
    sums = refiner.trainer.eval_step(params, data.base)
    margins = refiner.trainer.member_margins(
        state.train.params, data.base.chosen, data.base.rejected
    )
    assert float(sums.loss_sum / sums.count) == pytest.approx(
        float(jnp.mean(bradley_terry_loss(margins))), rel=1e-5
    )
    assert float(sums.correct / sums.count) == pytest.approx(float(jnp.mean(margins > 0)))
    return float(sums.loss_sum / sums.count)


@pytest.mark.parametrize("method", ["mars", "uniform"])
def test_a_round_lowers_the_base_loss(method):
    refiner, state, data = start(method)
    before = base_loss(refiner, state, data)
    state, summary = refiner.run_round(state, data)
    assert base_loss(refiner, state, data) < before
    assert summary.synthetic_drawn == 300
    assert summary.num_train_pairs == 600
    assert set(summary.timings) == {"score_pool", "allocate", "train", "score", "evaluate"}


def test_same_seed_same_metrics_and_different_seeds_differ():
    def heldout(seed):
        refiner, state, data = start("mars", seed=seed)
        return refiner.run_round(state, data)[1].heldout

    first, again, other = heldout(0), heldout(0), heldout(5)
    assert first == again
    assert first != other


def test_none_draws_nothing_and_adaboost_reweights_without_synthetic_pairs():
    for method in ("none", "adaboost"):
        refiner, state, data = start(method)
        state, summary = refiner.run_round(state, data)
        assert summary.synthetic_drawn == 0
        assert state.budget_spent == 0
        assert summary.num_train_pairs == 300
    weights = allocate_now(refiner, state, data, 0).base_weights
    assert float(jnp.std(weights)) > 0
    assert float(jnp.mean(weights)) == pytest.approx(1.0, rel=1e-5)


def test_ensemble_trains_stacked_heads_and_draws_where_they_disagree():
    refiner, state, data = start("ensemble", "refine.ensemble_size=3")
    assert state.base_margins.shape == (3, 300)
    state, summary = refiner.run_round(state, data)
    assert summary.synthetic_drawn == 300
    assert jax.tree.leaves(state.train.params)[0].shape[0] == 3


def test_mars_budget_follows_small_margins():
    refiner, state, data = start("mars", "refine.temperature=2.0")
    budgets = np.asarray(allocate_now(refiner, state, data, 300).budgets)
    margins = np.abs(state.base_margins.mean(axis=0))
    assert budgets.sum() == 300
    low, high = margins < np.quantile(margins, 0.25), margins > np.quantile(margins, 0.75)
    assert budgets[low].mean() > budgets[high].mean()


def test_west_of_n_draws_the_highest_margin_pool_pairs():
    refiner, state, data = start("west_of_n")
    pool = data.pool
    priority = refiner.trainer.member_margins(state.train.params, pool.chosen, pool.rejected)[0]
    draws = allocate_now(refiner, state, data, 300, priority=priority).draws
    priority, offsets = np.asarray(priority), np.asarray(pool.offsets)
    indices, source = np.asarray(draws.indices), np.asarray(draws.source)
    for i in range(5):
        rows = indices[source == i]
        own = priority[offsets[i] : offsets[i + 1]]
        expected = np.sort(own)[::-1][: rows.size]
        np.testing.assert_allclose(np.sort(priority[rows])[::-1], expected)


def test_cumulative_set_grows_and_per_round_set_is_replaced():
    refiner, state, data = start("uniform", "refine.synthetic_set=cumulative")
    state, first = refiner.run_round(state, data)
    state, second = refiner.run_round(state, data)
    assert (first.num_train_pairs, second.num_train_pairs) == (600, 900)
    assert state.synthetic_rows.size == 600

    refiner, state, data = start("uniform")
    state, _ = refiner.run_round(state, data)
    state, second = refiner.run_round(state, data)
    assert second.num_train_pairs == 600
    assert state.budget_spent == 600


def test_total_budget_caps_the_draws_and_stops_the_loop():
    refiner, state, data = start("mars", "refine.total_budget=450")
    state, first = refiner.run_round(state, data)
    assert refiner.stop_reason(state) is None
    state, second = refiner.run_round(state, data)
    assert (first.synthetic_drawn, second.synthetic_drawn) == (300, 150)
    assert "budget" in refiner.stop_reason(state)


@pytest.mark.parametrize("kind", ["wasserstein", "ks"])
def test_stable_margins_stop_the_loop_just_below_the_tolerance(kind):
    refiner, state, data = start("none", f"refine.stop_distance={kind!r}")
    state, first = refiner.run_round(state, data)
    assert first.distance is None and refiner.stop_reason(state) is None
    previous = np.asarray(state.base_margins).mean(axis=0)
    state, second = refiner.run_round(state, data)
    current = np.asarray(state.base_margins).mean(axis=0)
    if kind == "wasserstein":
        expected = float(stats.wasserstein_distance(previous, current))
    else:
        expected = float(stats.ks_2samp(previous, current).statistic)
    assert expected > 0
    assert second.distance == pytest.approx(expected, rel=1e-5)

    def stops(tolerance: float) -> str | None:
        config = load_config(
            None, [*SMALL, f"refine.stop_distance={kind!r}", f"refine.stop_tolerance={tolerance!r}"]
        )
        _, _, _, trainer = small_setup()
        return _refiner(config, trainer, "none").stop_reason(state)

    assert stops(expected * 1.001) is not None and "stable" in stops(expected * 1.001)
    assert stops(expected * 0.999) is None


def test_no_warmup_starts_from_the_initial_parameters():
    config, data, model, trainer = small_setup("train.warmup_epochs=0")
    refiner = _refiner(config, trainer, "mars")
    params = init_members(model, jax.random.key(0), 1)
    state = refiner.init(jax.random.key(1), params, data)
    for got, want in zip(jax.tree.leaves(state.train.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_margin_distances_match_closed_forms():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=500)
    assert margin_distance(sample, sample + 0.7, kind="wasserstein") == pytest.approx(0.7)
    assert margin_distance(sample, rng.permutation(sample), kind="ks") == 0.0
    assert margin_distance(sample, sample + 100.0, kind="ks") == 1.0
    shifted = margin_distance(sample, sample + 0.1, kind="ks")
    assert 0.0 < shifted < 0.2


def test_lowest_margin_subset_holds_the_k_smallest_abs_margin_pairs():
    refiner, state, data = start("mars")
    seen = {}

    def spy(params, subsets, key):
        seen.update(subsets)
        return types.SimpleNamespace(to_json=dict)

    k = 17
    spied = dataclasses.replace(refiner, curvature=spy, curvature_lowest_k=k)
    new_state, _ = spied.run_round(state, data)
    margins = np.abs(np.asarray(new_state.base_margins).mean(axis=0))
    # A pair is its (chosen, rejected) rows; one response may be in several pairs.
    rows = np.concatenate([np.asarray(data.base.chosen), np.asarray(data.base.rejected)], axis=1)
    subset = seen["lowest_margin"]
    picked = [
        int(np.flatnonzero(np.all(rows == row, axis=1))[0])
        for row in np.concatenate([np.asarray(subset.chosen), np.asarray(subset.rejected)], axis=1)
    ]
    assert len(set(picked)) == k
    others = np.setdiff1d(np.arange(margins.size), picked)
    assert margins[picked].max() <= margins[others].min()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_stops_the_warm_up_with_one_error(bad):
    config, data, model, trainer = small_setup()
    refiner = _refiner(config, trainer, "mars")
    assert refiner.fit.warmup_epochs >= 1
    chosen = np.array(data.base.chosen)
    chosen[5] = bad
    poisoned = data._replace(base=data.base._replace(chosen=chosen))
    params = init_members(model, jax.random.key(0), 1)
    with pytest.raises(NonFiniteTrainingError, match=r"warm-up.*step \d+ of \d+.*(nan|inf)"):
        refiner.init(jax.random.key(1), params, poisoned)


def test_reset_optimizer_false_keeps_adams_moments_across_rounds():
    counts = {}
    for reset in (True, False):
        refiner, state, data = start("uniform", f"refine.reset_optimizer={str(reset).lower()}")
        warm = int(np.max(optax.tree_utils.tree_get(state.train.opt_state, "count")))
        new_state, _ = refiner.run_round(state, data)
        counts[reset] = int(np.max(optax.tree_utils.tree_get(new_state.train.opt_state, "count")))
    assert warm > 0 and counts[True] > 0
    # Kept: Adam's step count goes on from the warm-up's; reset: it restarts at the round.
    assert counts[False] == warm + counts[True]
