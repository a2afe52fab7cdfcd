"""The tiny 2-method x 3-round run that tests/test_resume.py and tests/test_faults.py kill,
damage and resume: its command line, a shared uninterrupted reference, and the comparison.

Subprocesses share the test run's JAX compilation cache (tests/conftest.py), so only the
first one pays for compilation. The reference is built once per test run: by the first test
module that needs it, in a folder shared by the xdist workers, under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from mars_jax.checkpoint import load_params, read_model_info
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.runner.cli import main
from mars_jax.runner.locks import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")
METHODS = ("uniform", "mars")
ARGS = [
    TINY,
    'refine.methods=["uniform", "mars"]',
    "refine.rounds=3",
    "refine.synthetic_set=cumulative",
    "data.num_heldout_pairs=50",
    "eval.num_bootstrap=0",
    "output.plots=false",
]
TIMING_FIELDS = ("timings", "seconds")
RUN_TIMEOUT = 120


def subprocess_env() -> dict[str, str]:
    """The environment of CLI subprocesses: this checkout, CPU, the test run's XLA cache."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def command(out: Path, *extra: str, driver: str | None = None) -> list[str]:
    """``mars-jax run ARGS --out OUT --quiet EXTRA``, through ``driver`` (Python source)."""
    head = (
        [sys.executable, "-c", driver] if driver else [sys.executable, "-m", "mars_jax.runner.cli"]
    )
    return [*head, "run", *ARGS, "--out", str(out), "--quiet", *extra]


def run(env, out: Path, *extra: str, driver: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(out, *extra, driver=driver),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=out.parent,
    )


def run_in_process(capsys, caplog, out: Path, *extra: str) -> tuple[int, str]:
    """``mars-jax run ARGS --out OUT --quiet EXTRA`` through ``cli.main``: the exit status and
    what a real process would print on stderr, log records of WARNING and up included."""
    capsys.readouterr()
    caplog.clear()
    status = main(["run", *ARGS, "--out", str(out), "--quiet", *extra])
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return status, capsys.readouterr().err + "".join(f"{line}\n" for line in logged)


def reference_run(tmp_path_factory) -> Path:
    """The finished uninterrupted run (in a subprocess), built once per test run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder of this test run, above every worker's own
    out = root / "resume-reference" / "run"
    out.parent.mkdir(exist_ok=True)
    with open(out.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "summary.json").exists():
            shutil.rmtree(out, ignore_errors=True)  # what a failed build left
            result = run(subprocess_env(), out)
            assert result.returncode == 0, result.stderr
    return out


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _params(run_dir: Path, method: str):
    folder = run_dir / "models" / method
    info = read_model_info(folder)
    model = mlp_reward_model(8, [16])
    like = jax.eval_shape(lambda: init_members(model, jax.random.key(0), info["num_members"]))
    return info, load_params(folder, like)


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """Bitwise equal params of every method, equal metrics apart from timings."""
    assert metrics(run_dir) == metrics(reference)
    assert len(metrics(run_dir)) == len(METHODS) * 3
    for method in METHODS:
        info, params = _params(run_dir, method)
        ref_info, ref_params = _params(reference, method)
        assert info == ref_info
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((reference / "summary.json").read_text())
    for method in METHODS:
        for key in ("rounds_run", "stop_reason", "budget_spent", "final", "accuracy_per_round"):
            assert summary["methods"][method][key] == ref_summary["methods"][method][key]
    assert not (run_dir / LOCK_NAME).exists()


def file_bytes(directory: Path) -> dict[Path, bytes]:
    """Every file under ``directory`` and its contents (to check that nothing changed)."""
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
