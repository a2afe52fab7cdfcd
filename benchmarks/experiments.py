"""The experiment grid of the method's claims: accuracy, curvature, sample efficiency, noise.

Runs the library's own runner (:func:`mars_jax.runner.experiment.run_experiment`) in-process, one
*cell* at a time. A cell is (experiment, data set, name, method set, config overrides) and
runs once per seed pairing ``k = 0..S-1``: ``train.seed = k`` and ``data.seed`` = the data
set's own plus ``k``, so the base subset, the held-out set and the pool change with the training
seed and the intervals cover both. Every (cell, seed) writes one raw JSON file

    RESULTS/EXPERIMENT/DATASET/CELL-seedK.json

holding, per method, the final held-out accuracy, ROC-AUC, signal-to-noise and calibration
error, the accuracy of every round, the curvature of every round (curvature cells), and the
run's config hash, seconds, platform and command. A cell whose file exists is skipped, so an
interrupted grid resumes where it stopped. ``benchmarks/make_report.py`` turns the files into
``benchmarks/REPORT.md``.

A data set is a config file: ``--datasets NAME`` reads ``configs/experiments/NAME.toml`` (or
give a path to any ``.toml``; its stem is the name). Everything that defines the data, e.g.
the pool (``data.pool``), belongs in that file, so a new data set or pool is a new file that
``extends`` an existing one. The experiments add their own overrides on top:

- ``accuracy``: cell ``main``, the data set's methods (none, uniform, West-of-N, MARS with
  absolute and signed margins, ensemble disagreement).
- ``curvature``: cell ``curvature``, uniform and MARS, ``curvature.enabled = true`` with the
  Hessian and Gauss-Newton operators (top eigenvalue, trace, density per round).
- ``sample_efficiency``: cells ``budget-F`` for F = 10, 30, 50, 100 (% of the data set's
  ``refine.budget`` B), uniform and MARS.
- ``label_noise``: cell ``noise-10``, the accuracy cell with ``data.label_flip_rate = 0.1``.

- ``sensitivity``: cells ``tau-T`` for a fixed MARS temperature T = 0.1 (the paper's), 1 and
  10; ``normalized`` (tau 1 on |m| / std(|m|)); ``curriculum`` (a fixed tau moving
  geometrically from 0.1 in round 1 to 10 in the last); and ``v2`` (the revised method's
  settings: a fixed tau 0.5 and 2.5 times the data set's budget, i.e. B = 5,000 where
  B = 2,000), each with uniform, MARS and signed-margin MARS. Reported in full next to the
  claims, which are judged at the data set's own settings (the default ``target_ess`` mode).
- ``finetune``: cell ``finetune``, uniform and MARS with the text encoder trained end to end
  with the head (``model.finetune_encoder = true``, :data:`FINETUNE_OVERRIDES`); only for a
  data set of text pairs with a paraphrase pool directory, so it is not in the default list.

``--smoke`` runs the default experiments on ``configs/experiments/smoke.toml`` (configs/tiny.toml:
120 base pairs, 2 rounds, cheap curvature estimators, the Hessian only) with 2 seeds into
``--results`` (default: a new temporary folder), in about a minute.

Usage::

    python benchmarks/experiments.py [--experiments accuracy,curvature,...,finetune]
        [--datasets synthetic,hh-rlhf,...] [--seeds 5] [--results DIR]
        [--cells main,tau-10,...] [--compile-cache DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mars_jax.errors import MarsError  # noqa: E402
from mars_jax.files import write_json_atomic  # noqa: E402
from mars_jax.runner.config import Config, config_hash, config_to_dict, load_config  # noqa: E402
from mars_jax.runner.data import build_data  # noqa: E402
from mars_jax.runner.experiment import run_experiment  # noqa: E402

CONFIG_DIR = REPO_ROOT / "configs" / "experiments"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_COMPILE_CACHE = Path("~/.cache/mars_jax/xla").expanduser()
EXPERIMENTS = (
    "accuracy",
    "curvature",
    "sample_efficiency",
    "label_noise",
    "sensitivity",
    "finetune",
)
DEFAULT_EXPERIMENTS = EXPERIMENTS[:5]
TEMPERATURES = (0.1, 1.0, 10.0)
V2_TEMPERATURE = 0.5
V2_BUDGET_FACTOR = 2.5
SENSITIVITY_METHODS = ("uniform", "mars", "mars_signed")
FINETUNE_OVERRIDES = (
    "model.finetune_encoder=true",
    "train.learning_rate=1e-4",
    "train.batch_size=16",
    "train.warmup_epochs=2",
    "refine.rounds=3",
    "data.num_heldout_pairs=300",
)
"""A small fine-tune that fits a CPU: a learning rate common for small BERT encoders with a
fresh head, and 300 held-out pairs (each evaluation runs the encoder on all of them)."""
BUDGET_PERCENTS = (10, 30, 50, 100)
LABEL_FLIP_RATE = 0.1
PAIRED_METHODS = ("uniform", "mars")
CURVATURE_OPERATORS = ("hessian", "ggn")
SMOKE = {"datasets": ("smoke",), "seeds": 2, "curvature_operators": ("hessian",)}


class Cell(NamedTuple):
    """One configuration of the grid, run once per training seed.

    Attributes:
      experiment: one of EXPERIMENTS.
      dataset: the data set's name (its config file's stem).
      name: the cell's name within the experiment, e.g. ``budget-30``.
      methods: the methods to run, or ``None`` for the data set config's own.
      overrides: ``section.key=value`` strings applied over the data set's config.
    """

    experiment: str
    dataset: str
    name: str
    methods: tuple[str, ...] | None
    overrides: tuple[str, ...]

    def path(self, results: Path, seed: int) -> Path:
        """Where the cell's raw JSON for ``seed`` goes."""
        return results / self.experiment / self.dataset / f"{self.name}-seed{seed}.json"

    def config(self, config_path: Path, seed: int) -> Config:
        """The cell's validated config for seed pairing ``seed`` (training and data seed)."""
        overrides = list(self.overrides)
        if self.methods is not None:
            overrides.append("refine.methods=" + json.dumps(list(self.methods)))
        data_seed = load_config(config_path, overrides).data.seed + seed
        overrides += [f"train.seed={seed}", f"data.seed={data_seed}"]
        return load_config(config_path, overrides)


