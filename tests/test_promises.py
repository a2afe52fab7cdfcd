"""Promises of the README that had no test (issue 18): Hugging Face rows, skipped records in
summary.json, a pool that covers only some base pairs, warm-up epochs, and an infinite
gradient in a run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from mars_jax import train
from mars_jax.data.formats import read_hf_dataset
from mars_jax.data.pool import PoolContents, PoolPair, base_key
from mars_jax.data.text import directory_pool
from mars_jax.errors import MarsError
from mars_jax.models.heads import init_members
from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_refiners, build_trainer
from mars_jax.runner.locks import LOCK_NAME
from mars_jax.runner.logs import read_records

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")

_spec = importlib.util.spec_from_file_location(
    "text_data", Path(__file__).with_name("test_text_data.py")
)
text_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(text_data)

ROWS = [
    {"prompt": "p1", "chosen": "good one", "rejected": "bad one"},
    {"prompt": "p2", "chosen": "fine", "rejected": "poor"},
    {"prompt": "p3", "chosen": "only chosen"},
    {
        "chosen": [
            {"role": "user", "content": "p4"},
            {"role": "assistant", "content": "yes"},
        ],
        "rejected": [
            {"role": "user", "content": "p4"},
            {"role": "assistant", "content": "no"},
        ],
    },
]


def fake_datasets(splits: dict[str, list[dict]]) -> types.ModuleType:
    """The part of the ``datasets`` package that ``read_hf_dataset`` uses."""
    module = types.ModuleType("datasets")

    class DatasetDict(dict):
        pass

    module.DatasetDict = DatasetDict
    module.calls = []

    def load_dataset(name, split):
        module.calls.append(("load_dataset", name, split))
        return list(splits[split])

    def load_from_disk(path):
        module.calls.append(("load_from_disk", path))
        return DatasetDict({name: list(rows) for name, rows in splits.items()})

    module.load_dataset = load_dataset
    module.load_from_disk = load_from_disk
    return module


def test_hf_dataset_rows_become_pairs(monkeypatch, tmp_path):
    fake = fake_datasets({"train": ROWS, "test": ROWS[:2]})
    monkeypatch.setitem(sys.modules, "datasets", fake)

    with pytest.raises(MarsError, match=r"^someone/prefs\[train\]:3: .*rejected"):
        read_hf_dataset("someone/prefs")
    read = read_hf_dataset("someone/prefs", skip_invalid=True)
    assert list(read.table.prompt) == ["p1", "p2", "User: p4"]
    assert list(read.table.chosen) == ["good one", "fine", "yes"]
    assert list(read.table.rejected) == ["bad one", "poor", "no"]
    assert list(read.table.line) == [1, 2, 4]
    assert read.invalid == 1 and read.first_errors[0].startswith("someone/prefs[train]:3: ")

    # A local folder is a saved DatasetDict: the split is taken from it.
    local = read_hf_dataset(str(tmp_path), split="test")
    assert list(local.table.chosen) == ["good one", "fine"]
    assert fake.calls[-1] == ("load_from_disk", str(tmp_path))
    assert ("load_dataset", "someone/prefs", "train") in fake.calls


def test_skipped_records_are_counted_in_summary_json(tmp_path):
    root = tmp_path
    text_data.tiny_bert.write_tiny_bert(root / "bert")
    pairs = root / "pairs.jsonl"
    text_data.write_pairs(pairs)
    good = pairs.read_text().splitlines()
    bad = ["not json", '{"prompt": "w1", "chosen": "w2"}', "[1, 2]"]
    pairs.write_text("\n".join([*good[:3], bad[0], *good[3:10], bad[1], bad[2], *good[10:]]) + "\n")
    overrides = [
        "data.suite=pairs",
        f"data.paths=['{pairs}']",
        f"data.encoder={root / 'bert'}",
        f"data.cache_dir={root / 'cache'}",
        "data.skip_invalid=true",
        "data.num_base_pairs=50",
        "data.num_heldout_pairs=20",
        "data.heldout_fraction=0.25",
        "data.paraphrases=2",
        "data.max_length=32",
        "model.hidden_sizes=[8]",
        "train.batch_size=16",
        "refine.rounds=1",
        "refine.methods=['none']",
        "eval.num_bootstrap=0",
        "output.plots=false",
    ]
    out = root / "run"
    assert main(["run", *overrides, "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["invalid_records"] == 3
    assert data["pairs_read"] == len(good)
    lines = [f"{pairs}:{n}:" for n in (4, 12, 13)]
    assert [e.split(" ", 1)[0] for e in data["invalid_examples"]] == lines
    assert main(["run", *overrides, "data.skip_invalid=false", "--out", str(root / "x")]) == 2


def test_a_pool_without_pairs_for_some_base_pairs():
    base = types.SimpleNamespace(
        prompt=[f"p{i}" for i in range(5)],
        chosen=[f"c{i}" for i in range(5)],
        rejected=[f"r{i}" for i in range(5)],
    )
    keys = [base_key(*texts) for texts in zip(base.prompt, base.chosen, base.rejected, strict=True)]
    counts = [2, 0, 3, 1, 0]
    pairs = {
        keys[i]: [
            PoolPair(keys[i], 0, j, j, f"p{i}", f"c{i}.{j}", f"r{i}.{j}") for j in range(count)
        ]
        for i, count in enumerate(counts)
        if count
    }
    contents = PoolContents(Path("pool"), {"generator": {"name": "fake"}}, pairs, frozenset(), [])
    flipped = np.array([False, False, True, False, False])

    def inputs(prompts, responses):
        # Feature: base pair index, 1 for a chosen text (c...), and the variant index.
        return np.array(
            [[float(r[1]), float(r[0] == "c"), float(r.split(".")[1])] for r in responses],
            np.float32,
        )

    pool, info = directory_pool(contents, base, flipped, inputs)
    assert info["base_pairs_with_pool_pairs"] == 3
    np.testing.assert_array_equal(pool.offsets, [0, 2, 2, 5, 6, 6])
    np.testing.assert_array_equal(pool.source, [0, 0, 2, 2, 2, 3])
    chosen, rejected = np.asarray(pool.chosen), np.asarray(pool.rejected)
    np.testing.assert_array_equal(chosen[:, 0], [0, 0, 2, 2, 2, 3])
    np.testing.assert_array_equal(chosen[:, 2], [0, 1, 0, 1, 2, 0])
    # The pool pairs of the flipped base pair 2 are flipped too.
    np.testing.assert_array_equal(chosen[:, 1], [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(rejected[:, 1], 1 - chosen[:, 1])

    empty = contents._replace(pairs={})
    with pytest.raises(MarsError, match="no pool pairs for any of the 5 base pairs"):
        directory_pool(empty, base, flipped, inputs)


def test_warmup_epochs_train_that_many_epochs_before_the_first_round():
    counts = {}
    for epochs in (1, 3):
        config = load_config(
            None,
            [
                "data.num_base_pairs=300",
                "data.feature_dim=8",
                "model.hidden_sizes=[16]",
                "train.batch_size=32",
                f"train.warmup_epochs={epochs}",
            ],
        )
        data, _ = build_data(config)
        model, trainer = build_trainer(config, data)
        refiner = build_refiners(config, trainer, methods=("mars",))["mars"]
        params = init_members(model, jax.random.key(0), 1)
        state = refiner.init(jax.random.key(1), params, data)
        counts[epochs] = int(np.max(optax.tree_utils.tree_get(state.train.opt_state, "count")))
        assert int(np.max(state.train.step)) == counts[epochs]
    steps_per_epoch = math.ceil(300 / 32)
    assert counts == {1: steps_per_epoch, 3: 3 * steps_per_epoch}


def test_an_infinite_gradient_stops_the_run_with_one_line_and_it_resumes(tmp_path, capsys):
    """Huge (finite) features in round 2's training chunk make a linear head's gradient
    norm overflow to inf (a hidden layer's GELU would turn them into NaN)."""
    argv = [
        "run",
        TINY,
        "model.hidden_sizes=[]",
        'refine.methods=["mars"]',
        "eval.num_bootstrap=0",
        "output.plots=false",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    calls = []
    real = train.Trainer._jit

    def poisoned(self, name, build):
        compiled = real(self, name, build)
        if name != "train_chunk":
            return compiled

        def run(state, pairs, rows, mask, active):
            calls.append(name)
            if len(calls) == 3:  # warm-up, round 1, round 2
                pairs = pairs._replace(chosen=np.full(pairs.chosen.shape, 1e25, np.float32))
            return compiled(state, pairs, rows, mask, active)

        return run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.Trainer, "_jit", poisoned)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "method 'mars', round 2, step 1 of" in err[0] and "gradient norm is inf" in err[0]
    run_dir = tmp_path / "run"
    assert len(read_records(run_dir / "metrics.jsonl")) == 1
    assert not (run_dir / "models").exists() and not (run_dir / LOCK_NAME).exists()

    assert main([*argv, "--resume"]) == 0
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert (run_dir / "models" / "mars").is_dir()


def test_a_multi_process_run_refuses_to_resume_before_writing(tmp_path, monkeypatch, capsys):
    """Process 0 alone keeps checkpoints, so a resumed multi-host run would diverge."""
    out = tmp_path / "run"
    argv = ["run", TINY, 'refine.methods=["none"]', "--out", str(out), "--resume"]
    monkeypatch.setattr(jax, "process_count", lambda: 2)

    assert main(argv) == 2

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--resume: a run of 2 processes cannot resume yet" in err
    assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()
