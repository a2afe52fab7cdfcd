"""Smoke tests of the encoder benchmark script.

The JAX side runs everywhere; the PyTorch cross-check (same weights, same outputs) is a test
of its own, skipped visibly where torch or transformers is not installed.
"""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark


def test_smoke_benchmark_against_torch(tmp_path, capsys):
    for module in ("torch", "transformers"):
        pytest.importorskip(module, reason=f"{module} is in the bench extra only")
    out_path = tmp_path / "bench.json"

    report = load_benchmark("encoder").main(["--smoke", "--json", str(out_path)])

    assert report["mode"] == "smoke" and report["torch_status"] == "ok"
    assert [(row["tokens"], row["mask"]) for row in report["forward"]] == [
        (16, "full"),
        (16, "padded"),
    ]
    for row in report["forward"]:
        assert row["batch"] == 4
        if row["mask"] == "full":
            assert row["real_tokens"] == row["batch"] * row["tokens"]
        else:
            assert 0 < row["real_tokens"] < row["batch"] * row["tokens"]
        assert row["jax_s"] > 0 and row["torch_s"] > 0
        # two frameworks, same weights: the pooled embeddings agree
        assert row["max_abs_diff"] < 1e-4
    finetune = report["finetune"]
    assert (finetune["pairs"], finetune["tokens"], finetune["sequences"]) == (2, 16, 4)
    # same model, same optimizer: the losses of the first and last step agree
    assert finetune["first_loss_diff"] < 1e-4
    assert finetune["last_loss_diff"] < 1e-3
    assert json.loads(out_path.read_text()) == report
    out = capsys.readouterr().out
    assert "| 16 | 4 | full |" in out
    assert "2 pairs × 16 tokens" in out


def test_smoke_benchmark_without_torch(capsys):
    report = load_benchmark("encoder").main(["--smoke", "--no-torch", "--repeats", "1"])

    assert report["torch_status"] == "skipped (--no-torch)"
    assert report["machine"]["cores"] >= 1
    for row in report["forward"]:
        assert "torch_s" not in row
        assert row["jax_s"] > 0 and row["jax_seq_per_s"] == pytest.approx(4 / row["jax_s"])
    finetune = report["finetune"]
    assert "torch_s" not in finetune
    assert finetune["jax_s"] > 0
    losses = finetune["jax_losses"]  # the warm-up step and one timed step
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert "skipped (--no-torch)" in capsys.readouterr().out
