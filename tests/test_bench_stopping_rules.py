"""Smoke test of the stopping-rule benchmark (numpy only, counts against eigh)."""

from __future__ import annotations

import json

import numpy as np
from conftest import load_benchmark


def test_smoke_residual_rule_is_honest_and_the_ritz_gap_rule_is_not(tmp_path, capsys):
    bench = load_benchmark("stopping_rules")
    out_path = tmp_path / "rules.json"
    report = bench.main(["--smoke", "--json", str(out_path)])
    cfg = bench.SMOKE
    spectra = len(bench.spectra(np.random.default_rng(0), cfg["size"]))
    runs = cfg["seeds"] * spectra * len(bench.CASES) * len(cfg["rtols"])
    residual, gap = report["rules"]["residual"], report["rules"]["ritz gap"]
    for totals in (residual, gap):
        assert totals["runs"] == runs and 0 < totals["converged"] <= runs
    # The residual bounds the distance to the spectrum: never beyond the tolerance.
    assert residual["nearest"] == 0 and residual["worst_nearest"] <= 1.0
    # r**2 / (distance to the next Ritz value) stops on unresolved clusters: some of its
    # answers are farther than the tolerance from every eigenvalue, and it stops earlier.
    assert gap["nearest"] > 0 and gap["worst_nearest"] > 1.0
    assert gap["extra_steps"] < residual["extra_steps"]
    assert json.loads(out_path.read_text()) == report
    assert "| residual |" in capsys.readouterr().out
