"""Exact resume after SIGKILL, the run-directory lock, the NaN guard and metrics.jsonl repair.

Kills, locks and the NaN run go through the real CLI in subprocesses sharing the test run's
JAX compilation cache (tests/resume_runs.py); refusals and resumes after the NaN stop run
in-process through ``cli.main``. A resumed run must end bitwise equal to an uninterrupted one
(a separate process): the final parameters of every method and every metrics line apart from
its timing fields.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from resume_runs import (
    ARGS,
    RUN_TIMEOUT,
    assert_same_results,
    checkpoint_steps,
    command,
    file_bytes,
    reference_run,
    run,
    run_in_process,
    subprocess_env,
)

from mars_jax.errors import MarsError
from mars_jax.runner import data as data_module
from mars_jax.runner import resume
from mars_jax.runner.cli import main
from mars_jax.runner.locks import LOCK_NAME, RunLock
from mars_jax.runner.logs import MetricsLog, read_records

# Injects a NaN into the weights of step 3 of the third training call (round 2 of the first
# method: calls are warm-up, round 1, round 2), then runs the CLI. No production hook needed.
NAN_DRIVER = """
import sys
import numpy as np
from mars_jax import train
from mars_jax.runner.cli import main

calls = []
real = train.Trainer._jit

def poisoned(self, name, build):
    compiled = real(self, name, build)
    if name != "train_chunk":
        return compiled
    def run(state, pairs, rows, mask, active):
        calls.append(1)
        if len(calls) == 3:
            mask = np.array(mask)
            mask[2] = np.nan
        return compiled(state, pairs, rows, mask, active)
    return run

train.Trainer._jit = poisoned
sys.exit(main(sys.argv[1:]))
"""


# Kills its own process (SIGKILL) right after checkpoint AFTER is saved or, with INSIDE, at
# the first training chunk of the round that follows it, then runs the CLI.
KILL_DRIVER = """
import os
import signal
import sys
from mars_jax import train
from mars_jax.runner import resume
from mars_jax.runner.cli import main

saved = []
real_save = resume.RunCheckpoints.save
real_jit = train.Trainer._jit

def save(self, checkpoint, state):
    real_save(self, checkpoint, state)
    saved.append(checkpoint.step)
    if len(saved) == AFTER and not INSIDE:
        os.kill(os.getpid(), signal.SIGKILL)

def jit(self, name, build):
    compiled = real_jit(self, name, build)
    if name != "train_chunk":
        return compiled
    def run(*args):
        if INSIDE and len(saved) == AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
        return compiled(*args)
    return run

resume.RunCheckpoints.save = save
train.Trainer._jit = jit
sys.exit(main(sys.argv[1:]))
"""


# Holds the run after its first checkpoint: writes HELD, then sleeps until interrupted.
# SIGINT raises KeyboardInterrupt as in a foreground run (a shell starts background jobs with
# SIGINT ignored, and children inherit that).
HOLD_DRIVER = """
import pathlib
import signal
import sys
import time
from mars_jax.runner import resume
from mars_jax.runner.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)

real_save = resume.RunCheckpoints.save

def save(self, checkpoint, state):
    real_save(self, checkpoint, state)
    pathlib.Path(HELD).write_text("held")
    time.sleep(3600)  # until the test sends SIGINT

