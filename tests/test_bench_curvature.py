"""Smoke tests of the curvature benchmark script.

The JAX side runs everywhere and is checked against an independent dense Hessian of the smoke
model (``jax.hessian`` of the flattened loss, ``numpy.linalg.eigh``), not against the
benchmark's own numbers. The PyTorch peers are checked in a test of their own that is skipped,
visibly, where torch or a peer is not installed.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import load_benchmark
from jax.flatten_util import ravel_pytree

PEERS = ("pyhessian", "hessian-eigenthings")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("curvature")


@pytest.fixture(scope="module")
def dense(bench):
    """``(eigenvalues, trace)`` of the smoke model's Hessian: ``jax.hessian``, float64 eigh."""
    cfg = bench.SMOKE
    setup = bench.mlp_setup(cfg["features"], cfg["hidden"], cfg["pairs"], seed=0)
    flat, unravel = ravel_pytree(setup["params"])
    matrix = jax.jit(jax.hessian(lambda x: setup["loss_fn"](unravel(x), setup["batch"])))(flat)
    matrix = np.asarray(matrix, np.float64)
    matrix = (matrix + matrix.T) / 2
    return np.linalg.eigvalsh(matrix), float(np.trace(matrix))


def test_smoke_benchmark_jax_side(bench, dense, tmp_path, capsys):
    eigenvalues, trace = dense
    top = eigenvalues[-1]
    out_path = tmp_path / "bench.json"

    report = bench.main(["--smoke", "--skip-peers", "--json", str(out_path)])

    assert report["mode"] == "smoke"
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu_model"]
    assert len(report["hvp"]) == 2
    for row in report["hvp"]:
        assert row["num_params"] > 0
        for name in ("grad_s", "hvp_s", "ggn_s", "loop_hvp_per_product_s"):
            assert row[name] > 0
        if row["hvp_flops"] is not None:  # an HVP does a gradient's work and more
            assert row["hvp_flops"] > row["grad_flops"]
    assert [row["order"] for row in report["lanczos_compile"]["rows"]] == [10, 100]

    # (3) without peers: 20 power iterations give a Rayleigh quotient, never above the top
    # eigenvalue; the Lanczos reference is the top eigenvalue, the Hutchinson one the trace
    (peers,) = report["peers"]
    rows = {(row["task"], row["tool"]): row for row in peers["rows"]}
    assert rows[("top eigenvalue", "mars_jax")]["estimate"] <= top * (1 + 1e-5)
    assert peers["reference"]["top_eigenvalue"] == pytest.approx(top, rel=1e-4)
    reference_trace = peers["reference"]
    assert abs(reference_trace["trace"] - trace) <= 4 * reference_trace["trace_std_error"]
    for tool in PEERS:
        assert rows[("top eigenvalue", tool)]["status"] == "skipped"

    # (4) tolerance estimators against the dense Hessian, every key, within the stated rtol
    tolerance = report["tolerance"]
    assert tolerance["reference"]["top_eigenvalue"] == pytest.approx(top, rel=1e-5)
    assert tolerance["reference"]["closed_form_trace"] == pytest.approx(trace, rel=1e-5)
    for row in tolerance["rows"]:
        exact = top if row["task"] == "top eigenvalue" else trace
        assert row["seeds"] == 3 and all(row["converged_all"])
        if row["estimator"] == "top_eigenvalues":
            # the Ritz-residual bound holds against eigh on every key
            assert row["estimate"] == pytest.approx(exact, rel=row["rtol"])
            assert max(row["rel_error_all"]) <= row["rtol"]
        elif row["task"] == "trace":  # a standard error of rtol: within 4 of them
            assert abs(row["estimate"] - exact) <= 4 * row["rtol"] * abs(exact)
    counts = {row["estimator"]: row["num_matvecs"] for row in tolerance["rows"]}
    assert counts["top_eigenvalues"] < counts["power_iteration"]

    # (5) without peers: mars_jax's answers to the accuracy, against the dense Hessian
    (accuracy,) = report["accuracy"]
    mars = {row["task"]: row for row in accuracy["rows"]}
    assert set(mars) == {"top eigenvalue", "trace"}
    assert all(row["tool"] == "mars_jax" for row in accuracy["rows"])
    assert mars["top eigenvalue"]["estimate"] == pytest.approx(top, rel=accuracy["eig_rtol"])
    assert abs(mars["trace"]["estimate"] - trace) <= 4 * accuracy["trace_rtol"] * abs(trace)
    assert 0 < mars["top eigenvalue"]["products"] <= bench.TOLERANCE["max_order"]

    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "### (1) HVP cost against a gradient" in out
    assert "### (5) Time to a measured accuracy against the peers" in out


def test_smoke_benchmark_against_peers(bench, dense, capsys):
    for module in ("torch", "pyhessian", "hessian_eigenthings"):
        pytest.importorskip(module, reason=f"{module} is in the bench extra only")
    eigenvalues, trace = dense
    top = eigenvalues[-1]

    report = bench.main(["--smoke", "--sections", "peers,accuracy"])

    assert all(report["peers_status"][name] == "ok" for name in ("torch", *PEERS))
    (peers,) = report["peers"]
    rows = {(row["task"], row["tool"]): row for row in peers["rows"]}
    for tool in PEERS:
        # same start vector, same 20 iterations: three implementations agree (float32)
        assert rows[("top eigenvalue", tool)]["rel_diff_mars_jax"] < 1e-4
        # the peer's own Rademacher probes through mars_jax's HVP give the peer's estimate
        assert rows[("trace", tool)]["rel_diff_same_probes"] < 1e-4

    (accuracy,) = report["accuracy"]
    for row in accuracy["rows"]:
        exact = top if row["task"] == "top eigenvalue" else trace
        rtol = accuracy["eig_rtol"] if row["task"] == "top eigenvalue" else accuracy["trace_rtol"]
        assert row["products"] > 0 and row["median_s"] > 0
        if row["stop"].startswith("smallest count"):  # found against the reference ...
            assert abs(row["estimate"] - exact) <= rtol * abs(exact)  # ... and holds for eigh
        elif row["stop"].startswith("probes its standard error"):  # standard error <= rtol
            assert abs(row["estimate"] - exact) <= 4 * rtol * abs(exact)
    methods = {(row["tool"], row["method"]) for row in accuracy["rows"]}
    assert ("pyhessian", "power iteration") in methods
    assert ("hessian-eigenthings", "Lanczos (full reorth.)") in methods
    assert "| pyhessian | power iteration |" in capsys.readouterr().out
