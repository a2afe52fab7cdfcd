"""Sharded against single-device results, printed as JSON (run by tests/test_parallel.py).

Run in a fresh process with simulated devices, since XLA reads the flag when JAX starts::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_checks.py

For each mesh (``data x fsdp`` = 8 x 1 and 4 x 2) it runs the same computations without a
placement (one device) and with one, and reports the largest differences; the test
asserts the tolerances. Sizes are chosen so nothing divides the 8 devices: 13-pair
batches, 100 base pairs, 150 held-out pairs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.allocation import allocate
from mars_jax.curvature.operators import hessian_vector_product
from mars_jax.curvature.report import CurvatureReporter, CurvatureSettings, curvature_report
from mars_jax.curvature.trees import tree_random_like
from mars_jax.losses import pairwise_loss, pairwise_loss_fn
from mars_jax.models.heads import init_members
from mars_jax.parallel import MeshSettings, Placement, build_mesh, param_spec
from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_refiners, build_trainer
from mars_jax.types import PairBatch, tree_take

OVERRIDES = [
    "data.num_base_pairs=100",
    "data.num_heldout_pairs=150",
    "data.paraphrases=2",
    "data.feature_dim=8",
    "model.hidden_sizes=[16]",
    "train.batch_size=13",
    "refine.budget=40",
    "eval.num_bootstrap=20",
    "curvature.power_iters=30",
    "curvature.lanczos_order=12",
    "curvature.trace_probes=8",
    "curvature.density_order=4",
    "curvature.density_runs=1",
    "curvature.lowest_k=20",
]


def max_diff(a, b) -> float:
    """Largest absolute difference over the leaves of two pytrees."""
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def specs_match(placement: Placement, tree) -> bool:
    """Whether every leaf is laid out as the placement's parameter rule says."""
    fsdp = placement.mesh.shape["fsdp"]
    return all(
        leaf.sharding.spec == param_spec(leaf.shape, fsdp)
        or (leaf.sharding.is_fully_replicated and param_spec(leaf.shape, fsdp) == ())
        for leaf in jax.tree.leaves(tree)
    )


def curvature_numbers(report: dict) -> dict[str, float]:
    """Top eigenvalue (power, Lanczos) and trace of each subset's Hessian."""
    numbers = {}
    for name, subset in report["subsets"].items():
        hessian = subset["hessian"]
        numbers[f"{name}/power"] = hessian["top_eigenvalue"]["eigenvalue"]
        numbers[f"{name}/lanczos"] = hessian["top_eigenvalues"]["eigenvalues"][0]
        numbers[f"{name}/trace"] = hessian["trace"]["estimate"]
    return numbers


def round_checks(placement: Placement) -> dict:
    """Warm-up, then one West-of-N round (scores the pool): train, score, evaluate.

    The MARS allocation is computed from both runs' warm-up margins.
    """
    config = load_config(None, OVERRIDES)
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    key = jax.random.key(0)
    results = []
    for where in (None, placement):
        refiner = build_refiners(config, trainer, where, methods=("west_of_n",))["west_of_n"]
        state = refiner.init(key, init_members(model, key, 1), data)
        warm_margins = state.base_margins
        state, summary = refiner.run_round(state, data)
        results.append((warm_margins, state, summary))
    (warm0, state0, summary0), (warm1, state1, summary1) = results
    mars = jax.jit(
        lambda m, o, k: allocate(
            m,
            o,
            k,
            method="mars",
            num_draws=40,
            max_per_source=4,
            temperature=config.refine.temperature,
        )
    )
    budgets = [np.asarray(mars(m, data.pool.offsets, key).budgets) for m in (warm0, warm1)]
    params0, params1 = state0.train.params, state1.train.params
    return {
        "params": {
            "/".join(str(k.key) for k in path): max_diff(leaf, leaf1)
            for (path, leaf), leaf1 in zip(
                jax.tree_util.tree_leaves_with_path(params0), jax.tree.leaves(params1), strict=True
            )
        },
        "params_sharded_as_rule": specs_match(placement, params1),
        "warmup_margins": max_diff(warm0, warm1),
        "margins": max_diff(state0.base_margins, state1.base_margins),
        "margins_replicated": bool(state1.base_margins.sharding.is_fully_replicated),
        "heldout": {k: abs(summary0.heldout[k] - summary1.heldout[k]) for k in summary0.heldout},
        "train_loss": abs(summary0.train_loss - summary1.train_loss),
        "budgets_equal": bool(np.array_equal(budgets[0], budgets[1])),
        "budgets_sum": int(budgets[0].sum()),
    }


