"""Real-text modelling grid (issue 13): representation x standardisation x pool x method.

Runs ``mars-jax run CONFIG`` in one process per grid (data built once per data setting, from
the embedding cache) and writes one JSON line per (setting, seed) to ``--out``: held-out and
validation accuracy per method, and the run's floors. Defaults are chosen on the validation
accuracy only; the held-out accuracy is reported, never tuned on.

  python benchmarks/realtext.py configs/tldr.toml --out benchmarks/results/realtext/tldr.jsonl \
      --representations joined response pair --standardize features difference --seeds 0 1 2
  python benchmarks/realtext.py --smoke     # a tiny synthetic-free check (used by a test)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import run_experiment


def run_grid(config_path: str | None, base: list[str], args: argparse.Namespace) -> list[dict]:
    """Every setting of the grid and seed; returns the records (also appended to args.out)."""
    records = []
    grid = itertools.product(
        args.representations, args.standardize, args.length_feature, args.pools
    )
    for representation, standardize, length, pool in grid:
        data_overrides = [
            f"data.representation={representation}",
            f"data.standardize={standardize}",
            f"data.length_feature={str(length).lower()}",
        ]
        methods = ["none"] if pool == "none" else args.methods
        pool_overrides = [] if pool == "none" else [f"data.pool={pool}"]
        data_config = load_config(config_path, [*base, *data_overrides, *pool_overrides])
        data = build_data(data_config)
        for seed in args.seeds:
            overrides = [
                *base,
                *data_overrides,
                *pool_overrides,
                f"train.seed={seed}",
                f"refine.methods={json.dumps(methods)}",
                "output.plots=false",
                "output.progress=false",
                "eval.num_bootstrap=0",
            ]
            config = load_config(config_path, overrides)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                summary = run_experiment(config, Path(run_dir), data=data)
            record = {
                "config": config_path,
                "overrides": overrides,
                "representation": representation,
                "standardize": standardize,
                "length_feature": length,
                "pool": pool,
                "seed": seed,
                "floors": {k: v["accuracy"] for k, v in summary.get("floors", {}).items()},
                "methods": {
                    method: {
                        "heldout": result["final"]["accuracy"],
                        "validation": result.get("validation", {}).get("accuracy"),
                        "ece": result["final"]["calibration_error"],
                    }
                    for method, result in summary["methods"].items()
                },
                "seconds": time.perf_counter() - started,
            }
            print(json.dumps(record), flush=True)
            records.append(record)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*", help="SECTION.KEY=VALUE for every run")
    parser.add_argument("--out")
    parser.add_argument("--representations", nargs="+", default=["joined"])
    parser.add_argument("--standardize", nargs="+", default=["features"])
    parser.add_argument("--length-feature", nargs="+", type=_bool, default=[False])
    parser.add_argument("--pools", nargs="+", default=["none"], help="'none': method none only")
    parser.add_argument("--methods", nargs="+", default=["none", "uniform"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--smoke", action="store_true", help="tiny grid on configs/tiny.toml")
    parser.add_argument("--table", nargs="+", help="print a markdown table of these results")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.smoke:
        args.seeds = [0]
        overrides = ["refine.rounds=1", "data.num_base_pairs=60", "data.num_heldout_pairs=60"]
        records = run_grid("configs/tiny.toml", overrides, args)
        return 0 if records and "linear_probe" in records[0]["floors"] else 1
    return 0 if run_grid(args.config, args.overrides, args) else 1


def table(paths: list[str]) -> str:
    """A markdown table of the records in ``paths``: one row per setting and method, accuracy
    in % as mean over seeds (validation, held-out), with the floors."""
    rows: dict[tuple, dict[str, list[float]]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            head = "linear" if "model.hidden_sizes=[]" in record["overrides"] else "MLP"
            for method, result in record["methods"].items():
                key = (
                    Path(record["config"]).stem,
                    record["representation"],
                    record["standardize"],
                    "yes" if record["length_feature"] else "no",
                    head,
                    record["pool"],
                    method,
                )
                cell = rows.setdefault(key, {"val": [], "held": [], "len": [], "probe": []})
                cell["val"].append(result["validation"])
                cell["held"].append(result["heldout"])
                cell["len"].append(record["floors"].get("length", float("nan")))
                cell["probe"].append(record["floors"]["linear_probe"])
    mean = lambda v: f"{100 * sum(v) / len(v):.1f}"  # noqa: E731
    header = (
        "| data | representation | standardize | length feature | head | pool | method | seeds "
        "| validation % | held-out % | length floor % | probe floor % |"
    )
    lines = [header, "|" + "---|" * 12]
    for key, cell in rows.items():
        lines.append(
            "| "
            + " | ".join(
                [*key, str(len(cell["held"]))]
                + [mean(cell[name]) for name in ("val", "held", "len", "probe")]
            )
            + " |"
        )
    return "\n".join(lines)


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


if __name__ == "__main__":
    sys.exit(main())
