"""Smoke test of the LLM feature-extraction benchmark (JAX always; torch when installed)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import load_benchmark


def test_smoke_benchmark_jax_side(tmp_path, capsys):
    out_path = tmp_path / "bench.json"
    report = load_benchmark("llm_features").main(
        ["--smoke", "--no-torch", "--repeats", "1", "--json", str(out_path)]
    )
    assert report["mode"] == "smoke" and report["torch_status"] == "skipped (--no-torch)"
    assert [(row["batch"], row["tokens"]) for row in report["cases"]] == [(4, 16), (2, 32)]
    for row in report["cases"]:
        assert row["jax_texts_per_s"] > 0 and row["jax_min_s"] <= row["jax_median_s"]
        assert "torch_median_s" not in row
    assert len(report["load_average"]) == 2 and report["cpu"]
    assert json.loads(out_path.read_text()) == report
    assert "skipped (--no-torch)" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="torch is not installed: the JAX-vs-torch comparison needs torch + transformers",
)
def test_smoke_benchmark_against_torch():
    report = load_benchmark("llm_features").main(["--smoke", "--repeats", "1"])
    assert report["torch_status"] == "ok"
    for row in report["cases"]:
        assert row["max_abs_diff"] < 1e-4 * max(1.0, row["feature_scale"])
        assert row["ratio_median"] > 0 and row["torch_texts_per_s"] > 0