resume.RunCheckpoints.save = save
sys.exit(main(sys.argv[1:]))
"""


def _kill_driver(after: int, *, inside: bool) -> str:
    return f"AFTER = {after}\nINSIDE = {inside}\n{KILL_DRIVER}"


@pytest.fixture(scope="module")
def env():
    return subprocess_env()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


@pytest.mark.parametrize(
    ("after", "inside"),
    [(1, False), (2, True), (4, False)],
    ids=["round-2-of-first-method", "inside-a-round", "second-method"],
)
def test_sigkill_then_resume_ends_bitwise_equal(env, reference, tmp_path, after, inside):
    """The run kills itself once checkpoint ``after`` (of 6) is saved, or inside the round
    after it, then resumes; no timing decides where the kill lands."""
    out = tmp_path / "run"
    # --resume on a new directory starts the run.
    killed = run(env, out, "--resume", driver=_kill_driver(after, inside=inside))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "summary.json").exists() and (out / LOCK_NAME).exists()
    # The two newest checkpoints are kept.
    assert checkpoint_steps(out) == ([after - 1, after] if after > 1 else [1])
    lines = len(read_records(out / "metrics.jsonl"))
    assert lines == after  # a round killed inside left no line

    resumed = run(env, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert "stale lock" in resumed.stderr  # the killed process's lock is taken over
    assert_same_results(out, reference)
    assert checkpoint_steps(out) == [5, 6]


def test_nan_stops_cleanly_and_the_checkpoint_resumes(
    env, reference, tmp_path, capsys, caplog, monkeypatch
):
    """The NaN run is a real process; the refusals and resumes after it run in-process."""
    out = tmp_path / "run"
    result = run(env, out, driver=NAN_DRIVER)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "method 'uniform', round 2, step 3 of 12" in lines[0] and "nan" in lines[0]
    # Only round 1's checkpoint and metrics line exist; no model was saved.
    assert checkpoint_steps(out) == [1]
    assert len(read_records(out / "metrics.jsonl")) == 1
    assert not (out / "models").exists() and not (out / LOCK_NAME).exists()
    forced = tmp_path / "forced"
    shutil.copytree(out, forced)
    monkeypatch.chdir(tmp_path)
    before = file_bytes(out)

    def refusal(*extra: str) -> str:
        status, err = run_in_process(capsys, caplog, out, "--resume", *extra)
        assert status == 2, err
        assert err.count("\n") == 1, err
        assert file_bytes(out) == before
        return err

    assert "refine.budget: 120 in the run, 60 now" in refusal("refine.budget=60")
    with monkeypatch.context() as patch:
        patch.setattr(resume, "__version__", "0.0.0-other")
        assert "different mars_jax version" in refusal()
    with monkeypatch.context() as patch:
        patch.setattr(data_module, "build_data", _with_one_number_edited(data_module.build_data))
        assert "different data set (hash" in refusal()
    # --force still needs the finished methods and the checkpoint's method first.
    forced_order = refusal("--force", 'refine.methods=["mars", "uniform"]')
    assert "refine.methods: the checkpoint" in forced_order

    # The output section may change freely.
    argv = ["run", *ARGS, "--quiet", "--resume"]
    assert main([*argv, "--out", str(out), "output.progress=true", "output.dir=elsewhere"]) == 0
    assert_same_results(out, reference)

    assert main([*argv, "--out", str(forced), "--force", "refine.budget=60"]) == 0
    records = read_records(forced / "metrics.jsonl")
    assert [r["synthetic_drawn"] for r in records] == [120, 60, 60, 60, 60, 60]


def _with_one_number_edited(build_data):
    """``build_data`` of data with one number edited under the same config."""

    def edited(config):
        data, info = build_data(config)
        chosen = np.array(data.base.chosen)
        chosen[0, 0] += 1.0
        return data._replace(base=data.base._replace(chosen=chosen)), info

    return edited


def test_a_second_process_is_refused_and_sigint_releases_the_lock(env, tmp_path):
    out, held, log = tmp_path / "run", tmp_path / "held", tmp_path / "first.err"
    driver = f"HELD = {str(held)!r}\n{HOLD_DRIVER}"
    with log.open("w") as stderr:  # a file, not a pipe that could fill and block the run
        first = subprocess.Popen(command(out, driver=driver), env=env, cwd=tmp_path, stderr=stderr)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT  # waits for an event, not for a duration
        while not held.exists():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first run never saved a checkpoint"
            time.sleep(0.05)
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid
        before = file_bytes(out)

        second = run(env, out, "--resume")
        assert second.returncode == 2, second.stderr
        assert f"in use by another run (pid {first.pid} on" in second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert file_bytes(out) == before
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
            pytest.fail(f"the run did not stop on SIGINT; its stderr: {log.read_text()!r}")
    assert first.returncode == 130, log.read_text()
    assert "interrupted" in log.read_text()
    assert not (out / LOCK_NAME).exists()


def test_lock_refuses_a_live_owner(tmp_path):
    with RunLock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["hostname"] == socket.gethostname()
        with pytest.raises(MarsError, match=f"in use by another run \\(pid {os.getpid()} on"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_cli_refuses_a_locked_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}))
    status = main(["run", *ARGS, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"pid {os.getpid()}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "hostname": socket.gethostname(), "started": "then"})
    )
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"stale lock of {tmp_path} (pid {dead.pid}" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_released_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunLock(tmp_path):
        raise KeyboardInterrupt
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "hostname": "elsewhere.invalid"}))
    with pytest.raises(MarsError, match=r"pid 1 on elsewhere\.invalid"):
        RunLock(tmp_path).acquire()


def test_metrics_log_drops_a_torn_tail_and_cuts_back(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.append({"round": 1})
        size = log.size
        log.append({"round": 2, "text": "é"})
    assert log.lines == 2 and log.size == path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b'{"round": 3, "acc')  # a write cut short by a kill
    assert read_records(path) == [{"round": 1}, {"round": 2, "text": "é"}]
    with MetricsLog(path, size=size, lines=1) as log:
        log.append({"round": 2})
    assert read_records(path) == [{"round": 1}, {"round": 2}]
    with pytest.raises(MarsError, match="shorter than the 9999 bytes"):
        MetricsLog(path, size=9999)


def test_non_finite_error_names_the_first_bad_step_across_epochs_and_chunks():
    from mars_jax.train import StepStats, _non_finite_error

    # 2 epochs of 6 steps in chunks of 4 (the second chunk of each epoch has 2 padding
    # steps), 3 ensemble members; member 2's gradient norm is inf at step 11 (epoch 2,
    # chunk 2, row 0), and every later step is NaN.
    chunks = [StepStats(np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)) for _ in range(4)]
    chunks[3].grad_norm[0, 2] = np.inf
    chunks[3].loss[1] = np.nan
    error = _non_finite_error(
        "method 'mars', round 4",
        chunks,
        chunk=4,
        chunks_per_epoch=2,
        steps_per_epoch=6,
        total=12,
    )
    assert str(error).startswith(
        "method 'mars', round 4, step 11 of 12, ensemble member 2: training gradient norm is inf"
    )
    assert isinstance(error, MarsError)
