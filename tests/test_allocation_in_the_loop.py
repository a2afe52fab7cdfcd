"""Issue 14 in the round loop: uniform_global, temperature modes, diagnostics, 'untestable'."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.allocation import allocate, largest_remainder_budgets, pool_size_weights
from mars_jax.models.heads import init_members
from mars_jax.refine import RefineSettings
from mars_jax.runner.config import load_config
from mars_jax.runner.console import untestable_lines
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_refiners, build_trainer

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.num_base_pairs=60",
    "data.num_heldout_pairs=80",
    "data.paraphrases=2",
    "data.feature_dim=4",
    "model.hidden_sizes=[8]",
    "train.batch_size=16",
    "refine.budget=120",
    "eval.num_bootstrap=0",
]


def _report_module():
    spec = importlib.util.spec_from_file_location("make_report", REPO / "benchmarks/make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uniform_global_draws_budget_distinct_rows_of_the_whole_pool():
    offsets = jnp.array([0, 3, 3, 10, 12, 20], jnp.int32)  # a base pair without pool rows
    margins = jnp.zeros((1, 5))
    # One compiled program for the 20 keys (eager dispatch would re-run it op by op).
    draw = jax.jit(
        functools.partial(allocate, method="uniform_global", num_draws=9, max_per_source=8)
    )
    for seed in range(20):
        result = draw(margins, offsets, jax.random.key(seed))
        rows = np.asarray(result.draws.indices)
        assert len(set(rows.tolist())) == 9  # distinct rows, without replacement
        counts = np.bincount(
            np.searchsorted(np.asarray(offsets), rows, side="right") - 1, minlength=5
        )
        np.testing.assert_array_equal(counts, np.asarray(result.budgets))
        assert int(result.budgets[1]) == 0


def test_reference_budgets_are_the_stratified_uniform_ones_and_tv_is_zero_for_uniform():
    offsets = jnp.array([0, 4, 8, 12, 16], jnp.int32)
    margins = jax.random.normal(jax.random.key(0), (1, 4))
    key = jax.random.key(3)
    uniform = allocate(margins, offsets, key, method="uniform", num_draws=10, max_per_source=4)
    np.testing.assert_array_equal(uniform.budgets, uniform.reference_budgets)
    budget_key, _ = jax.random.split(key)
    expected = largest_remainder_budgets(pool_size_weights(offsets), budget=10, key=budget_key)
    np.testing.assert_array_equal(uniform.reference_budgets, expected)


def test_paper_temperature_gives_uniform_budgets_and_target_ess_does_not():
    offsets = jnp.arange(0, 4 * 200 + 1, 4, dtype=jnp.int32)
    margins = 0.5 * jax.random.normal(jax.random.key(1), (1, 200))
    key = jax.random.key(2)
    args = {"method": "mars", "num_draws": 400, "max_per_source": 4}
    paper = jax.jit(functools.partial(allocate, temperature=0.1, **args))(margins, offsets, key)
    np.testing.assert_array_equal(paper.budgets, paper.reference_budgets)
    solved = jax.jit(
        functools.partial(allocate, temperature_mode="target_ess", ess_fraction=0.5, **args)
    )(margins, offsets, key)
    assert not np.array_equal(solved.budgets, solved.reference_budgets)
    share = np.asarray(solved.budgets) / 400
    assert 0.35 * 200 < 1 / np.sum(share**2) < 0.65 * 200  # near the weights' ESS of N / 2
    assert float(solved.temperature) > 0


def test_curriculum_moves_tau_geometrically_over_the_rounds():
    settings = RefineSettings(rounds=3, temperature=0.1, final_temperature=10.0)
    taus = [settings.temperature_of("mars", index) for index in range(3)]
    np.testing.assert_allclose(taus, [0.1, 1.0, 10.0], rtol=1e-5)
    assert settings.temperature_of("uniform", 2) == 1.0
    assert RefineSettings(temperature=0.3).temperature_of("mars", 4) == 0.3


@pytest.mark.parametrize(("mode", "expect_uniform"), [("fixed", True), ("target_ess", False)])
def test_round_summaries_record_the_allocation_distance(mode: str, expect_uniform: bool):
    config = load_config(
        None, [*SMALL, f"refine.temperature_mode={mode}", 'refine.methods=["uniform", "mars"]']
    )
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    for method, refiner in build_refiners(config, trainer).items():
        key = jax.random.key(0)
        state = refiner.init(key, init_members(model, key, 1), data)
        _, summary = refiner.run_round(state, data)
        distance = summary.allocation["total_variation"]
        if method == "uniform" or expect_uniform:
            assert distance == 0.0
        else:
            assert distance > 0.05
        stats = summary.margin_statistics
        assert stats["abs_q10"] <= stats["abs_median"] <= stats["abs_q90"]
        assert stats["mean"] == pytest.approx(summary.margin_mean, abs=1e-6)


def _summary(distances: dict[str, list[float]]) -> dict:
    return {
        "methods": {
            method: {
                "budget_spent": 10 if method != "none" else 0,
                "allocation_distance_per_round": values,
            }
            for method, values in distances.items()
        }
    }


def test_untestable_fires_on_identical_budgets_only():
    assert untestable_lines(_summary({"uniform": [0, 0], "mars": [0.0, 0.0]}))
    assert not untestable_lines(_summary({"uniform": [0, 0], "mars": [0.0, 0.2]}))
    assert not untestable_lines(_summary({"none": [0, 0], "uniform_global": [0, 0]}))
    report = _report_module()

    def cell(*distances):
        methods = {
            "mars": {"allocation_per_round": [{"total_variation": d} for d in distances]},
            "uniform": {"allocation_per_round": [{"total_variation": 0.0}]},
        }
        return {0: {"methods": methods}, 1: {"methods": methods}}

    assert report.untestable(cell(0.0, 0.0), "mars")
    assert not report.untestable(cell(0.0, 0.01), "mars")
    assert report.untestable_reason(cell(0.0, 0.0)) == report.UNTESTABLE


def test_untestable_fires_when_the_rounds_left_both_models_unchanged():
    report = _report_module()

    def cell(mars_auc):
        def method(distance, auc):
            return {
                "allocation_per_round": [{"total_variation": distance}],
                "accuracy_per_round": [0.55, 0.55],
                "auc": auc,
                "snr": 0.1,
                "ece": 0.05,
            }

        methods = {"mars": method(0.4, mars_auc), "uniform": method(0.0, 0.56)}
        return {seed: {"methods": methods} for seed in (0, 1)}

    # MARS allocated differently (TV 0.4) yet ended with uniform's model in every seed.
    assert report.untestable_reason(cell(0.56)) == report.UNMOVED
    # One metric apart: the models differed, so the comparison stands.
    assert report.untestable_reason(cell(0.5601)) is None


def test_informative_regime_reaches_the_run_data():
    _, info = build_data(load_config(None, SMALL))
    assert info["regime"] == "informative" and info["num_hard_pairs"] == 12
    _, noisy = build_data(load_config(None, [*SMALL, "data.regime=noisy"]))
    assert "num_hard_pairs" not in noisy
