"""Smoke test of the round-overhead benchmark script."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_smoke_benchmark_reports_positive_phase_times(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("round_overhead").main(["--smoke", "--json", str(out_path)])

    assert [row["method"] for row in report["rows"]] == ["mars", "uniform", "west_of_n"]
    assert report["target_met"] is None  # the smoke size is not the target's size
    for row in report["rows"]:
        assert row["base_pairs"] == 300
        assert row["pool_pairs"] == 300 * 25
        assert row["train_pairs"] == 300 + 2 * 300
        assert row["measured_rounds"] == report["rounds"] - 1
        for phase in ("score_pool", "allocate", "train", "score", "evaluate", "overhead"):
            assert row[f"{phase}_s"] > 0
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
        assert row["ratio"] > 0
        assert row["passed"] == (row["ratio"] <= report["target_ratio"])
    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "| 300 | 7,500 | mars |" in out
    assert "west_of_n ¹" in out
