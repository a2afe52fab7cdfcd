"""Check that a change of code leaves a run's results bit-identical.

Runs a config (any ``mars-jax run`` arguments) into a fresh directory and reduces its results
(``summary.json`` and ``metrics.jsonl``, plus the curvature reports when enabled) to what the
code computes: every wall-clock timing, the platform description and the run directory's path
are dropped; every number is kept exactly (floats as their ``repr``). Save that reduction once
before a refactor, then check it after::

    python benchmarks/identity.py save benchmarks/results/identity/main.json
    python benchmarks/identity.py check benchmarks/results/identity/main.json
    python benchmarks/identity.py save REF.json -- configs/experiments/tldr-pool.toml \
        curvature.enabled=true

``check`` exits 1 and prints the first differing entries when the results differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DROPPED = frozenset({"seconds", "timings", "platform", "version"})


def reduce(value: Any) -> Any:
    """The results without timings, platform and version (recursively)."""
    if isinstance(value, dict):
        return {k: reduce(v) for k, v in sorted(value.items()) if k not in DROPPED}
    if isinstance(value, list):
        return [reduce(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    return value


def run_results(run_args: list[str]) -> dict[str, Any]:
    """Run ``mars-jax run RUN_ARGS`` into a temporary directory and reduce its results."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "mars_jax", "run", *run_args, "--out", str(out)]
        command += ["--quiet", "output.plots=false"]
        subprocess.run(command, check=True)
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        curvature = {
            str(path.relative_to(out)): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((out / "curvature").rglob("*.json"))
        }
    return reduce(
        {
            "args": run_args,
            "summary": summary,
            "metrics": [json.loads(line) for line in lines],
            "curvature": curvature,
        }
    )


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Paths where two reduced results differ (first few)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}/{k}: missing" for k in expected if k not in actual]
        found += [f"{path}/{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                found += differences(expected[k], actual[k], f"{path}/{k}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in differences(e, a, f"{path}[{i}]")
        ]
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "check"))
    parser.add_argument("reference", type=Path, help="reduced results (JSON)")
    parser.add_argument("run_args", nargs="*", help="mars-jax run arguments (after --)")
    args = parser.parse_args(argv)
    if args.action == "save":
        results = run_results(args.run_args)
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"saved {args.reference}")
        return 0
    expected = json.loads(args.reference.read_text(encoding="utf-8"))
    found = differences(expected, run_results(expected["args"]))
    for line in found[:20]:
        print(line)
    print(f"{args.reference}: {'identical' if not found else f'{len(found)} differences'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