def dataset_config(name: str) -> tuple[str, Path]:
    """The data set's name and config file: a name in configs/experiments or a .toml path."""
    if name.endswith(".toml"):
        path = Path(name)
        return path.stem, path
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise MarsError(f"--datasets: unknown data set {name!r}; known: {', '.join(known)}")
    return name, path


def experiment_cells(
    experiment: str,
    dataset: str,
    config_path: Path,
    curvature_operators: Sequence[str] = CURVATURE_OPERATORS,
) -> list[Cell]:
    """The cells of ``experiment`` on one data set."""
    if experiment == "accuracy":
        return [Cell(experiment, dataset, "main", None, ())]
    if experiment == "curvature":
        overrides = (
            "curvature.enabled=true",
            "curvature.operators=" + json.dumps(list(curvature_operators)),
        )
        return [Cell(experiment, dataset, "curvature", PAIRED_METHODS, overrides)]
    if experiment == "sample_efficiency":
        budget = load_config(config_path).refine.budget
        return [
            Cell(
                experiment,
                dataset,
                f"budget-{percent}",
                PAIRED_METHODS,
                (f"refine.budget={max(1, round(budget * percent / 100))}",),
            )
            for percent in BUDGET_PERCENTS
        ]
    if experiment == "label_noise":
        flip = (f"data.label_flip_rate={LABEL_FLIP_RATE}",)
        return [Cell(experiment, dataset, f"noise-{round(LABEL_FLIP_RATE * 100)}", None, flip)]
    if experiment == "sensitivity":
        fixed = "refine.temperature_mode=fixed"
        cells = [
            Cell(
                experiment,
                dataset,
                f"tau-{t:g}",
                SENSITIVITY_METHODS,
                (fixed, f"refine.temperature={t}"),
            )
            for t in TEMPERATURES
        ]
        normalized = ("refine.temperature_mode=normalized", "refine.temperature=1")
        curriculum = (
            fixed,
            f"refine.temperature={TEMPERATURES[0]}",
            f"refine.final_temperature={TEMPERATURES[-1]}",
        )
        budget = round(V2_BUDGET_FACTOR * load_config(config_path).refine.budget)
        v2 = (fixed, f"refine.temperature={V2_TEMPERATURE}", f"refine.budget={budget}")
        return [
            *cells,
            Cell(experiment, dataset, "normalized", SENSITIVITY_METHODS, normalized),
            Cell(experiment, dataset, "curriculum", SENSITIVITY_METHODS, curriculum),
            Cell(experiment, dataset, "v2", SENSITIVITY_METHODS, v2),
        ]
    if experiment == "finetune":
        return [Cell(experiment, dataset, "finetune", PAIRED_METHODS, FINETUNE_OVERRIDES)]
    raise MarsError(f"--experiments: unknown experiment {experiment!r}; known: {EXPERIMENTS}")


