"""Quiet-machine protocol shared by the peer benchmarks (mars_jax against PyTorch tools).

A timing ratio between two frameworks is only meaningful on an idle machine: torch's OpenMP
threads stall when one of them loses its core, XLA's pool degrades differently, so a loaded
machine can move a ratio by 10x. Every peer benchmark therefore:

1. checks the machine before it starts (:class:`QuietRun`): the 1-minute load average per
   core must be at most :data:`MAX_LOAD_PER_CORE`, else the run is refused (``SystemExit``)
   unless the user passes ``--allow-loaded`` (:func:`add_argument`), in which case every table
   it prints is marked LOADED with the load numbers (:meth:`QuietRun.mark`);
2. records the CPU model and the load averages before and after (:meth:`QuietRun.finish`,
   which the benchmark stores in its JSON);
3. interleaves the tools repetition by repetition (:func:`interleave`) and reports the
   median and the minimum of each (:func:`summary`).

Usage in a benchmark::

    import quiet
    quiet.add_argument(parser)
    machine = quiet.QuietRun(allow_loaded=args.allow_loaded or args.smoke)
    times = quiet.interleave({"mars_jax": run_jax, "torch": run_torch}, repeats=5)
    stats = {name: quiet.summary(seconds) for name, seconds in times.items()}
    print(machine.mark(table))
    report["machine"] = machine.finish()
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_LOAD_PER_CORE = 0.5  # 1-minute load average per core above which a run is refused
PAUSE_S = 0.2  # seconds before each timed call: the last call's worker threads go idle

__all__ = [
    "MAX_LOAD_PER_CORE",
    "QuietRun",
    "add_argument",
    "cpu_model",
    "interleave",
    "summary",
]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` (``"unknown"`` where there is none)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-loaded`` to a benchmark's argument parser."""
    parser.add_argument(
        "--allow-loaded",
        action="store_true",
        help=f"run even if the 1-minute load average is above {MAX_LOAD_PER_CORE} per core; "
        "every table is then marked LOADED with the load numbers",
    )


class QuietRun:
    """The machine's state around one benchmark run; refuses a loaded start.

    Args:
      allow_loaded: run anyway when loaded (tables are then marked LOADED).
      loadavg: the load-average reader (default ``os.getloadavg``).
      cores: CPUs to divide the load by (default: this process's CPU affinity).

    Raises:
      SystemExit: the 1-minute load per core is above :data:`MAX_LOAD_PER_CORE` and
        ``allow_loaded`` is False.
    """

    def __init__(
        self,
        *,
        allow_loaded: bool,
        loadavg: Callable[[], tuple[float, float, float]] | None = None,
        cores: int | None = None,
    ) -> None:
        self._loadavg = loadavg or os.getloadavg
        self.cores = cores or _cores()
        self.cpu_model = cpu_model()
        self.before = tuple(self._loadavg())
        self.after: tuple[float, ...] | None = None
        self.loaded = self.before[0] > MAX_LOAD_PER_CORE * self.cores
        if self.loaded and not allow_loaded:
            raise SystemExit(
                f"benchmark refused: 1-minute load average {self.before[0]:.2f} on "
                f"{self.cores} CPUs is above {MAX_LOAD_PER_CORE} per core; rerun on a quiet "
                "machine, or pass --allow-loaded (every table is then marked LOADED)"
            )

    def describe(self) -> str:
        """One line: CPU model, cores and the load averages seen so far."""
        after = "" if self.after is None else f", after {self.after[0]:.2f}"
        return (
            f"CPU {self.cpu_model} ({self.cores} CPUs); 1-minute load average before "
            f"{self.before[0]:.2f}{after}"
        )

    def mark(self, table: str) -> str:
        """``table``, preceded by a LOADED line when the run started on a loaded machine or
        the machine is loaded now (other jobs that started during the run)."""
        now = self._loadavg()[0]
        if not self.loaded and now <= MAX_LOAD_PER_CORE * self.cores:
            return table
        return (
            f"**LOADED** (1-minute load average {self.before[0]:.2f} at the start, {now:.2f} "
            f"now, on {self.cores} CPUs; limit {MAX_LOAD_PER_CORE} per core): ratios against "
            f"peers are not trustworthy.\n\n{table}"
        )

    def finish(self) -> dict[str, Any]:
        """Record the load after the run; the machine's description for the JSON report."""
        self.after = tuple(self._loadavg())
        return {
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "load_before": list(self.before),
            "load_after": list(self.after),
            "max_load_per_core": MAX_LOAD_PER_CORE,
            "loaded": self.loaded,
        }


def interleave(
    fns: dict[str, Callable[[], Any]], repeats: int, pause: float = PAUSE_S
) -> dict[str, list[float]]:
    """``repeats`` rounds of calling every ``fn`` once in turn; seconds per call, per name.

    A moment of disturbance then hits every tool of one round, not one tool's whole series.
    Each ``fn`` must return only once its work is done (block on JAX results).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    """``{"median_s", "min_s"}`` of one tool's repetitions (the minimum: its least disturbed)."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds)}
