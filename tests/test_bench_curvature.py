"""Smoke test of the curvature benchmark script (runs with or without the PyTorch peers)."""

from __future__ import annotations

import json

from conftest import load_benchmark

PEERS = ("pyhessian", "hessian-eigenthings")


def test_smoke_benchmark_reports_positive_numbers(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("curvature").main(["--smoke", "--json", str(out_path)])

    assert report["mode"] == "smoke"
    assert len(report["hvp"]) == 2
    for row in report["hvp"]:
        assert row["num_params"] > 0
        for name in ("grad_s", "hvp_s", "ggn_s", "hvp_over_grad", "ggn_over_grad"):
            assert row[name] > 0
        assert row["hvp_over_grad_min"] <= row["hvp_over_grad"] <= row["hvp_over_grad_max"]
        assert row["loop_hvp_per_product_s"] > 0
        assert row["linearized_per_product_s"] > 0
        assert row["met"] == (row["hvp_over_grad"] <= row["target"])

    lanczos = report["lanczos_compile"]
    assert [row["order"] for row in lanczos["rows"]] == [10, 50, 100]
    for row in lanczos["rows"]:
        assert row["compile_min_s"] <= row["compile_s"] <= row["compile_max_s"]
        assert row["compile_s"] > 0
        assert row["run_s"] > 0
    assert lanczos["compile_ratio"] > 0

    (peers,) = report["peers"]  # the smoke mode has no large model
    assert peers["reference"]["top_eigenvalue"] > 0
    assert peers["reference"]["trace"] > 0
    rows = {(row["task"], row["tool"]): row for row in peers["rows"]}
    for key in (
        ("top eigenvalue", "mars_jax"),
        ("trace", "mars_jax (lax.map)"),
        ("trace", "mars_jax (vmap)"),
    ):
        assert rows[key]["time_s"] > 0
        assert rows[key]["compile_s"] > 0
        assert rows[key]["estimate"] > 0
    # same start vector, same iterations: the three power iterations agree (float32)
    assert rows[("top eigenvalue", "mars_jax")]["rel_diff_reference"] < 0.05
    for task in ("top eigenvalue", "trace"):
        for tool in PEERS:
            row = rows[(task, tool)]
            if report["peers_status"][tool] != "ok":  # e.g. torch not installed in CI
                assert row["status"].startswith("not installed")
                continue
            assert row["status"] == "ok"
            assert row["time_s"] > 0
            assert row["speedup_of_mars_jax"] > 0
            if task == "top eigenvalue":
                assert row["rel_diff_mars_jax"] < 1e-3
            else:
                assert row["rel_diff_same_probes"] < 1e-3

    # Time to accuracy: the smoke model is small, so the references are exact (dense eigh and
    # trace); the closed-form trace that the full mode uses instead must agree with them.
    tolerance = report["tolerance"]
    reference = tolerance["reference"]
    assert reference["kind"].startswith("dense")
    assert reference["closed_form_rel_diff"] < 1e-5
    estimators = {row["estimator"]: row for row in tolerance["rows"]}
    eigen = estimators["top_eigenvalues"]
    assert eigen["seeds"] == 3 and all(eigen["converged_all"])
    assert eigen["error_bound"] <= eigen["rtol"] == 1e-3
    assert max(eigen["rel_error_all"]) <= eigen["rtol"]  # against eigh, every key
    assert eigen["num_matvecs"] < estimators["power_iteration"]["num_matvecs"]
    traces = [row for row in tolerance["rows"] if row["task"] == "trace"]
    assert len(traces) == 3
    for row in traces:
        assert all(row["converged_all"])
        assert row["error_bound"] <= row["rtol"] == 1e-2
        # the standard error is at most rtol: the actual error is within a few of them
        assert max(row["rel_error_all"]) <= 4 * row["rtol"]
        assert row["time_s"] > 0 and row["per_matvec_s"] > 0
    plain, blocked = traces[0], traces[1]  # same probes, checked once per block of 8
    assert 0 <= blocked["num_matvecs"] - plain["num_matvecs"] <= 16

    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "### (1) HVP cost against a gradient" in out
    assert "| top eigenvalue | mars_jax |" in out
    assert "### (4) Time to accuracy" in out
