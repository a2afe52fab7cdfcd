"""Benchmark of a refinement round's overhead: scoring + allocation + drawing against training.

Target: at 10,000 base pairs with 25 pool pairs each (250,000 pool pairs, budget B = 2 N),
scoring + allocation + drawing take at most 10% of a round's training time.

For each size N the config is the built-in default with ``data.num_base_pairs=N``,
``data.paraphrases=5`` (25 pool pairs per base pair) and ``refine.budget=2N`` (B / N = 2 as
in the default, which is the N = 1,000 case). Every method gets its own
:class:`~mars_jax.refine.Refiner` from the same initial parameters and run key, as in
``run_experiment``; the methods' rounds are interleaved (round r of every method, then round
r + 1) so they share the machine's noise. Round 1 includes compilation and is discarded; the
numbers are medians over the remaining rounds of ``RoundSummary.timings``:

- overhead = score_pool + allocate + score: ``score_pool`` is West-of-N's scoring of the
  whole pool (it ranks the pool's pairs by their current margins every round; 0 for the
  other methods), ``allocate`` the weights, integer budgets and pool draws (one compiled
  call) and ``score`` the scoring of the base set after training (reused by the next
  allocation);
- ratio = overhead / train, computed per round, median reported; PASS when <= 0.10.

``evaluate`` (held-out metrics and bootstrap) is shown for information; it is not part of
the target's overhead.

Usage::

    python benchmarks/round_overhead.py [--smoke] [--sizes 10000 1000] [--rounds 6]
        [--methods mars uniform west_of_n] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.10
TARGET_SIZE = 10_000
PARAPHRASES = 5
BUDGET_PER_BASE_PAIR = 2
OVERHEAD_PHASES = ("score_pool", "allocate", "score")
PHASES = ("score_pool", "allocate", "train", "score", "evaluate")
DEFAULT_METHODS = ("mars", "uniform", "west_of_n")
SMOKE = {"sizes": [300], "rounds": 2}
FULL = {"sizes": [TARGET_SIZE, 1000], "rounds": 6}


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


def overrides(size: int) -> list[str]:
    """Config overrides of one size: N base pairs, 25 pool pairs each, budget 2 N."""
    return [
        f"data.num_base_pairs={size}",
        f"data.paraphrases={PARAPHRASES}",
        f"refine.budget={BUDGET_PER_BASE_PAIR * size}",
    ]


def measure_size(size: int, methods: list[str], rounds: int) -> list[dict]:
    """Run ``rounds`` interleaved rounds of every method at ``size`` base pairs; one row each."""
    import jax

    from mars_jax.models.heads import init_members
    from mars_jax.runner.config import load_config
    from mars_jax.runner.data import build_data
    from mars_jax.runner.experiment import build_refiners, build_trainer

    config = load_config(None, overrides(size))
    data, info = build_data(config)
    model, trainer = build_trainer(config, data)
    init_key, run_key = jax.random.split(jax.random.key(config.train.seed))

    refiners = build_refiners(config, trainer, methods=tuple(methods))
    states, init_s = {}, {}
    for method in methods:
        params = init_members(model, init_key, refiners[method].num_members)
        start = time.perf_counter()
        states[method] = refiners[method].init(run_key, params, data)
        init_s[method] = time.perf_counter() - start

    summaries: dict[str, list] = {method: [] for method in methods}
    for _ in range(rounds):
        for method in methods:
            states[method], summary = refiners[method].run_round(states[method], data)
            summaries[method].append(summary)

    rows = []
    for method in methods:
        first, measured = summaries[method][0], summaries[method][1:]
        phase = {name: statistics.median(s.timings[name] for s in measured) for name in PHASES}
        overheads = [sum(s.timings[name] for name in OVERHEAD_PHASES) for s in measured]
        ratios = [o / s.timings["train"] for o, s in zip(overheads, measured, strict=True)]
        ratio = statistics.median(ratios)
        rows.append(
            {
                "base_pairs": size,
                "pool_pairs": int(info["num_pool_pairs"]),
                "budget": config.refine.budget,
                "method": method,
                "train_pairs": measured[-1].num_train_pairs,
                "measured_rounds": len(measured),
                "init_s": init_s[method],
                "first_round_s": first.seconds,
                **{f"{name}_s": phase[name] for name in PHASES},
                "overhead_s": statistics.median(overheads),
                "round_s": statistics.median(s.seconds for s in measured),
                "ratio": ratio,
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "passed": ratio <= TARGET_RATIO,
            }
        )
    return rows


def format_table(report: dict) -> str:
    """Markdown table of the rows of ``report`` (milliseconds, medians over measured rounds)."""
    lines = [
        "| base pairs | pool pairs | method | train pairs | train (ms) | score (ms) "
        "| pool scoring (ms) | allocate + draw (ms) | overhead (ms) | overhead / train [min–max] "
        f"| ≤ {TARGET_RATIO:.2f} | evaluate (ms) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["rows"]:
        method = row["method"] + (" ¹" if row["method"] == "west_of_n" else "")
        lines.append(
            f"| {row['base_pairs']:,} | {row['pool_pairs']:,} | {method} "
            f"| {row['train_pairs']:,} | {row['train_s'] * 1e3:.1f} | {row['score_s'] * 1e3:.1f} "
            f"| {row['score_pool_s'] * 1e3:.1f} | {row['allocate_s'] * 1e3:.1f} "
            f"| {row['overhead_s'] * 1e3:.1f} "
            f"| {row['ratio']:.3f} [{row['ratio_min']:.3f}–{row['ratio_max']:.3f}] "
            f"| {'PASS' if row['passed'] else 'FAIL'} | {row['evaluate_s'] * 1e3:.1f} |"
        )
    lines.append("")
    lines.append(
        "¹ West-of-N scores the whole pool with the current model every round (pool scoring)."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="base pairs N per row group (default 10000 1000)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per method, the first discarded (default 6; smoke 2)"
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    for name, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is discarded)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a markdown table and return the numbers."""
    args = parse_args(argv)
    load_before = os.getloadavg()[0]  # other work on the machine adds noise
    import jax

    started = time.perf_counter()
    rows = [row for size in args.sizes for row in measure_size(size, args.methods, args.rounds)]
    # The target is MARS's; West-of-N ranks the whole pool by design and is reported apart.
    target_rows = [
        row for row in rows if row["base_pairs"] == TARGET_SIZE and row["method"] == "mars"
    ]
    report = {
        "target_ratio": TARGET_RATIO,
        "target_size": TARGET_SIZE,
        "target_met": all(row["passed"] for row in target_rows) if target_rows else None,
        "sizes": args.sizes,
        "methods": args.methods,
        "rounds": args.rounds,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_1m_before": load_before,
        "library_digest": library_digest(),
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    print(
        f"round overhead: sizes {args.sizes}, {PARAPHRASES**2} pool pairs per base pair, "
        f"budget {BUDGET_PER_BASE_PAIR} N, median of rounds 2-{args.rounds}; "
        f"jax {report['jax']} {report['backend']} ({report['device']}), "
        f"{report['cpu_count']} CPUs ({report['cpu_model']}), "
        f"load average {load_before:.2f} before\n"
    )
    print(format_table(report))
    if report["target_met"] is not None:
        verdict = "met" if report["target_met"] else "NOT met"
        print(
            f"\ntarget (MARS overhead ≤ {TARGET_RATIO:.0%} of training at N = {TARGET_SIZE:,}): "
            f"{verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
