"""Smoke test of the LLM layer sweep: one extraction pass files every layer in the cache."""

from __future__ import annotations

from conftest import load_benchmark


def test_layer_sweep_smoke(capsys):
    assert load_benchmark("llm_layers").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "| 2 (chosen) |" in out or "| 1 (chosen) |" in out