def operator_checks(placement: Placement, *, curvature: bool) -> dict:
    """Padding/masking of a 13-pair batch, a Hessian-vector product on sharded params and,
    if ``curvature``, the curvature estimators with and without the placement."""
    config = load_config(None, OVERRIDES)
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    params = model.init(jax.random.key(1))
    rows = np.arange(13)
    pairs = PairBatch(
        tree_take(data.base.chosen, rows),
        tree_take(data.base.rejected, rows),
        jnp.linspace(0.5, 1.5, 13),
    )

    def loss(p, batch):
        return pairwise_loss(p, batch, reward_fn=trainer.reward_fn, loss=trainer.loss)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    loss0, grads0 = value_and_grad(params, pairs)
    placed = placement.put_pairs(pairs)
    placed_params = placement.put_params(params)
    loss1, grads1 = value_and_grad(placed_params, placed)

    hvp = jax.jit(hessian_vector_product(pairwise_loss_fn(trainer.reward_fn)))
    vector = tree_random_like(jax.random.key(2), params, kind="normal")
    product0 = hvp(params, pairs, vector)
    product1 = hvp(placed_params, placed, placement.put_params(vector))
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(product0))
    out = {
        "padded_rows": int(placed.weight.shape[0]),
        "padded_weight_zero": bool(np.all(np.asarray(placed.weight)[13:] == 0)),
        "batch_sharded": not placed.weight.sharding.is_fully_replicated,
        "loss": abs(float(loss0) - float(loss1)),
        "grads": max_diff(grads0, grads1),
        "hvp_rel": max_diff(product0, product1) / scale,
        "params_sharded_as_rule": specs_match(placement, placed_params),
        "hvp_sharded_like_params": specs_match(placement, product1),
        "fsdp_split_leaves": sum(
            not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed_params)
        ),
    }
    if not curvature:
        return out
    subsets = {"pairs": PairBatch(data.base.chosen, data.base.rejected, data.base.weight)}
    settings = CurvatureSettings(
        power_iters=30, lanczos_order=12, trace_probes=8, density_order=4, density_runs=1
    )
    report0 = curvature_report(
        trainer.reward_fn, params, subsets, jax.random.key(3), settings=settings
    ).to_json()
    sharded = CurvatureReporter(
        trainer.reward_fn,
        settings,
        place_params=placement.put_params,
        place_pairs=placement.put_pairs,
        constrain=placement.constrain_params,
    )
    report1 = sharded(params, subsets, jax.random.key(3)).to_json()
    curvature0, curvature1 = curvature_numbers(report0), curvature_numbers(report1)
    out["curvature_rel"] = {
        k: abs(curvature0[k] - curvature1[k]) / abs(curvature0[k]) for k in curvature0
    }
    return out


def cli_checks(workdir: Path) -> dict:
    """Two rounds of ``mars-jax run`` with and without ``parallel.enabled=true``.

    The sizes are those of :func:`round_checks`, so the single-device run reuses its
    compiled programs from the on-disk cache.
    """
    accuracies = {}
    for enabled in ("false", "true"):
        out = workdir / enabled
        status = main(
            [
                "run",
                *OVERRIDES,
                "refine.rounds=2",
                f"parallel.enabled={enabled}",
                'refine.methods=["mars"]',
                "output.plots=false",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        summary = json.loads((out / "summary.json").read_text())
        accuracies[enabled] = {
            "status": status,
            "mesh": summary["platform"]["mesh"],
            "accuracy": {m: r["accuracy_per_round"] for m, r in summary["methods"].items()},
        }
    return accuracies


def run() -> dict:
    results: dict = {"devices": jax.device_count(), "meshes": {}, "seconds": {}}
    # 8 x 1 runs the round loop through the CLI below; 4 x 2 (fsdp) runs every check.
    for data_size, fsdp in ((8, 1), (4, 2)):
        name = f"{data_size}x{fsdp}"
        placement = Placement(build_mesh(MeshSettings(enabled=True, data=data_size, fsdp=fsdp)))
        started = time.perf_counter()
        results["meshes"][name] = {"operators": operator_checks(placement, curvature=fsdp > 1)}
        if fsdp > 1:
            results["meshes"][name]["rounds"] = round_checks(placement)
        results["seconds"][name] = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        results["cli"] = cli_checks(Path(workdir))
    results["seconds"]["cli"] = time.perf_counter() - started
    return results


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=1)
