"""The mars-jax command line, end to end on a tiny config, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mars_jax.runner.cli import main
from mars_jax.runner.config import config_from_dict, load_config

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
    assert all(0.0 <= line["heldout"]["accuracy"] <= 1.0 for line in lines)

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(config.refine.methods)
    assert summary["methods"]["none"]["budget_spent"] == 0
    assert summary["methods"]["mars"]["budget_spent"] == config.refine.rounds * config.refine.budget

    resolved = json.loads((out / "config.json").read_text())
    assert config_from_dict(resolved["config"], source="config.json") == config


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
