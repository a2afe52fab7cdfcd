"""A multi-host run: two CPU processes on localhost joined by ``parallel.distributed = true``.

Each process simulates two CPU devices, so the mesh spans four devices on two hosts.
``jax.distributed.initialize()`` finds the job in a SLURM-like environment (process count and
id) with the coordinator given as ``JAX_COORDINATOR_ADDRESS`` on a free port; CPU collectives
across the processes go through gloo (JAX's default on CPU).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mars_jax.runner.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")
ARGS = [
    TINY,
    'refine.methods=["mars"]',
    "refine.rounds=1",
    "eval.num_bootstrap=0",
    "output.plots=false",
]
HELDOUT = 200  # tiny.toml's held-out pairs, a multiple of the 4 devices
TIMEOUT = 180

# Runs the CLI, then prints this process's place in the job and the held-out rows it holds.
DRIVER = f"""
import json
import sys
import jax
from mars_jax import parallel
from mars_jax.runner.cli import main

status = main(sys.argv[1:])
mesh = parallel.build_mesh(parallel.MeshSettings(enabled=True))
rows = parallel.host_rows({HELDOUT}, mesh)
print(json.dumps({{
    "status": status,
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": len(jax.devices()),
    "rows": [rows.start, rows.stop],
}}))
sys.exit(status)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _finals(run_dir: Path) -> dict[str, dict[str, float]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        method: {name: entry["final"][name] for name in ("accuracy", "tie_rate", "auc")}
        for method, entry in summary["methods"].items()
    }


def test_two_processes_split_the_rows_and_match_the_single_process_run(tmp_path):
    port = _free_port()
    processes = []
    xla_flags = os.environ.get("XLA_FLAGS", "")  # the test run's, with 2 host devices added
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "SLURM_JOB_ID": "1",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(index),
            "SLURM_LOCALID": str(index),
        }
        argv = ["run", *ARGS, "parallel.enabled=true", "parallel.distributed=true"]
        command = [sys.executable, "-c", DRIVER, *argv, "--out", str(tmp_path / f"host{index}")]
        processes.append(
            subprocess.Popen(
                [*command, "--quiet"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert [r["process"] for r in reports] == [0, 1]
    assert all(r["processes"] == 2 and r["devices"] == 4 for r in reports)
    # Each host holds its own half of the held-out rows.
    assert [r["rows"] for r in reports] == [[0, HELDOUT // 2], [HELDOUT // 2, HELDOUT]]

    host0, host1 = tmp_path / "host0", tmp_path / "host1"
    assert sorted(p.name for p in (host0 / "models").iterdir()) == ["mars"]
    assert not (host1 / "models").exists()  # process 0 alone saves the final models
    assert not (host1 / "checkpoints").exists()  # and keeps the run's checkpoints
    assert (host0 / "checkpoints").is_dir()

    single = tmp_path / "single"
    assert main(["run", *ARGS, "--out", str(single), "--quiet"]) == 0
    expected = _finals(single)
    # Counts are equal. The AUC ranks the held-out margins, which 4 devices sum in another
    # order than 1 (last bits), so a near tie may swap: equal within 1e-4.
    for finals in (_finals(host0), _finals(host1)):
        assert finals.keys() == expected.keys()
        for method, metrics in finals.items():
            want = expected[method]
            assert metrics["accuracy"] == want["accuracy"]
            assert metrics["tie_rate"] == want["tie_rate"]
            assert metrics["auc"] == pytest.approx(want["auc"], abs=1e-4)
