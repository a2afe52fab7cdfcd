"""`mars-jax curvature` on a saved run: which pairs each subset holds, subsampling, ensembles.

The subsets the command hands to the estimators are caught with a spy around
``saved_run.curvature_report`` and checked against the run's data rebuilt from its config and
margins recomputed from the saved parameters; the ensemble's top eigenvalue is checked against
the dense Hessian of the loss of the mean reward, built here from its own formula.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mars_jax.checkpoint import load_params, read_model_info
from mars_jax.curvature import report as report_module
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.runner import saved_run
from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")
RUN = [
    'refine.methods=["mars", "ensemble"]',
    "refine.rounds=1",
    "refine.ensemble_size=2",
    "eval.num_bootstrap=0",
    "output.plots=false",
]
SMALL_ESTIMATORS = [
    "curvature.power_iters=5",
    "curvature.lanczos_order=6",
    "curvature.trace_probes=4",
    "curvature.density_order=6",
    "curvature.density_runs=2",
]
LANCZOS = "curvature.lanczos_order=30"  # enough steps for the top eigenvalue to rel 1e-3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["run", TINY, *RUN, "--out", str(out), "--quiet"]) == 0
    config = load_config(TINY, RUN)
    data, _ = build_data(config)
    return out, config, data


@pytest.fixture
def spy(monkeypatch):
    """The subsets handed to the estimators (name -> pairs); no estimate is computed."""
    seen = {}

    def curvature_report(reward_fn, params, subsets, key, **kwargs):
        seen.update(subsets)
        return types.SimpleNamespace(to_json=dict)

    monkeypatch.setattr(saved_run, "curvature_report", curvature_report)
    return seen


def _analysed(spy, run_dir: Path, method: str, subset: str, *overrides: str):
    """The pairs `mars-jax curvature RUN_DIR --method METHOD --subset SUBSET` analyses."""
    run = saved_run.load_run(run_dir, overrides)
    saved_run.saved_model_curvature(run, method, subset=subset, pairs_file=None)
    return spy[subset]


def _report(run_dir: Path, method: str, subset: str, out: Path, *overrides: str) -> dict:
    argv = ["curvature", str(run_dir), "--method", method, "--subset", subset, "--out", str(out)]
    assert main([*argv, *SMALL_ESTIMATORS, *overrides]) == 0
    return json.loads(out.read_text())["subsets"][subset]


def _params(run_dir: Path, method: str, config):
    folder = run_dir / "models" / method
    model = mlp_reward_model(config.data.feature_dim, config.model.hidden_sizes)
    members = read_model_info(folder)["num_members"]
    like = jax.eval_shape(lambda: init_members(model, jax.random.key(0), members))
    return model, load_params(folder, like)


def _rows(chosen, rejected) -> np.ndarray:
    return np.concatenate([np.asarray(chosen), np.asarray(rejected)], axis=1)


def test_lowest_margin_subset_holds_the_k_smallest_abs_margins_of_the_saved_model(run, spy):
    run_dir, config, data = run
    k = 23
    subset = _analysed(spy, run_dir, "mars", "lowest_margin", f"curvature.lowest_k={k}")

    model, params = _params(run_dir, "mars", config)
    rewards = jax.vmap(model.reward_fn, in_axes=(0, None))
    chosen = np.asarray(rewards(params, data.base.chosen), np.float64).mean(axis=0)
    rejected = np.asarray(rewards(params, data.base.rejected), np.float64).mean(axis=0)
    margins = np.abs(chosen - rejected)
    base = _rows(data.base.chosen, data.base.rejected)
    picked = [
        int(np.flatnonzero(np.all(base == row, axis=1))[0])
        for row in _rows(subset.chosen, subset.rejected)
    ]
    assert len(set(picked)) == k
    others = np.setdiff1d(np.arange(margins.size), picked)
    # float32 rewards: a pair within rounding of the k-th margin may fall on either side.
    assert margins[picked].max() <= margins[others].min() + 1e-5


@pytest.mark.parametrize("subset", ["heldout", "pool"])
def test_heldout_and_pool_subsets_are_those_pairs_of_the_run(run, spy, subset):
    run_dir, _, data = run
    got = _analysed(spy, run_dir, "mars", subset)
    pairs = data.heldout if subset == "heldout" else data.pool
    np.testing.assert_array_equal(
        _rows(got.chosen, got.rejected), _rows(pairs.chosen, pairs.rejected)
    )
    np.testing.assert_array_equal(np.asarray(got.weight), np.ones(pairs.chosen.shape[0]))


def test_max_pairs_subsamples_distinct_pairs_of_the_subset(run, tmp_path, monkeypatch):
    run_dir, _, data = run
    samples = []
    real = report_module.subsample

    def subsample(pairs, key, *, max_pairs):
        samples.append(real(pairs, key, max_pairs=max_pairs))
        return samples[-1]

    monkeypatch.setattr(report_module, "subsample", subsample)
    # The ensemble test's estimators on as many pairs as the base set: one compiled program.
    size = data.base.chosen.shape[0]
    assert size < data.heldout.chosen.shape[0]
    max_pairs = f"curvature.max_pairs={size}"
    entry = _report(run_dir, "ensemble", "heldout", tmp_path / "r.json", max_pairs, LANCZOS)
    assert entry["num_pairs"] == size and entry["subsampled"]
    assert entry["hessian"]["top_eigenvalue"]["eigenvalue"] > 0
    heldout = _rows(data.heldout.chosen, data.heldout.rejected)
    (sample,) = samples
    rows = _rows(sample.chosen, sample.rejected)
    assert rows.shape == (size, heldout.shape[1])
    found = [int(np.flatnonzero(np.all(heldout == row, axis=1))[0]) for row in rows]
    assert len(set(found)) == size


def test_ensemble_curvature_is_that_of_the_mean_reward_over_all_heads(run, tmp_path):
    run_dir, config, data = run
    entry = _report(run_dir, "ensemble", "base", tmp_path / "r.json", LANCZOS)
    model, params = _params(run_dir, "ensemble", config)
    assert jax.tree.leaves(params)[0].shape[0] == 2
    flat, unravel = ravel_pytree(params)

    def loss(vector):
        rewards = jax.vmap(model.reward_fn, in_axes=(0, None))
        members = unravel(vector)
        margins = rewards(members, data.base.chosen).mean(0) - rewards(
            members, data.base.rejected
        ).mean(0)
        return -jnp.mean(jax.nn.log_sigmoid(margins))

    with jax.enable_x64(True):
        hessian = np.asarray(jax.hessian(loss)(jnp.asarray(flat, jnp.float64)))
    eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    assert entry["num_pairs"] == data.base.chosen.shape[0]
    top = entry["hessian"]["top_eigenvalues"]["eigenvalues"][0]
    assert top == pytest.approx(eigenvalues[-1], rel=1e-3)
