"""The mars-jax command line, end to end on a tiny config, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mars_jax.checkpoint import load_params, read_model_info
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.runner.cli import main
from mars_jax.runner.config import config_from_dict, load_config
from mars_jax.runner.data import build_data

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    status = main(["run", TINY, "--out", str(out), "--quiet"])
    return status, out


def test_run_writes_every_promised_file(tiny_run):
    status, out = tiny_run
    assert status == 0
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).stat().st_size > 0
    for name in ("accuracy.png", "margins.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = load_config(TINY)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(config.refine.methods) * config.refine.rounds
    assert {line["method"] for line in lines} == set(config.refine.methods)

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(config.refine.methods)
    assert summary["methods"]["none"]["budget_spent"] == 0
    assert summary["methods"]["mars"]["budget_spent"] == config.refine.rounds * config.refine.budget

    resolved = json.loads((out / "config.json").read_text())
    assert config_from_dict(resolved["config"], source="config.json") == config


def test_reported_metrics_are_those_of_the_saved_models(tiny_run):
    """Accuracy, tie rate and AUC recomputed with numpy from each saved model's held-out
    rewards equal the last metrics line and summary.json."""
    _, out = tiny_run
    config = load_config(TINY)
    data, _ = build_data(config)
    model = mlp_reward_model(config.data.feature_dim, config.model.hidden_sizes)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    for method in config.refine.methods:
        folder = out / "models" / method
        members = read_model_info(folder)["num_members"]
        like = jax.eval_shape(lambda m=members: init_members(model, jax.random.key(0), m))
        params = load_params(folder, like)
        rewards = jax.vmap(model.reward_fn, in_axes=(0, None))
        chosen = np.asarray(rewards(params, data.heldout.chosen), np.float64).mean(axis=0)
        rejected = np.asarray(rewards(params, data.heldout.rejected), np.float64).mean(axis=0)
        margins = chosen - rejected
        # Pairs this close to a tie may round either way in float32: each may flip once
        # (1e-6 more for metrics stored as float32).
        slack = (np.sum(np.abs(margins) < 1e-5) + 1e-9) / margins.size
        pairs = chosen[:, None] - rejected[None, :]
        expected = {
            "accuracy": np.mean(margins > 0),
            "tie_rate": np.mean(margins == 0),
            "auc": np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0),
        }
        last = [line for line in lines if line["method"] == method][-1]["heldout"]
        final = summary["methods"][method]["final"]
        for name, value in expected.items():
            assert last[name] == pytest.approx(value, abs=slack + 1e-6), (method, name)
            assert final[name] == last[name]


def test_run_refuses_a_non_empty_run_directory_and_leaves_it_alone(tiny_run, capsys):
    _, out = tiny_run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    status = main(["run", TINY, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert "not empty" in err and str(out) in err
    assert len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", TINY, "refine.budgett=3"], "refine.budgett"),
        (["run", TINY, "refine.rounds=0"], "refine.rounds"),
        (["run", TINY, "refine.methods=['mars','bogus']"], "bogus"),
        (["run", "missing.toml"], "missing.toml"),
        (["run", TINY, "other.toml"], "other.toml"),
        (["frobnicate"], "frobnicate"),
        (["run", "--bogus-flag"], "--bogus-flag"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(argv, expected, capsys, tmp_path):
    status = main([*argv, "--out", str(tmp_path / "never")] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert status == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_bad_input_in_a_real_process_shows_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    base = TINY.replace("\\", "/")
    bad.write_text(f'extends = "{base}"\n[refine]\nbudget = "lots"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "mars_jax.runner.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "refine.budget" in result.stderr and str(bad) in result.stderr
    assert not (tmp_path / "runs").exists()


def test_config_command_prints_a_config_that_loads_back(tmp_path, capsys):
    assert main(["config", TINY, "refine.budget=77"]) == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == load_config(TINY, ["refine.budget=77"])


def test_help_explains_each_command(capsys):
    for argv in (["--help"], ["run", "--help"], ["config", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "overrides" in out and "--keys" in out