def machine() -> dict[str, Any]:
    """The CPU model and count beside JAX's view of the devices."""
    import jax

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
    }


def _method_record(summary: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    final = summary["final"]
    record = {
        "accuracy": final["accuracy"],
        "accuracy_lower": final.get("accuracy_lower"),
        "accuracy_upper": final.get("accuracy_upper"),
        "auc": final.get("auc"),
        "snr": final["signal_to_noise"],
        "ece": final["calibration_error"],
        "accuracy_per_round": summary["accuracy_per_round"],
        "rounds_run": summary["rounds_run"],
        "budget_spent": summary["budget_spent"],
        "budget_max_per_round": [r["budget_max"] for r in rounds],
        "budget_zero_fraction_per_round": [r["budget_zero_fraction"] for r in rounds],
        "allocation_per_round": [r["allocation"] for r in rounds],
        "margin_statistics_per_round": [r["margin_statistics"] for r in rounds],
        "seconds": summary["seconds"],
    }
    curvature = [r["curvature"] for r in rounds if "curvature" in r]
    if curvature:
        record["curvature_per_round"] = curvature
    return record


class _DataCache:
    """The last data set built, reused while the data section of the config (and whether the
    encoder is trained, which turns features into token ids) is unchanged."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._data: Any = None

    def get(self, config: Config) -> Any:
        key = json.dumps(
            [config_to_dict(config)["data"], config.model.finetune_encoder], sort_keys=True
        )
        if key != self._key:
            self._key, self._data = None, None
            self._data = build_data(config)
            self._key = key
        return self._data


def run_cell(
    cell: Cell, config_path: Path, seed: int, results: Path, cache: _DataCache, command: str
) -> dict[str, Any]:
    """Run one (cell, seed) through ``run_experiment`` and write its raw JSON."""
    config = cell.config(config_path, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mars-exp-") as tmp:
        run_dir = Path(tmp)
        summary = run_experiment(config, run_dir, data=cache.get(config))
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rounds = [json.loads(line) for line in lines]
    record = {
        "experiment": cell.experiment,
        "dataset": cell.dataset,
        "cell": cell.name,
        "seed": seed,
        "config_file": _shown(config_path),
        "overrides": list(cell.overrides),
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "data": summary["data"],
        "floors": summary.get("floors"),
        "methods": {
            method: _method_record(result, [r for r in rounds if r["method"] == method])
            for method, result in summary["methods"].items()
        },
        "seconds": time.perf_counter() - started,
        "platform": {**summary["platform"], **machine()},
        "version": summary["version"],
        "command": command,
    }
    write_json_atomic(cell.path(results, seed), record)
    return record


@contextlib.contextmanager
def compile_cache(path: Path | None) -> Iterator[None]:
    """JAX's persistent compilation cache in ``path`` (every compile cached) while inside.

    Each run builds fresh jitted functions, so without it every (cell, seed) recompiles the
    same programs; the cache is keyed by the compiled program, so seeds after the first reuse
    them. Numbers are unchanged: a cache hit loads the same executable. ``None``: no cache.
    """
    if path is None:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (str(path), 0.0, -1), strict=True):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--experiments", default=",".join(DEFAULT_EXPERIMENTS))
    parser.add_argument("--datasets", default=None, help="default: synthetic (smoke: smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="default: 5 (smoke: 2)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument(
        "--compile-cache",
        default=str(DEFAULT_COMPILE_CACHE),
        help="folder of JAX's persistent compilation cache ('' for none)",
    )
    parser.add_argument(
        "--cells", default=None, help="only these cells, e.g. main,tau-10 (default: every cell)"
    )
    parser.add_argument("--smoke", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the grid; returns the results folder and the (cell, seed) files run and skipped."""
    args = parse_args(argv)
    command = "python benchmarks/experiments.py " + " ".join(sys.argv[1:] if argv is None else argv)
    experiments = _split(args.experiments)
    for experiment in experiments:
        if experiment not in EXPERIMENTS:
            raise MarsError(
                f"--experiments: unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}"
            )
    default_datasets = SMOKE["datasets"] if args.smoke else ("synthetic",)
    datasets = [dataset_config(name) for name in (_split(args.datasets or "") or default_datasets)]
    seeds = args.seeds if args.seeds is not None else (SMOKE["seeds"] if args.smoke else 5)
    if seeds < 1:
        raise MarsError(f"--seeds: expected at least 1, got {seeds}")
    if args.results is not None:
        results = args.results
    else:
        results = Path(tempfile.mkdtemp(prefix="mars-smoke-")) if args.smoke else DEFAULT_RESULTS

    operators = SMOKE["curvature_operators"] if args.smoke else CURVATURE_OPERATORS
    cache = _DataCache()
    ran: list[str] = []
    skipped: list[str] = []
    cells = set(_split(args.cells)) if args.cells is not None else None
    with compile_cache(Path(args.compile_cache) if args.compile_cache else None):
        _run_grid(
            experiments, datasets, seeds, results, operators, cells, cache, command, ran, skipped
        )
    print(f"{len(ran)} run, {len(skipped)} skipped (already in {results})")
    return {"results": str(results), "ran": ran, "skipped": skipped}


def _run_grid(
    experiments: list[str],
    datasets: list[tuple[str, Path]],
    seeds: int,
    results: Path,
    operators: Sequence[str],
    cells: set[str] | None,
    cache: _DataCache,
    command: str,
    ran: list[str],
    skipped: list[str],
) -> None:
    grid = [
        (cell, config_path)
        for experiment in experiments
        for dataset, config_path in datasets
        for cell in experiment_cells(experiment, dataset, config_path, operators)
    ]
    if cells is not None:
        unknown = sorted(cells - {cell.name for cell, _ in grid})
        if unknown:
            known = ", ".join(dict.fromkeys(cell.name for cell, _ in grid))
            missing = ", ".join(map(repr, unknown))
            raise MarsError(f"--cells: no cell {missing} in these experiments; known: {known}")
        grid = [(cell, path) for cell, path in grid if cell.name in cells]
    for cell, config_path in grid:  # every config error before the first run
        cell.config(config_path, 0)
    for cell, config_path in grid:
        for seed in range(seeds):
            path = cell.path(results, seed)
            shown = str(path.relative_to(results))
            if path.exists():
                skipped.append(shown)
                continue
            record = run_cell(cell, config_path, seed, results, cache, command)
            accuracies = ", ".join(f"{m} {r['accuracy']:.4f}" for m, r in record["methods"].items())
            print(f"{shown}: {record['seconds']:.1f} s; {accuracies}", flush=True)
            ran.append(shown)


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: user errors print one line and exit 2."""
    try:
        main(argv)
    except MarsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
