"""Smoke test of the group-margins benchmark script."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_smoke_benchmark_reports_positive_throughput(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("group_margins").main(["--smoke", "--json", str(out_path)])

    methods = [(row["method"], row["chunk_size"]) for row in report["rows"]]
    assert methods == [("chunked", 1024), ("chunked", 4096), ("naive", 0)]
    assert report["valid_pairs"] > 0
    digests = {row["digest"] for row in report["rows"]}
    assert len(digests) == 1
    for row in report["rows"]:
        assert row["pairs_per_s"] > 0
        assert row["run_s"] > 0
        assert row["compile_s"] > 0
        assert row["peak_rss_mib"] > 0
        assert row["num_found"] == report["k"]
    assert json.loads(out_path.read_text()) == report
    assert "| chunked | 1024 |" in capsys.readouterr().out
