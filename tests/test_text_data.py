"""Real-text data path end to end on a tiny random BERT: read, clean, split, embed, run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data

_spec = importlib.util.spec_from_file_location(
    "tiny_bert", Path(__file__).with_name("test_bert.py")
)
tiny_bert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bert)


def write_pairs(path: Path, num_prompts: int = 40) -> None:
    """TRL-style pairs over the tiny vocabulary (w0..w89): 2 pairs per prompt, plus a
    pair with identical responses and an exact duplicate, which cleaning must drop."""
    rng = np.random.default_rng(0)
    lines = []
    for p in range(num_prompts):
        prompt = " ".join(f"w{int(i)}" for i in rng.integers(0, 90, 6))
        for _ in range(2):
            good = " ".join(f"w{int(i)}" for i in rng.integers(0, 45, 5))
            bad = " ".join(f"w{int(i)}" for i in rng.integers(45, 90, 5))
            lines.append({"prompt": prompt, "chosen": good, "rejected": bad})
        if p == 0:
            lines.append({"prompt": prompt, "chosen": "w1 w2", "rejected": "w1 w2"})
            lines.append(lines[0])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    tiny_bert.write_tiny_bert(root / "bert")
    write_pairs(root / "pairs.jsonl")
    overrides = [
        "data.suite=pairs",
        f"data.paths=['{root / 'pairs.jsonl'}']",
        f"data.encoder={root / 'bert'}",
        f"data.cache_dir={root / 'cache'}",
        "data.num_base_pairs=50",
        "data.num_heldout_pairs=20",
        "data.heldout_fraction=0.25",
        "data.paraphrases=2",
        "data.max_length=32",
        "model.hidden_sizes=[8]",
        "train.batch_size=16",
        "refine.budget=40",
        "refine.rounds=1",
        "refine.methods=['none','mars']",
        "eval.num_bootstrap=20",
        "output.progress=false",
    ]
    return root, overrides


def test_build_reads_cleans_splits_embeds_and_augments(setup):
    _, overrides = setup
    config = load_config(None, overrides)
    data, info = build_data(config)
    assert info["pairs_read"] == 82
    assert info["cleaning"]["identical"] == 1 and info["cleaning"]["duplicate"] == 1
    assert info["num_base_pairs"] == 50 and info["num_heldout_pairs"] == 20
    assert info["train_side_pairs"] + info["heldout_side_pairs"] == 80
    assert data.base.chosen.shape == (50, 32)  # the tiny BERT's hidden size
    assert data.pool.source.shape == (50 * 4,)
    features = np.concatenate([np.asarray(data.base.chosen), np.asarray(data.base.rejected)])
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-4)
    assert info["embedding_cache"]["misses"] > 0

    again, again_info = build_data(config)
    assert again_info["embedding_cache"]["misses"] == 0
    np.testing.assert_array_equal(np.asarray(again.base.chosen), np.asarray(data.base.chosen))


def test_label_flips_swap_the_embeddings(setup):
    _, overrides = setup
    clean, _ = build_data(load_config(None, overrides))
    noisy, info = build_data(load_config(None, [*overrides, "data.label_flip_rate=0.2"]))
    assert info["num_flipped"] == 10
    difference = np.abs(np.asarray(noisy.base.chosen) - np.asarray(clean.base.rejected))
    swapped = np.all(difference < 1e-4, axis=1)
    assert swapped.sum() == 10


def test_cli_runs_on_real_text_pairs(setup, capsys):
    root, overrides = setup
    out = root / "run"
    assert main(["run", *overrides, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["suite"] == "pairs"
    assert set(summary["methods"]) == {"none", "mars"}
    assert "Held-out pairwise accuracy" in capsys.readouterr().out


def test_bad_data_fails_before_any_output(setup, tmp_path, capsys):
    _, overrides = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "w1", "chosen": "w2", "rejected": "w3"}\n{"prompt": "w1"}\n')
    out = tmp_path / "run"
    argv = ["run", *overrides, f"data.paths=['{bad}']", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "chosen" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
