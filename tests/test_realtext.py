"""Real-text modelling: accuracy floors in the run summary, representations, validation split."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_benchmark

from mars_jax.data.floor_report import beaten_floors
from mars_jax.data.selection import TextDataSettings, select_base_pairs
from mars_jax.data.text import represent
from mars_jax.models.tokenize import bert_format
from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.train import Trainer
from mars_jax.types import PairBatch

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")

_spec = importlib.util.spec_from_file_location(
    "tiny_bert", Path(__file__).with_name("test_bert.py")
)
tiny_bert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bert)


def write_length_pairs(path: Path, num_prompts: int = 30) -> None:
    """Pairs whose chosen response is always longer (8 words against 3): length floor 1."""
    rng = np.random.default_rng(1)
    words = lambda n, lo, hi: " ".join(f"w{int(i)}" for i in rng.integers(lo, hi, n))  # noqa: E731
    lines = []
    for _ in range(num_prompts):
        prompt = words(6, 0, 90)
        for _ in range(2):
            lines.append(
                {"prompt": prompt, "chosen": words(8, 0, 45), "rejected": words(3, 45, 90)}
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("realtext")
    tiny_bert.write_tiny_bert(root / "bert")
    write_length_pairs(root / "pairs.jsonl")
    overrides = [
        "data.suite=pairs",
        f"data.paths=['{root / 'pairs.jsonl'}']",
        f"data.encoder={root / 'bert'}",
        f"data.cache_dir={root / 'cache'}",
        "data.num_base_pairs=40",
        "data.num_heldout_pairs=20",
        "data.heldout_fraction=0.3",
        "data.paraphrases=2",
        "data.max_length=32",
        "model.hidden_sizes=[8]",
        "train.batch_size=16",
        "refine.budget=20",
        "refine.rounds=1",
        "refine.methods=['none']",
        "eval.num_bootstrap=0",
        "output.progress=false",
        "output.plots=false",
    ]
    return root, overrides


def test_floors_in_the_run_summary_and_table(setup, capsys):
    root, overrides = setup
    out = root / "run-floors"
    assert main(["run", *overrides, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    floors = summary["floors"]
    assert floors["length"]["accuracy"] == 1.0 and floors["length"]["tie_rate"] == 0.0
    assert floors["length"]["num_pairs"] == summary["data"]["num_heldout_pairs"]
    probe = floors["linear_probe"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and probe["num_pairs"] == floors["length"]["num_pairs"]
    check = summary["floor_check"]
    assert check["highest_floor"] == "length" and check["methods_above_all_floors"] == []
    printed = capsys.readouterr().out
    assert "floor: length" in printed and "floor: linear_probe" in printed
    assert "warning: no method beats the length floor" in printed


def test_synthetic_runs_record_the_probe_floor(tmp_path):
    out = tmp_path / "run"
    overrides = ["refine.methods=['none']", "refine.rounds=1", "output.plots=false"]
    assert main(["run", TINY, *overrides, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["floors"]) == {"linear_probe"}
    assert summary["floors"]["linear_probe"]["num_pairs"] == 200


def test_floor_check_warns_only_when_no_method_beats_every_floor():
    floors = {"length": {"accuracy": 0.65}, "linear_probe": {"accuracy": 0.58}}
    check = beaten_floors(floors, {"none": 0.66, "mars": 0.64})
    assert check == {"highest_floor": "length", "methods_above_all_floors": ["none"]}
    check = beaten_floors(floors, {"none": 0.60})
    assert "no method beats the length floor (0.6500)" in check["warning"]


@pytest.mark.parametrize(
    ("representation", "dim"), [("joined", 32), ("response", 32), ("pair", 64)]
)
def test_each_representation_feature_shape(setup, representation, dim):
    _, overrides = setup
    config = load_config(None, [*overrides, f"data.representation={representation}"])
    data, info = build_data(config)
    assert data.base.chosen.shape == (40, dim) and data.heldout.rejected.shape[1] == dim
    assert data.pool.chosen.shape[1] == dim and info["feature_dim"] == dim
    assert info["representation"] == representation


def test_represent_pair_combines_prompt_and_response():
    table = {"p": np.array([3.0, 4.0]), "r": np.array([1.0, 0.0]), "s": np.array([0.0, 2.0])}
    embed = lambda texts: np.stack([table[t] for t in texts])  # noqa: E731
    features = represent("pair", ["p", "p"], ["r", "s"], embed, bert_format("[SEP]"))
    root2 = np.sqrt(2.0)
    np.testing.assert_allclose(features, [[1, 0, 0.6 * root2, 0], [0, 1, 0, 0.8 * root2]])
    assert represent("response", ["p"], ["r"], embed, bert_format("[SEP]")).shape == (1, 2)


def test_difference_standardization_gives_the_pair_difference_unit_scale(setup):
    _, overrides = setup
    data, _ = build_data(load_config(None, [*overrides, "data.standardize=difference"]))
    difference = np.asarray(data.base.chosen) - np.asarray(data.base.rejected)
    np.testing.assert_allclose(difference.std(axis=0), 1.0, rtol=1e-3)


def test_unknown_representation_is_one_config_error_line(setup, tmp_path, capsys):
    _, overrides = setup
    argv = ["run", *overrides, "data.representation=bag", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.representation" in err[0] and "joined" in err[0]


def test_validation_split_shares_no_prompt_with_base_or_heldout_pairs(setup):
    root, _ = setup
    settings = TextDataSettings(
        paths=(str(root / "pairs.jsonl"),),
        heldout_fraction=0.3,
        validation_fraction=0.25,
        num_heldout_pairs=1000,
    )
    selection = select_base_pairs(settings)
    validation, held, base = selection.validation, selection.held, selection.base
    assert len(validation) > 0 and len(held) > 0 and len(base) > 0
    assert not set(validation.prompt) & set(held.prompt)
    assert not set(validation.prompt) & set(base.prompt)
    assert len(validation) + len(base) == len(selection.train)
    # The held-out side does not depend on the validation split.
    plain = select_base_pairs(dataclasses.replace(settings, validation_fraction=0.0))
    assert plain.held.prompt == held.prompt and plain.validation is None


def test_run_with_validation_pairs(setup, tmp_path):
    _, overrides = setup
    config = load_config(None, [*overrides, "data.validation_fraction=0.2"])
    data, info = build_data(config)
    assert data.validation.chosen.shape == (info["num_validation_pairs"], 32)
    assert info["num_validation_pairs"] + info["num_base_pairs"] == info["train_side_pairs"]
    out = tmp_path / "run"
    argv = [
        "run",
        *overrides,
        "data.validation_fraction=0.2",
        "train.patience=1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["data"]["num_validation_pairs"] > 0


class _ScriptedTrainer(Trainer):
    """A trainer whose validation losses are scripted, recording the params they were for."""

    def member_losses(self, params, pairs):
        _SEEN.append(jax.device_get(params))
        return np.asarray([_SCRIPT[len(_SEEN) - 1]], np.float32)


_SEEN: list = []
_SCRIPT = [3.0, 2.0, 1.5, 2.5, 4.0, 5.0]


def _linear_fit(validation, patience=0, epochs=5):
    _SEEN.clear()
    trainer = _ScriptedTrainer(reward_fn=lambda p, x: x @ p, optimizer=optax.sgd(0.1))
    key = jax.random.key(0)
    chosen = jax.random.normal(key, (32, 3)) + 1.0
    pairs = PairBatch(chosen, -chosen, jnp.ones(32))
    state = trainer.init_members(jnp.zeros((1, 3)))
    return trainer.fit(
        state,
        key,
        pairs,
        epochs=epochs,
        batch_size=8,
        validation=pairs if validation else None,
        patience=patience,
    )


def test_best_epoch_is_the_one_with_the_least_validation_loss():
    state, _ = _linear_fit(validation=True)
    assert len(_SEEN) == 6  # on entry and after each of 5 epochs
    np.testing.assert_array_equal(np.asarray(state.params), _SEEN[2])  # loss 1.5: epoch 2
    assert not np.array_equal(_SEEN[2], _SEEN[5])
    last, _ = _linear_fit(validation=False)
    assert not _SEEN and not np.array_equal(np.asarray(last.params), np.asarray(state.params))


def test_patience_stops_after_epochs_without_improvement():
    state, _ = _linear_fit(validation=True, patience=2)
    assert len(_SEEN) == 5  # entry, epochs 1-4: epochs 3 and 4 did not improve on epoch 2
    np.testing.assert_array_equal(np.asarray(state.params), _SEEN[2])


def test_realtext_benchmark_smoke(capsys):
    benchmark = load_benchmark("realtext")
    assert benchmark.main(["--smoke"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(record["methods"]) == {"none"} and "linear_probe" in record["floors"]
