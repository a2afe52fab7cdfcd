"""Sharding over a device mesh: 8 simulated CPU devices against one device.

XLA reads ``--xla_force_host_platform_device_count`` when JAX starts its backend, and this
process has started it already, so the sharded checks run in a subprocess
(``tests/parallel_checks.py``), which computes the single-device results in the same
process and prints the differences as JSON. Tolerances are float32 reduction-order
differences (sums split over 8 shards add in another order), with a wide safety margin
over what was measured (in comments).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from mars_jax.errors import MarsError
from mars_jax.models.heads import init_members
from mars_jax.parallel import (
    MeshSettings,
    Placement,
    build_mesh,
    host_local_batch,
    host_rows,
    initialize_distributed,
    pad_rows,
    param_spec,
    placement_for,
)
from mars_jax.runner.cli import main
from mars_jax.runner.config import ConfigError, load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_refiners, build_trainer
from mars_jax.settings import settings_from

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def sharded_results() -> dict:
    xla_flags = os.environ.get("XLA_FLAGS", "")  # the test run's, with 8 host devices added
    env = {
        **os.environ,
        "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "parallel_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def sharded() -> dict:
    return sharded_results()


@pytest.mark.parametrize("mesh", ["8x1", "4x2"])
def test_padded_batch_gives_the_unpadded_loss_and_gradients(sharded, mesh):
    # 13 pairs on 8 devices: padded to 16 with weight-0 rows, split over the devices.
    checks = sharded["meshes"][mesh]["operators"]
    assert sharded["devices"] == 8
    assert checks["padded_rows"] == 16 and checks["padded_weight_zero"]
    assert checks["batch_sharded"]
    assert checks["loss"] <= 1e-6  # measured 0
    assert checks["grads"] <= 1e-6  # measured 6e-8


@pytest.mark.parametrize("mesh", ["8x1", "4x2"])
def test_hessian_vector_product_on_sharded_params(sharded, mesh):
    checks = sharded["meshes"][mesh]["operators"]
    assert checks["hvp_rel"] <= 1e-5  # measured 1.4e-7
    assert checks["params_sharded_as_rule"] and checks["hvp_sharded_like_params"]
    # fsdp = 2 splits the kernels and the hidden bias (16); fsdp = 1 replicates everything.
    assert (checks["fsdp_split_leaves"] > 0) == mesh.endswith("x2")


def test_curvature_estimators_match_on_a_2d_mesh(sharded):
    # Same key, so the same probes: random bits do not depend on the sharding.
    relative = sharded["meshes"]["4x2"]["operators"]["curvature_rel"]
    assert set(relative) == {"pairs/power", "pairs/lanczos", "pairs/trace"}
    assert max(relative.values()) <= 1e-4  # measured 2.4e-7


def test_round_loop_matches_on_a_2d_mesh(sharded):
    checks = sharded["meshes"]["4x2"]["rounds"]
    # Warm-up + one West-of-N round (pool scored sharded) with 13-pair batches.
    assert checks["warmup_margins"] <= 1e-5  # measured 2.4e-7
    assert checks["margins"] <= 1e-5 and checks["margins_replicated"]
    assert checks["train_loss"] <= 1e-6
    assert checks["params_sharded_as_rule"]
    # The output bias cancels in every margin, so its gradient is pure rounding noise that
    # Adam scales up to steps of about the learning rate; every other leaf matches closely.
    params = checks["params"]
    assert max(v for k, v in params.items() if k != "output/bias") <= 1e-5  # measured 3e-8
    heldout = checks["heldout"]
    assert heldout["accuracy"] == 0 and heldout["tie_rate"] == 0
    assert heldout["auc"] <= 1e-4  # 150 x 150 comparisons; measured 2.2e-5 (a tie)
    assert max(v for k, v in heldout.items() if k != "auc") <= 1e-5


def test_mars_allocation_is_identical(sharded):
    checks = sharded["meshes"]["4x2"]["rounds"]
    assert checks["budgets_equal"] and checks["budgets_sum"] == 40


def test_cli_run_on_8_devices_matches_one_device(sharded):
    runs = sharded["cli"]
    assert runs["false"]["status"] == runs["true"]["status"] == 0
    assert runs["false"]["mesh"] is None
    assert runs["true"]["mesh"] == {"data": 8, "fsdp": 1}
    one, eight = runs["false"]["accuracy"]["mars"], runs["true"]["accuracy"]["mars"]
    assert len(one) == 2
    # At most one of 150 held-out pairs may flip sign; measured identical.
    np.testing.assert_allclose(eight, one, atol=1 / 150 + 1e-6)


def test_one_device_is_the_unsharded_path():
    # Also right where more devices exist (e.g. with XLA_FLAGS forcing 8 host devices).
    config = load_config(None, ["parallel.enabled=true"])
    placement = placement_for(settings_from(MeshSettings, config.parallel))
    if jax.device_count() == 1:
        assert placement is None
    else:
        assert placement.mesh.size == jax.device_count()
    assert placement_for(MeshSettings(enabled=False)) is None


def test_one_device_mesh_gives_identical_results():
    config = load_config(
        None,
        [
            "data.num_base_pairs=50",
            "data.num_heldout_pairs=60",
            "data.paraphrases=2",
            "data.feature_dim=4",
            "model.hidden_sizes=[8]",
            "train.batch_size=16",
            "refine.budget=20",
            "eval.num_bootstrap=10",
        ],
    )
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    placement = Placement(build_mesh(MeshSettings(enabled=True), jax.devices()[:1]))
    key = jax.random.key(0)
    results = []
    for where in (None, placement):
        refiner = build_refiners(config, trainer, where)["mars"]
        state = refiner.init(key, init_members(model, key, 1), data)
        results.append(refiner.run_round(state, data))
    (state0, summary0), (state1, summary1) = results
    assert summary0.heldout == summary1.heldout
    np.testing.assert_array_equal(state0.base_margins, state1.base_margins)
    leaves0, leaves1 = jax.tree.leaves(state0.train.params), jax.tree.leaves(state1.train.params)
    for a, b in zip(leaves0, leaves1, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("shape", "fsdp", "spec"),
    [
        ((16, 8), 1, PartitionSpec()),
        ((16, 8), 2, PartitionSpec("fsdp")),
        ((6, 16), 4, PartitionSpec(None, "fsdp")),
        ((8, 8), 2, PartitionSpec(None, "fsdp")),
        ((3, 5), 2, PartitionSpec()),
        ((), 2, PartitionSpec()),
    ],
)
def test_param_spec_splits_the_largest_divisible_dimension(shape, fsdp, spec):
    assert param_spec(shape, fsdp) == spec


def test_pad_rows_appends_zeros_to_a_multiple():
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(pad_rows(x, 4, axis=1), [[0, 1, 2, 0], [3, 4, 5, 0]])
    assert pad_rows(x, 2) is x


def test_mesh_sizes_must_match_the_devices():
    one = jax.devices()[:1]
    with pytest.raises(MarsError, match=r"parallel\.fsdp = 2 does not divide the 1 devices"):
        build_mesh(MeshSettings(enabled=True, fsdp=2), one)
    with pytest.raises(
        MarsError, match=r"parallel\.data \* parallel\.fsdp = 3 \* 1 must equal the 1"
    ):
        build_mesh(MeshSettings(enabled=True, data=3), one)
    assert build_mesh(MeshSettings(enabled=True), one).shape == {"data": 1, "fsdp": 1}
    with pytest.raises(ConfigError, match=r"parallel\.fsdp"):
        load_config(None, ["parallel.fsdp=0"])


def test_host_local_batch_on_one_process():
    mesh = build_mesh(MeshSettings(enabled=True), jax.devices()[:1])
    rows = host_rows(6, mesh)
    assert rows == slice(0, 6)
    local = {"x": np.arange(12.0).reshape(6, 2)[rows]}
    batch = host_local_batch(local, mesh, 6)
    np.testing.assert_array_equal(batch["x"], jnp.arange(12.0).reshape(6, 2))


def test_distributed_without_a_cluster_is_one_error_line(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    with pytest.raises(MarsError, match=r"^parallel\.distributed = true, but .*[^\n]$"):
        initialize_distributed(MeshSettings(enabled=True, distributed=True))


def test_cli_bad_mesh_is_one_line_before_any_output(tmp_path, capsys):
    out = tmp_path / "run"
    fsdp = jax.device_count() + 1  # divides no device count
    argv = ["run", "parallel.enabled=true", f"parallel.fsdp={fsdp}", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"parallel.fsdp = {fsdp}" in error
    assert not out.exists()
