"""Smoke test of the main-job benchmark script (runs configs/tiny.toml through the CLI)."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_smoke_benchmark_times_the_cli_end_to_end(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("main_job").main(["--smoke", "--json", str(out_path)])

    assert report["job"] == "mars-jax run configs/tiny.toml"
    assert report["methods"] == ["none", "uniform", "uniform_global", "mars"]
    assert len(report["runs"]) == report["repeats"] == 1
    run = report["runs"][0]
    assert run["wall_s"] >= run["run_s"] > 0
    assert run["import_jax_s"] > 0
    assert report["ratio"] > 0
    assert report["under_target"] == (report["wall_s"] < report["target_s"])
    for method in report["methods"]:
        assert run["methods"][method]["rounds"] == 2
        assert run["methods"][method]["seconds"] > 0
        assert 0 <= run["methods"][method]["accuracy"] <= 1
    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "| mars-jax run configs/tiny.toml | 1 |" in out
    assert "| uniform_global | 2 |" in out
