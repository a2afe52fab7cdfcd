"""Smoke test of the encoder benchmark script (runs with or without torch)."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_smoke_benchmark_reports_positive_numbers(tmp_path, capsys):
    out_path = tmp_path / "bench.json"

    report = load_benchmark("encoder").main(["--smoke", "--json", str(out_path)])

    assert report["mode"] == "smoke"
    has_torch = report["torch_status"] == "ok"
    assert [(row["tokens"], row["mask"]) for row in report["forward"]] == [
        (16, "full"),
        (16, "padded"),
    ]
    for row in report["forward"]:
        assert row["batch"] == 4
        assert 0 < row["real_tokens"] <= row["batch"] * row["tokens"]
        assert row["jax_compile_s"] >= 0
        assert row["jax_s"] > 0
        assert row["jax_seq_per_s"] > 0
        if has_torch:
            assert row["torch_seq_per_s"] > 0
            assert row["ratio_min"] <= row["ratio_max"]
            assert row["ratio"] > 0
            assert row["met"] == (row["ratio"] >= report["target"])
            assert row["max_abs_diff"] < 1e-3
        else:
            assert "torch_s" not in row
    finetune = report["finetune"]
    assert (finetune["pairs"], finetune["tokens"], finetune["sequences"]) == (2, 16, 4)
    assert finetune["jax_compile_s"] > 0
    assert finetune["jax_s"] > 0
    assert len(finetune["jax_losses"]) == finetune["repeats"] + 1
    assert all(loss > 0 for loss in finetune["jax_losses"])
    if has_torch:
        assert finetune["torch_s"] > 0
        assert finetune["ratio"] > 0
        assert finetune["first_loss_diff"] < 1e-3
    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "| 16 | 4 | full |" in out
    assert "2 pairs × 16 tokens" in out


def test_smoke_benchmark_without_torch(capsys):
    report = load_benchmark("encoder").main(["--smoke", "--no-torch", "--repeats", "1"])

    assert report["torch_status"] == "skipped (--no-torch)"
    assert all("torch_s" not in row for row in report["forward"])
    assert "torch_s" not in report["finetune"]
    assert "skipped (--no-torch)" in capsys.readouterr().out
