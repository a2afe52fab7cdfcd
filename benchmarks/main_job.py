"""Benchmark of the README's main job: ``mars-jax run`` end to end, as a user runs it.

Target: the main job (the built-in default config, all default methods) finishes in under
2 minutes on a 2-core CPU.

Runs ``mars-jax run --out DIR --quiet`` (the console script beside ``sys.executable``, else
``python -m mars_jax.runner.cli``) in a subprocess and times the wall clock of the whole process:
interpreter start, imports, data, compilation, every method's rounds, the run directory and
the plots. ``summary.json`` gives the in-process time of ``run_experiment`` and each method's
round time. For information, the wall time is also divided by that of a trivial
``python -c "import jax"`` subprocess timed in the same run (median of a few, side by side
with each job), a ratio that depends less on the machine's speed than seconds do.

``--smoke`` runs ``configs/tiny.toml`` instead of the default.

Usage::

    python benchmarks/main_job.py [--smoke] [--config PATH] [--repeats 3]
        [--baseline-repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 120.0
TARGET_CPUS = 2
SMOKE = {"config": REPO_ROOT / "configs" / "tiny.toml", "repeats": 1, "baseline_repeats": 1}
FULL = {"config": None, "repeats": 3, "baseline_repeats": 3}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def library_digest() -> str:
    """Short SHA-256 of the library's Python sources: which code the numbers belong to."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "mars_jax").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def cli_command() -> list[str]:
    """How a user starts the CLI: the ``mars-jax`` script of this environment."""
    script = Path(sys.executable).parent / "mars-jax"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mars_jax.runner.cli"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def time_import_jax(workdir: Path) -> float:
    """Wall seconds of ``python -c "import jax"`` in a subprocess."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import jax"],
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"python -c 'import jax' failed:\n{proc.stderr[-4000:]}")
    return seconds


def run_job(command: list[str], workdir: Path, out_dir: Path) -> dict:
    """Run the job once in a subprocess; its wall seconds and what summary.json says."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*command, "--out", str(out_dir), "--quiet"],
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    summary = json.loads((out_dir / "summary.json").read_text())
    order = json.loads((out_dir / "config.json").read_text())["config"]["refine"]["methods"]
    methods = {}
    for method in order:  # in the config's order (summary.json sorts its keys)
        result = summary["methods"][method]
        methods[method] = {
            "rounds": result["rounds_run"],
            "seconds": result["seconds"],
            "accuracy": result["final"]["accuracy"],
        }
    return {
        "wall_s": wall_s,
        "run_s": summary["seconds"],
        "methods": methods,
        "platform": summary["platform"],
        "plots": sorted(p.name for p in (out_dir / "plots").glob("*.png")),
    }


def format_table(report: dict) -> str:
    """Markdown tables: the job's wall time against the target, then per method."""
    walls = [run["wall_s"] for run in report["runs"]]
    lines = [
        "| job | runs | wall (s) median [min–max] | run_experiment (s) | import jax (s) "
        f"| wall / import jax | < {TARGET_S:.0f} s |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| {report['job']} | {len(walls)} | {report['wall_s']:.1f} "
        f"[{min(walls):.1f}–{max(walls):.1f}] | {report['run_s']:.1f} "
        f"| {report['import_jax_s']:.2f} | {report['ratio']:.1f} "
        f"| {'PASS' if report['under_target'] else 'FAIL'} |",
        "",
        "| method | rounds | rounds' time (s, median) | final held-out accuracy |",
        "|---|---:|---:|---:|",
    ]
    for method in report["methods"]:
        per_run = [run["methods"][method] for run in report["runs"]]
        seconds = statistics.median(m["seconds"] for m in per_run)
        lines.append(
            f"| {method} | {per_run[0]['rounds']} | {seconds:.2f} | {per_run[0]['accuracy']:.4f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="configs/tiny.toml instead")
    parser.add_argument("--config", type=Path, help="a config file (default: the built-in one)")
    parser.add_argument("--repeats", type=int, help="runs of the job, median reported (3)")
    parser.add_argument(
        "--baseline-repeats", type=int, help="'import jax' runs beside each job, median (3)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    for name, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.baseline_repeats < 1:
        parser.error("--repeats and --baseline-repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print markdown tables and return the numbers."""
    args = parse_args(argv)
    load_before = os.getloadavg()[0]  # other work on the machine adds noise
    config = None if args.config is None else args.config.resolve()
    command = [*cli_command(), "run", *([str(config)] if config else [])]
    job = f"mars-jax run {shown_path(config)}" if config else "mars-jax run (built-in default)"

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-main-job-") as tmp:
        workdir = Path(tmp)
        time_import_jax(workdir)  # unmeasured: warms the file cache for both
        for index in range(args.repeats):
            imports = [time_import_jax(workdir) for _ in range(args.baseline_repeats)]
            run = run_job(command, workdir, workdir / f"run-{index}")
            run["import_jax_s"] = statistics.median(imports)
            run["ratio"] = run["wall_s"] / run["import_jax_s"]
            runs.append(run)

    wall_s = statistics.median(run["wall_s"] for run in runs)
    first = runs[0]
    report = {
        "job": job,
        "command": " ".join(
            ["mars-jax run", *([shown_path(config)] if config else []), "--out DIR --quiet"]
        ),
        "target_s": TARGET_S,
        "repeats": args.repeats,
        "baseline_repeats": args.baseline_repeats,
        "wall_s": wall_s,
        "run_s": statistics.median(run["run_s"] for run in runs),
        "import_jax_s": statistics.median(run["import_jax_s"] for run in runs),
        "ratio": statistics.median(run["ratio"] for run in runs),
        "under_target": wall_s < TARGET_S,
        "methods": list(first["methods"]),
        "jax": first["platform"]["jax"],
        "backend": first["platform"]["backend"],
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_1m_before": load_before,
        "library_digest": library_digest(),
        "runs": runs,
    }
    print(
        f"main job: {report['command']}; median of {args.repeats} run(s); "
        f"jax {report['jax']} {report['backend']}, {report['cpu_count']} CPUs "
        f"({report['cpu_model']}), load average {load_before:.2f} before\n"
    )
    print(format_table(report))
    verdict = "met" if report["under_target"] else "NOT met"
    print(f"\ntarget (under {TARGET_S:.0f} s wall): {verdict}")
    if report["cpu_count"] != TARGET_CPUS:
        print(
            f"note: the target is for a {TARGET_CPUS}-core CPU; this machine has {os.cpu_count()}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
