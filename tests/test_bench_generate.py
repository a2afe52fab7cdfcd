"""Smoke test of the generation benchmark script (JAX side only; torch is optional)."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_smoke_benchmark_reports_positive_numbers(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("generate").main(
        ["--smoke", "--no-torch", "--repeats", "1", "--json", str(out_path)]
    )

    assert report["mode"] == "smoke"
    assert report["torch_status"] == "skipped (--no-torch)"
    assert [row["batch"] for row in report["throughput"]] == [1, 4]
    for row in report["throughput"]:
        assert row["new_tokens"] == 16
        low, high = row["prompt_tokens"]
        assert 0 < low <= high <= row["prompt_bucket"]
        assert row["jax_compile_s"] >= 0 and row["jax_tokens_per_s"] > 0
        assert row["recompiled_within_bucket"] is False
        assert "torch_s" not in row
    assert report["peak_rss_mib"]["jax"] > 0 and "torch" not in report["peak_rss_mib"]
    generator = report["generator"]
    assert 0 < generator["new_tokens"] <= generator["prompts"] * generator["max_new_tokens"]
    assert generator["tokens_per_s"] > 0
    batching = report["batching"]
    static, continuous = batching["static"], batching["continuous"]
    assert batching["identical"] is True  # continuous batching changes no reply
    assert static["kept_tokens"] == continuous["kept_tokens"] > 0
    # the smoke model's replies stop after varied numbers of tokens: refilled rows waste less
    assert continuous["decoded_slots"] < static["decoded_slots"]
    assert continuous["occupancy"] > static["occupancy"]
    assert static["compiled_while_timed"] == continuous["compiled_while_timed"] == 0
    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "| 4 |" in out and "skipped (--no-torch)" in out
    assert "| continuous |" in out and "identical replies: yes" in out
