"""Regenerate ``benchmarks/REPORT.md`` and its plots from the raw experiment JSON only.

Reads every ``RESULTS/EXPERIMENT/DATASET/CELL-seedK.json`` written by
``benchmarks/experiments.py`` and writes the report: per data set, the mean and 95%
t-interval over training seeds of held-out accuracy, ROC-AUC and signal-to-noise; the paired
difference MARS - uniform per seed with its interval, beside the original's reported numbers;
the curvature ratio MARS / uniform; accuracy against the synthetic budget; the drop under label
noise; the hardware and the exact commands; a verdict per claim from a stated rule; and the
speed ratios of ``benchmarks/README.md``'s Summary table, each with its device. Plots go to
``RESULTS/plots/*.png``.

Usage::

    python benchmarks/make_report.py [--results benchmarks/results] [--out benchmarks/REPORT.md]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "REPORT.md"
BENCH_README = REPO_ROOT / "benchmarks" / "README.md"
LEVEL = 0.95
BUDGET_CLAIM = 30
CURVATURE_CLAIM = 1.3
METHOD_ORDER = (
    "none",
    "uniform",
    "uniform_global",
    "west_of_n",
    "mars",
    "mars_signed",
    "ensemble",
    "adaboost",
)
# method.md section 5: held-out pairwise accuracy, uniform augmentation -> MARS.
ORIGINAL = {
    "synthetic": ("a synthetic preference suite", 0.804, 0.860),
    "synthetic-noisy": ("a synthetic preference suite", 0.804, 0.860),
    "stackexchange": ("StackExchange answer ranking", 0.689, 0.741),
    "tldr": ("OpenAI summarization", 0.712, 0.775),
    "tldr-pool": ("OpenAI summarization", 0.712, 0.775),
}
ORIGINAL_NOT_RUN = {"stackexchange": "StackExchange answer ranking, 68.9% -> 74.1%"}
POOL_NOTE = "representation-level pool: perturbed embeddings, not paraphrases"

Runs = dict[str, dict[str, dict[str, dict[int, dict[str, Any]]]]]


class Claim(NamedTuple):
    """One claim's verdict on one data set: the measured effect, the verdict and the full text."""

    claim: str
    dataset: str
    effect: str
    verdict: str
    text: str


def load_runs(results: Path) -> Runs:
    """``runs[experiment][dataset][cell][seed]``: every raw JSON under ``results``."""
    runs: Runs = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for path in sorted(results.glob("*/*/*-seed*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        runs[record["experiment"]][record["dataset"]][record["cell"]][record["seed"]] = record
    return runs


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and two-sided ``level`` Student-t interval of the mean (NaN bounds for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def fmt(stat: tuple[float, float, float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean [lo, hi]`` with ``scale`` applied (``n/a`` bounds when undefined)."""
    mean, lo, hi = (v * scale if v is not None else math.nan for v in stat)
    if math.isnan(mean):
        return "n/a"
    if math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def claim_verdict(lo: float, hi: float, null: float, claimed: float | None) -> str:
    """The sign rule, refined by the claimed size when the claim states one.

    With a claimed size: **supported** if the interval lies above ``null`` and reaches the
    claimed size; **partly supported** if it lies above ``null`` but below the claimed size;
    **not supported** if it lies below the claimed size without lying above ``null``;
    **inconclusive** if it contains both. Without one: :func:`verdict`.
    """
    if claimed is None or math.isnan(lo):
        return verdict(lo, hi, null)
    if lo > null:
        if hi < claimed:
            return "partly supported (the direction holds; the size is below the claimed one)"
        return "supported"
    if hi < claimed:
        if hi < null:
            return "not supported (the opposite holds)"
        return "not supported (no effect detected; the claimed size lies above the interval)"
    return "inconclusive"


def side(lo: float, hi: float, null: float = 0.0) -> str:
    """Where the interval lies relative to ``null``: above, below, or around it."""
    if math.isnan(lo):
        return "n/a (1 seed)"
    if lo > null:
        return f"above {null:g}"
    if hi < null:
        return f"below {null:g}"
    return f"contains {null:g}"


def verdict(lo: float, hi: float, null: float = 0.0) -> str:
    """The sign rule: the interval lies above ``null``, below it, or contains it."""
    if math.isnan(lo):
        return "inconclusive (fewer than 2 seeds)"
    if lo > null:
        return "supported"
    if hi < null:
        return "not supported (the opposite holds)"
    return "inconclusive"


def _methods(cell: dict[int, dict[str, Any]]) -> list[str]:
    found = {m for record in cell.values() for m in record["methods"]}
    return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))


def _values(cell: dict[int, dict[str, Any]], method: str, metric: str) -> list[float]:
    return [
        r["methods"][method][metric]
        for _, r in sorted(cell.items())
        if method in r["methods"] and r["methods"][method].get(metric) is not None
    ]


def paired(
    a: dict[int, dict[str, Any]],
    b: dict[int, dict[str, Any]],
    method_a: str,
    method_b: str,
    metric: str = "accuracy",
) -> list[float]:
    """Per seed present in both: ``a[method_a] - b[method_b]``."""
    seeds = sorted(set(a) & set(b))
    return [
        a[s]["methods"][method_a][metric] - b[s]["methods"][method_b][metric]
        for s in seeds
        if method_a in a[s]["methods"] and method_b in b[s]["methods"]
    ]


def _floor_rows(cell: dict[int, dict[str, Any]]) -> dict[str, list[float]]:
    """Each accuracy floor's held-out accuracy per seed (none for runs that predate floors)."""
    floors: dict[str, list[float]] = {}
    for record in cell.values():
        for name, floor in (record.get("floors") or {}).items():
            floors.setdefault(name, []).append(floor["accuracy"])
    return floors


def _floor_note(cell: dict[int, dict[str, Any]], floors: dict[str, list[float]]) -> list[str]:
    """One line: the floors were not recorded, or no method's mean beats the highest floor."""
    if not floors:
        return ["Accuracy floors were not recorded by these runs (they predate floors).", ""]
    name, highest = max(((n, sum(v) / len(v)) for n, v in floors.items()), key=lambda t: t[1])
    means = {m: sum(v) / len(v) for m in _methods(cell) if (v := _values(cell, m, "accuracy"))}
    if any(mean > highest for mean in means.values()):
        return []
    return [
        f"**Warning:** no method's mean accuracy beats the {name} floor "
        f"({100 * highest:.2f}%): compare methods with care.",
        "",
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _dataset_title(dataset: str, cell: dict[int, dict[str, Any]]) -> str:
    """The data set's name, noting a text data set whose pool is the perturbation one."""
    data = next(iter(cell.values()))["config"]["data"]
    if data["suite"] == "pairs" and data.get("pool", "perturb") == "perturb":
        return f"`{dataset}` ({POOL_NOTE})"
    return f"`{dataset}`"


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    fig.clear()


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _errorbar(ax: Any, xs: Sequence[float], stat_list: Sequence[tuple], **kwargs: Any) -> None:
    means = np.array([s[0] for s in stat_list])
    lo = np.array([s[1] if not math.isnan(s[1]) else s[0] for s in stat_list])
    hi = np.array([s[2] if not math.isnan(s[2]) else s[0] for s in stat_list])
    ax.errorbar(xs, means, yerr=[means - lo, hi - means], capsize=3, **kwargs)


class Report:
    """Accumulates the report's lines, plots and per-claim verdicts."""

    def __init__(self, runs: Runs, results: Path, out: Path) -> None:
        self.runs, self.results, self.out = runs, results, out
        self.plots = results / "plots"
        self.lines: list[str] = []
        self.claims: list[Claim] = []

    def plot_link(self, path: Path) -> str:
        try:
            shown = path.relative_to(self.out.parent)
        except ValueError:
            shown = path
        return f"![{path.stem}]({shown.as_posix()})"

    def accuracy(self) -> None:
        self.lines += ["## 1. Held-out accuracy, ROC-AUC and signal-to-noise", ""]
        self.lines += [
            f"Mean over training seeds and its {LEVEL:.0%} Student-t interval. Accuracy in %. "
            "The paired difference is taken per seed (same data, same initial parameters), "
            "then averaged; the table's last column says where its interval lies against 0. "
            "Rule for the claim, on MARS - uniform: where the original reports a gain for the "
            "data set, **supported** if the interval lies above 0 and reaches that gain, "
            "**partly supported** if above 0 but below the gain, **not supported** if below "
            "the gain and not above 0, **inconclusive** if it contains both 0 and the gain; "
            "elsewhere **supported** if above 0, **not supported** if below 0, "
            "**inconclusive** otherwise.",
            "",
        ]
        datasets = self.runs.get("accuracy", {})
        if not datasets:
            self.lines += ["No accuracy results yet.", ""]
        for dataset, cells in sorted(datasets.items()):
            cell = cells.get("main", {})
            if not cell:
                continue
            self.lines += [f"### {_dataset_title(dataset, cell)}: {_seeds(len(cell))}", ""]
            data = next(iter(cell.values()))["data"]
            self.lines += [
                f"{data.get('num_base_pairs', '?')} base pairs, "
                f"{data.get('num_heldout_pairs', '?')} held-out pairs, "
                f"{data.get('num_pool_pairs', '?')} pool pairs; {_seed_scope(cell)}.",
                "",
            ]
            original = ORIGINAL.get(dataset)
            rows = []
            for method in _methods(cell):
                reported = "-"
                if original and method in ("uniform", "mars"):
                    reported = f"{100 * original[1 if method == 'uniform' else 2]:.1f}"
                rows.append(
                    [
                        method,
                        str(len(_values(cell, method, "accuracy"))),
                        fmt(t_interval(_values(cell, method, "accuracy")), 100),
                        fmt(t_interval(_values(cell, method, "auc")), 1, 4),
                        fmt(t_interval(_values(cell, method, "snr")), 1, 3),
                        fmt(t_interval(_values(cell, method, "ece")), 1, 4),
                        reported,
                    ]
                )
            floors = _floor_rows(cell)
            rows += [
                [f"floor: {name}", str(len(v)), fmt(t_interval(v), 100)] + 4 * ["-"]
                for name, v in floors.items()
            ]
            self.lines += _table(
                ["method", "seeds", "accuracy %", "ROC-AUC", "SNR", "ECE", "original's accuracy %"],
                rows,
            )
            self.lines.append("")
            self.lines += _floor_note(cell, floors)
            if original:
                self.lines += [
                    f"Original's numbers: {original[0]} (method.md section 5). Its data, model "
                    "and budget differ from ours, so compare the gains (MARS - uniform), not "
                    "the levels.",
                    "",
                ]
            rows = []
            for method in _methods(cell):
                if method == "uniform":
                    continue
                diff = paired(cell, cell, method, "uniform")
                if not diff:
                    continue
                stat = t_interval(diff)
                ahead, tied = sum(d > 0 for d in diff), sum(d == 0 for d in diff)
                rows.append(
                    [
                        f"{method} - uniform",
                        fmt(stat, 100),
                        f"{ahead} / {tied} / {len(diff) - ahead - tied}",
                        side(*stat[1:]),
                    ]
                )
            self.lines += _table(
                [
                    "paired difference",
                    "accuracy points",
                    "seeds ahead / tied / behind",
                    "interval vs 0",
                ],
                rows,
                "lrrl",
            )
            self.lines.append("")
            diff = paired(cell, cell, "mars", "uniform")
            if diff:
                stat = t_interval(diff)
                claimed = original[2] - original[1] if original else None
                rule = claim_verdict(*stat[1:], 0.0, claimed)
                rule = untestable_reason(cell) or rule
                text = (
                    f"MARS - uniform on `{dataset}`: {fmt(stat, 100)} accuracy points over "
                    f"{_seeds(len(diff))}: {rule}."
                )
                if all(d == 0 for d in diff):
                    text += " MARS and uniform gave identical accuracy in every seed."
                largest = _largest_budget(cell, "mars")
                if largest is not None:
                    refine = next(iter(cell.values()))["config"]["refine"]
                    base = next(iter(cell.values()))["config"]["data"]["num_base_pairs"]
                    text += (
                        f" MARS ({_temperature_text(refine)}) gave at most {largest} "
                        "synthetic pairs to one base pair in the last round (an even split: "
                        f"B/N = {refine['budget'] / base:g})"
                    )
                    tv = _mean_total_variation(cell, "mars")
                    text += (
                        f"; its budgets' total-variation distance from stratified uniform's "
                        f"averaged {tv:.3f} over rounds and seeds."
                        if tv is not None
                        else "."
                    )
                if claimed is not None:
                    where = _where(100 * claimed, stat, 100)
                    text += (
                        f" The original's gain (+{100 * claimed:.1f} points) is {where} our "
                        "interval."
                    )
                self.claims.append(
                    Claim(
                        "MARS beats uniform augmentation",
                        dataset,
                        f"MARS - uniform {fmt(stat, 100)} points",
                        rule,
                        text,
                    )
                )
                self.lines += [text, ""]
            self._global_uniform_claims(dataset, cell, original)
            self.lines += _allocation_note(cell)
            self._accuracy_plot(dataset, cell)
        missing = [text for name, text in ORIGINAL_NOT_RUN.items() if name not in datasets]
        if missing:
            self.lines += [f"Not run here (no data set): {'; '.join(missing)}.", ""]

    def _global_uniform_claims(
        self, dataset: str, cell: dict[int, dict[str, Any]], original: tuple | None
    ) -> None:
        """The authors' comparison (MARS against their unstratified uniform, `uniform_global`)
        and what stratifying uniform alone does (uniform - uniform_global)."""
        against = paired(cell, cell, "mars", "uniform_global")
        if not against:
            return
        stat = t_interval(against)
        claimed = original[2] - original[1] if original else None
        rule = (
            "untestable: MARS and uniform_global ended with the same reward model"
            if same_model(cell, "mars", "uniform_global")
            else claim_verdict(*stat[1:], 0.0, claimed)
        )
        text = (
            f"MARS - uniform_global (the authors' unstratified uniform) on `{dataset}`: "
            f"{fmt(stat, 100)} accuracy points over {_seeds(len(against))}: {rule}."
        )
        self.claims.append(
            Claim(
                "MARS beats the authors' uniform baseline",
                dataset,
                f"MARS - uniform_global {fmt(stat, 100)} points",
                rule,
                text,
            )
        )
        strat = t_interval(paired(cell, cell, "uniform", "uniform_global"))
        rule = (
            "untestable: both uniform baselines ended with the same reward model"
            if same_model(cell, "uniform", "uniform_global")
            else verdict(*strat[1:])
        )
        text = (
            f"Stratified uniform - uniform_global on `{dataset}`: {fmt(strat, 100)} accuracy "
            f"points over {_seeds(len(against))}: {rule} (not a claim of the original: it "
            "tells whether stratifying the budget, which MARS at a low temperature also does, "
            "helps by itself)."
        )
        self.claims.append(
            Claim(
                "Stratifying the uniform budget helps",
                dataset,
                f"uniform - uniform_global {fmt(strat, 100)} points",
                rule,
                text,
            )
        )
        self.lines += [*(c.text for c in self.claims[-2:]), ""]

    def _accuracy_plot(self, dataset: str, cell: dict[int, dict[str, Any]]) -> None:
        methods = _methods(cell)
        fig = _new_figure(6.5, 3.5)
        ax = fig.add_subplot()
        clean = [t_interval(_values(cell, m, "accuracy")) for m in methods]
        _errorbar(ax, np.arange(len(methods)) - 0.1, clean, fmt="o", label="clean labels")
        noisy = self.runs.get("label_noise", {}).get(dataset, {})
        noisy_cell = next(iter(noisy.values()), {})
        if noisy_cell:
            stat = [t_interval(_values(noisy_cell, m, "accuracy") or [math.nan]) for m in methods]
            _errorbar(ax, np.arange(len(methods)) + 0.1, stat, fmt="s", label="10% labels flipped")
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{dataset}: mean and {LEVEL:.0%} t-interval over seeds")
        ax.legend()
        path = self.plots / f"accuracy-{dataset}.png"
        _save(fig, path)
        self.lines += [self.plot_link(path), ""]

    def curvature(self) -> None:
        self.lines += ["## 2. Curvature of the training loss", ""]
        self.lines += [
            "Top eigenvalue (power iteration) and trace (Hutchinson) of the Bradley-Terry loss "
            "Hessian and Gauss-Newton matrix at the end of each round, on the base pairs "
            "(`base`, the same for both methods) and on the round's own training set "
            "(`train`). Ratio = MARS / uniform per seed at the last round, then its mean and "
            f'{LEVEL:.0%} t-interval. Rule for the claim ("about 30% larger under MARS"), on '
            "the Hessian's top-eigenvalue ratio on `train`: **supported** if its interval lies "
            f"above 1 and reaches {CURVATURE_CLAIM}, **partly supported** if above 1 but below "
            f"{CURVATURE_CLAIM}, **not supported** if below {CURVATURE_CLAIM} and not above 1, "
            f"**inconclusive** if it contains both 1 and {CURVATURE_CLAIM}. The table's last "
            "column says where the ratio's interval lies against 1.",
            "",
        ]
        datasets = self.runs.get("curvature", {})
        if not datasets:
            self.lines += ["No curvature results yet.", ""]
        for dataset, cells in sorted(datasets.items()):
            cell = cells.get("curvature", {})
            records = [r for _, r in sorted(cell.items()) if _has_curvature(r)]
            if not records:
                continue
            self.lines += [f"### {_dataset_title(dataset, cell)}: {_seeds(len(records))}", ""]
            rows = []
            for subset in ("base", "train", "lowest_margin"):
                for operator in ("hessian", "ggn"):
                    for quantity in ("top_eigenvalue", "trace"):
                        ratios, mars_v, uni_v = [], [], []
                        for r in records:
                            m = _final_curvature(r, "mars", subset, operator, quantity)
                            u = _final_curvature(r, "uniform", subset, operator, quantity)
                            if m is None or u is None:
                                continue
                            mars_v.append(m)
                            uni_v.append(u)
                            ratios.append(m / u)
                        if not ratios:
                            continue
                        stat = t_interval(ratios)
                        rows.append(
                            [
                                subset,
                                operator,
                                quantity.replace("_", " "),
                                fmt(t_interval(uni_v), 1, 4),
                                fmt(t_interval(mars_v), 1, 4),
                                fmt(stat, 1, 3),
                                side(*stat[1:], null=1.0),
                            ]
                        )
                        if (subset, operator, quantity) == ("train", "hessian", "top_eigenvalue"):
                            where = _where(CURVATURE_CLAIM, stat, 1)
                            curvature_rule = untestable_reason(cell) or claim_verdict(
                                *stat[1:], 1.0, CURVATURE_CLAIM
                            )
                            text = (
                                f"Hessian top eigenvalue on the training set, MARS / uniform at "
                                f"the last round on `{dataset}`: {fmt(stat, 1, 3)} over "
                                f"{_seeds(len(ratios))}: "
                                f"{curvature_rule}. The "
                                f"original's ratio (~{CURVATURE_CLAIM}) is {where} our interval."
                            )
                            self.claims.append(
                                Claim(
                                    "MARS raises the loss curvature",
                                    dataset,
                                    f"top eigenvalue MARS / uniform {fmt(stat, 1, 3)}",
                                    curvature_rule,
                                    text,
                                )
                            )
            self.lines += _table(
                [
                    "subset",
                    "operator",
                    "quantity",
                    "uniform",
                    "MARS",
                    "MARS / uniform",
                    "interval vs 1",
                ],
                rows,
                "lllrrrl",
            )
            self.lines.append("")
            self.lines += [
                c.text
                for c in self.claims
                if c.claim.endswith("curvature") and c.dataset == dataset
            ]
            self.lines.append("")
            self._curvature_plot(dataset, records)

    def _curvature_plot(self, dataset: str, records: list[dict[str, Any]]) -> None:
        fig = _new_figure(9, 6)
        axes = fig.subplots(2, 2, squeeze=False)
        for i, operator in enumerate(("hessian", "ggn")):
            for j, quantity in enumerate(("top_eigenvalue", "trace")):
                ax = axes[i][j]
                for shift, method in ((-0.05, "uniform"), (0.05, "mars")):
                    series = [
                        [
                            round_["train"][operator][quantity]
                            for round_ in r["methods"][method].get("curvature_per_round", [])
                            if operator in round_.get("train", {})
                        ]
                        for r in records
                    ]
                    series = [s for s in series if s]
                    if not series:
                        continue
                    length = min(len(s) for s in series)
                    stat = [t_interval([s[k] for s in series]) for k in range(length)]
                    rounds = np.arange(1, length + 1) + shift
                    _errorbar(ax, rounds, stat, marker="o", label=method)
                ax.set_title(f"{operator}: {quantity.replace('_', ' ')} (train set)")
                ax.set_xlabel("round")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if ax.has_data():
                    ax.legend()
        path = self.plots / f"curvature-{dataset}.png"
        _save(fig, path)
        self.lines += [self.plot_link(path), ""]

    def sample_efficiency(self) -> None:
        self.lines += ["## 3. Sample efficiency: accuracy against the synthetic budget", ""]
        self.lines += [
            "Uniform and MARS with F% of the synthetic budget B per round. The smallest F at "
            "which MARS's mean accuracy reaches uniform's mean at 100% is reported, with the "
            'paired difference MARS(F) - uniform(100%). Rule for the claim ("MARS matches '
            f'uniform with {BUDGET_CLAIM}% of the budget"), on that difference at '
            f"{BUDGET_CLAIM}%: **supported** if its interval lies above 0, or contains 0 "
            "while MARS's mean reaches uniform's; **not supported** if its interval lies "
            "below 0; **inconclusive** otherwise, or whenever uniform's own gain from the "
            "smallest budget to 100% (paired) has an interval that does not lie above 0.",
            "",
        ]
        datasets = self.runs.get("sample_efficiency", {})
        if not datasets:
            self.lines += ["No sample-efficiency results yet.", ""]
        for dataset, cells in sorted(datasets.items()):
            by_percent = {
                int(name.split("-")[1]): cell
                for name, cell in cells.items()
                if name.startswith("budget-")
            }
            if 100 not in by_percent:
                continue
            full = by_percent[100]
            target = t_interval(_values(full, "uniform", "accuracy"))[0]
            self.lines += [f"### {_dataset_title(dataset, full)}", ""]
            rows, reached, stats_at = [], None, {}
            for percent in sorted(by_percent):
                cell = by_percent[percent]
                mars = t_interval(_values(cell, "mars", "accuracy"))
                diff = t_interval(paired(cell, full, "mars", "uniform") or [math.nan])
                stats_at[percent] = (mars, diff)
                if reached is None and mars[0] >= target:
                    reached = percent
                rows.append(
                    [
                        f"{percent}%",
                        str(len(cell)),
                        fmt(t_interval(_values(cell, "uniform", "accuracy")), 100),
                        fmt(mars, 100),
                        fmt(diff, 100),
                    ]
                )
            self.lines += _table(
                ["budget", "seeds", "uniform %", "MARS %", "MARS(F) - uniform(100%), points"],
                rows,
            )
            self.lines.append("")
            tried = ", ".join(f"{p}%" for p in sorted(by_percent))
            text = (
                f"On `{dataset}`, MARS's mean accuracy "
                + (
                    f"first reaches uniform's full-budget mean ({100 * target:.2f}%) at "
                    f"{reached}% of the budget"
                    if reached is not None
                    else f"never reaches uniform's full-budget mean ({100 * target:.2f}%) at "
                    f"the budgets tried ({tried})"
                )
                + f"; the original claims {BUDGET_CLAIM}%."
            )
            smallest = min(by_percent)
            growth = t_interval(paired(full, by_percent[smallest], "uniform", "uniform") or [0.0])
            text += (
                f" Uniform's own gain from {smallest}% to 100% of the budget: "
                f"{fmt(growth, 100)} points."
            )
            if BUDGET_CLAIM in stats_at:
                mars, diff = stats_at[BUDGET_CLAIM]
                rule = verdict(diff[1], diff[2])
                if rule == "inconclusive" and mars[0] >= target:
                    rule = "supported (reached in the mean; the interval contains 0)"
                if not growth[1] > 0:
                    rule = (
                        "inconclusive (uniform's accuracy is not shown to grow with the "
                        "budget here, so matching it with less budget says nothing)"
                    )
                text += (
                    f" At {BUDGET_CLAIM}%: MARS - uniform(100%) = {fmt(diff, 100)} points: {rule}."
                )
            effect, rule_shown = "-", "not measured at 30%"
            if BUDGET_CLAIM in stats_at:
                effect = (
                    f"MARS({BUDGET_CLAIM}%) - uniform(100%) {fmt(stats_at[BUDGET_CLAIM][1], 100)} "
                    "points"
                )
                rule_shown = rule
            self.claims.append(
                Claim(
                    f"MARS needs only {BUDGET_CLAIM}% of the budget",
                    dataset,
                    effect,
                    rule_shown,
                    text,
                )
            )
            self.lines += [text, ""]
            self._budget_plot(dataset, by_percent, target)

    def _budget_plot(self, dataset: str, by_percent: dict[int, Any], target: float) -> None:
        fig = _new_figure(6, 3.5)
        ax = fig.add_subplot()
        percents = sorted(by_percent)
        for method in ("uniform", "mars"):
            stat = [t_interval(_values(by_percent[p], method, "accuracy")) for p in percents]
            _errorbar(ax, percents, stat, marker="o", label=method)
        ax.axhline(target, color="gray", linestyle="--", label="uniform at 100% (mean)")
        ax.set_xlabel("synthetic budget (% of B)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(dataset)
        ax.legend()
        path = self.plots / f"budget-{dataset}.png"
        _save(fig, path)
        self.lines += [self.plot_link(path), ""]

    def label_noise(self) -> None:
        self.lines += ["## 4. Label noise: 10% of base labels flipped", ""]
        self.lines += [
            "Drop = clean accuracy - noisy accuracy, per seed (same training seed, same data "
            'seed), in points. Rule for the claim ("MARS degrades far less than the '
            "baseline\"): **supported** if the interval of uniform's drop - MARS's drop lies "
            "above 0, **not supported** if below 0, **inconclusive** otherwise.",
            "",
        ]
        datasets = self.runs.get("label_noise", {})
        if not datasets:
            self.lines += ["No label-noise results yet.", ""]
        for dataset, cells in sorted(datasets.items()):
            clean = self.runs.get("accuracy", {}).get(dataset, {}).get("main", {})
            for name, noisy in sorted(cells.items()):
                if not clean:
                    continue
                self.lines += [f"### {_dataset_title(dataset, noisy)}: `{name}`", ""]
                rows = []
                for method in _methods(noisy):
                    drop = paired(clean, noisy, method, method)
                    rows.append(
                        [
                            method,
                            str(len(drop)),
                            fmt(t_interval(_values(clean, method, "accuracy")), 100),
                            fmt(t_interval(_values(noisy, method, "accuracy")), 100),
                            fmt(t_interval(drop or [math.nan]), 100),
                        ]
                    )
                self.lines += _table(
                    ["method", "paired seeds", "clean %", "noisy %", "drop, points"], rows
                )
                self.lines.append("")
                drop_mars = paired(clean, noisy, "mars", "mars")
                drop_uniform = paired(clean, noisy, "uniform", "uniform")
                if drop_mars and len(drop_mars) == len(drop_uniform):
                    diff = t_interval(np.subtract(drop_uniform, drop_mars))
                    reasons = {untestable_reason(clean), untestable_reason(noisy)}
                    rule = reasons.pop() if len(reasons) == 1 and None not in reasons else None
                    rule = rule or verdict(*diff[1:])
                    text = (
                        f"Uniform's drop - MARS's drop on `{dataset}`: {fmt(diff, 100)} points "
                        f"over {_seeds(len(drop_mars))}: {rule}."
                    )
                    self.claims.append(
                        Claim(
                            "MARS is more robust to label noise",
                            dataset,
                            f"uniform's drop - MARS's drop {fmt(diff, 100)} points",
                            rule,
                            text,
                        )
                    )
                    self.lines += [text, ""]

    def sensitivity(self) -> None:
        self.lines += ["## 6. Sensitivity: MARS temperature and the revised (v2) settings", ""]
        self.lines += [
            "Every temperature run is shown; the verdicts above use each data set's own "
            "settings (the default: a temperature solved each round so that the weights' "
            "effective sample size is half the base pairs). `tau-T` fixes tau = T as the "
            "paper does (T = 0.1 is the paper's), `normalized` applies tau = 1 to "
            "|m| / std(|m|), `curriculum` moves a fixed tau from 0.1 to 10 over the rounds. "
            "`v2` is the revised method's setting: "
            "a fixed tau = 0.5 and 2.5 times the data set's budget (B = 5,000 where B = 2,000). "
            "Differences are paired per seed, in points; *largest* is the most synthetic "
            "pairs one base pair got from MARS in a last round (any seed), against an even "
            "split of B / N.",
            "",
        ]
        datasets = self.runs.get("sensitivity", {})
        if not datasets:
            self.lines += ["No sensitivity results yet.", ""]
        for dataset, cells in sorted(datasets.items()):
            first = next(iter(next(iter(cells.values())).values()))
            self.lines += [f"### {_dataset_title(dataset, {0: first})}", ""]
            rows = []
            for name in sorted(cells, key=_sensitivity_order):
                cell = cells[name]
                config = next(iter(cell.values()))["config"]
                even = config["refine"]["budget"] / max(1, first["data"]["num_base_pairs"])
                rows.append(
                    [
                        f"`{name}`",
                        _temperature_text(config["refine"]),
                        str(config["refine"]["budget"]),
                        str(len(cell)),
                        fmt(t_interval(_values(cell, "uniform", "accuracy")), 100),
                        fmt(t_interval(_values(cell, "mars", "accuracy")), 100),
                        fmt(t_interval(paired(cell, cell, "mars", "uniform") or [math.nan]), 100),
                        fmt(
                            t_interval(paired(cell, cell, "mars_signed", "uniform") or [math.nan]),
                            100,
                        ),
                        f"{_largest_budget(cell, 'mars')} vs {even:.1f}",
                    ]
                )
            self.lines += _table(
                [
                    "cell",
                    "MARS temperature",
                    "B",
                    "seeds",
                    "uniform %",
                    "MARS %",
                    "MARS - uniform",
                    "signed - uniform",
                    "largest",
                ],
                rows,
            )
            self.lines.append("")

    def finetune(self) -> None:
        self.lines += ["## 5. Full fine-tune of the encoder", ""]
        self.lines += [
            "The encoder is trained end to end with the head (`model.finetune_encoder = true`) "
            "on token ids of the same pairs and paraphrase pool; settings in the overrides "
            "below. With one seed, the interval is the bootstrap interval over held-out pairs "
            "of that run; with more, the Student-t interval over seeds.",
            "",
        ]
        datasets = self.runs.get("finetune", {})
        if not datasets:
            self.lines += ["No fine-tune results yet.", ""]
            self.claims.append(
                Claim(
                    "The text path works with a fine-tuned encoder", "-", "-", "not run", "not run."
                )
            )
        for dataset, cells in sorted(datasets.items()):
            cell = cells.get("finetune", {})
            if not cell:
                continue
            first = cell[min(cell)]
            data = first["data"]
            self.lines += [
                f"### `{dataset}`: {_seeds(len(cell))}",
                "",
                f"{data.get('num_base_pairs', '?')} base pairs, "
                f"{data.get('num_heldout_pairs', '?')} held-out pairs, "
                f"{data.get('num_pool_pairs', '?')} pool pairs, "
                f"{data.get('max_length', '?')} tokens per response; overrides: "
                + ", ".join(f"`{o}`" for o in first["overrides"])
                + ".",
                "",
            ]
            rows, above = [], {}
            for method in _methods(cell):
                stat = _finetune_accuracy(cell, method)
                above[method] = stat[1] > 0.5
                per_round = ", ".join(
                    f"{100 * a:.1f}" for a in first["methods"][method]["accuracy_per_round"]
                )
                rows.append(
                    [
                        method,
                        fmt(stat, 100),
                        per_round,
                        fmt(t_interval(_values(cell, method, "auc") or [math.nan]), 1, 3),
                        f"{sum(r['methods'][method]['seconds'] for r in cell.values()) / 60:.1f}",
                    ]
                )
            self.lines += _table(
                ["method", "accuracy %", "per round (seed 0)", "ROC-AUC", "minutes"], rows
            )
            self.lines.append("")
            diff = paired(cell, cell, "mars", "uniform")
            shown = ", ".join(
                f"{m} {fmt(_finetune_accuracy(cell, m), 100)}%" for m in _methods(cell)
            )
            works = "above" if all(above.values()) else "not all above"
            text = (
                f"the encoder trained end to end on {data.get('num_base_pairs', '?')} base pairs: "
                f"held-out accuracy {shown}; intervals {works} chance (50%); MARS - uniform "
                f"{fmt(t_interval(diff or [math.nan]), 100)} points."
            )
            self.claims.append(
                Claim(
                    "The text path works with a fine-tuned encoder",
                    dataset,
                    f"MARS - uniform {fmt(t_interval(diff or [math.nan]), 100)} points",
                    f"intervals {works} chance",
                    text,
                )
            )
            self.lines += [f"Fine-tuned on `{dataset}`: {text}", ""]

    def speed(self) -> None:
        self.lines += ["## Speed benchmarks", ""]
        self.lines += [
            "The Summary table of `benchmarks/README.md`, parsed when this report was "
            "generated (details and commands there).",
            "",
        ]
        rows = speed_rows(BENCH_README.read_text(encoding="utf-8"))
        self.lines += (
            _table(["benchmark", "device", "target", "measured", "met?"], rows, "lllll")
            if rows
            else ["No Summary table found in benchmarks/README.md."]
        )
        self.lines.append("")

    def environment(self) -> None:
        self.lines += ["## Hardware and commands", ""]
        platforms: dict[str, int] = defaultdict(int)
        commands: dict[str, set[str]] = defaultdict(set)
        seconds: dict[str, float] = defaultdict(float)
        per_dataset: dict[str, list[float]] = defaultdict(list)
        for experiment, datasets in sorted(self.runs.items()):
            for dataset, cells in datasets.items():
                for cell in cells.values():
                    for r in cell.values():
                        p = r["platform"]
                        key = (
                            f"{p.get('cpu', '?')} ({p.get('cpus', '?')} CPUs), backend "
                            f"{p['backend']} ({p.get('device_kind', '?')}), jax {p['jax']}, "
                            f"Python {p['python']}"
                        )
                        platforms[key] += 1
                        commands[experiment].add(r["command"])
                        seconds[experiment] += r["seconds"]
                        per_dataset[dataset].append(r["seconds"])
        self.lines += _table(
            ["machine", "runs"], [[k, str(v)] for k, v in sorted(platforms.items())], "lr"
        )
        self.lines += [
            "",
            "Wall time of the grid per data set (every experiment, cell and seed; each "
            "(cell, seed) timed from its data set's build to its last evaluation, so an "
            "interrupted grid's resumed cells count once):",
            "",
        ]
        self.lines += _table(
            ["data set", "(cell, seed) runs", "minutes"],
            [
                [f"`{name}`", str(len(times)), f"{sum(times) / 60:.1f}"]
                for name, times in sorted(per_dataset.items())
            ],
        )
        self.lines += [
            "",
            "Run times below are wall-clock minutes on a machine shared with other jobs "
            "(orientation only). Commands that produced the raw results (run from the "
            "repository root):",
            "",
        ]
        self.lines += ["```bash"]
        for experiment in sorted(commands):
            self.lines += [f"# {experiment}: {seconds[experiment] / 60:.1f} min of runs"]
            self.lines += sorted(commands[experiment])
        self.lines += ["python benchmarks/make_report.py   # this report and its plots", "```", ""]

    def claims_section(self) -> list[str]:
        lines = ["## Claims and verdicts", ""]
        if not self.claims:
            return [*lines, "No results yet.", ""]
        rows = [
            [c.claim, f"`{c.dataset}`", c.effect, _short_verdict(c.verdict), self._floor_cell(c)]
            for c in sorted(self.claims, key=lambda c: (c.claim, c.dataset))
        ]
        lines += _table(
            [
                "claim",
                "data set",
                "effect [95% interval]",
                "verdict",
                "MARS accuracy vs its best floor",
            ],
            rows,
            "lllll",
        )
        lines += [
            "",
            "Effects are paired per seed. The last column is MARS's held-out accuracy in the "
            "accuracy cell beside the highest floor (length heuristic or linear probe) on the "
            "same held-out pairs; a floor above MARS means the reward model itself, not the "
            "allocation, limits what the data set can show. Each verdict in full:",
            "",
        ]
        for claim in self.claims:
            lines.append(f"- **{claim.claim}** (`{claim.dataset}`): {claim.text}")
        return [*lines, ""]

    def _floor_cell(self, claim: Claim) -> str:
        """MARS's mean accuracy and the highest floor's on the claim's data set."""
        cell = self.runs.get("accuracy", {}).get(claim.dataset, {}).get("main", {})
        mars = _values(cell, "mars", "accuracy") if cell else []
        if not mars:
            return "-"
        floors = _floor_rows(cell)
        if not floors:
            return f"{100 * np.mean(mars):.1f}% (floors not recorded)"
        name, values = max(floors.items(), key=lambda item: np.mean(item[1]))
        return f"{100 * np.mean(mars):.1f}% vs {name} {100 * np.mean(values):.1f}%"

    def render(self) -> str:
        self.accuracy()
        self.curvature()
        self.sample_efficiency()
        self.label_noise()
        self.finetune()
        self.sensitivity()
        self.environment()
        self.speed()
        head = [
            "# Experiments: the method's claims, tested",
            "",
            "Generated by `python benchmarks/make_report.py` from the raw per-seed JSON in "
            "`benchmarks/results/` (written by `benchmarks/experiments.py`); do not edit by "
            "hand. Every number below is computed from those files. Intervals are "
            f"{LEVEL:.0%} Student-t intervals over seeds. Since the data-seed pairing, seed k "
            "sets `train.seed = k` and `data.seed` = the data set's + k (base subset, held-out "
            "set and pool change with it); each data set's line says which its runs did "
            "(older runs varied the training seed only). All verdicts are exploratory: no "
            "correction for multiple comparisons across claims and data sets. A comparison "
            f"whose MARS budgets equalled stratified uniform's in every round is reported as "
            f"**{UNTESTABLE}**, and one where MARS and uniform ended every round of every "
            f"seed with the same reward model as **{UNMOVED}**.",
            "",
        ]
        return "\n".join(head + self.claims_section() + self.lines).rstrip() + "\n"


def _short_verdict(rule: str) -> str:
    """A verdict without its explanation in parentheses, e.g. ``inconclusive``."""
    return rule.split(" (")[0]


def _temperature_text(refine: dict[str, Any]) -> str:
    """How MARS's temperature was set, e.g. ``fixed temperature 0.1``."""
    mode = refine.get("temperature_mode", "fixed")
    if mode == "target_ess":
        return f"temperature solved for an effective sample size of {refine['target_ess']:g} N"
    if mode == "normalized":
        return f"temperature {refine['temperature']:g} on margins / their spread"
    if refine.get("final_temperature"):
        return f"temperature {refine['temperature']:g} -> {refine['final_temperature']:g}"
    return f"fixed temperature {refine['temperature']:g}"


def _mean_total_variation(cell: dict[int, dict[str, Any]], method: str) -> float | None:
    """``method``'s total-variation distance from stratified uniform, averaged over rounds and
    seeds (``None`` for runs that predate the allocation diagnostics)."""
    rows = [r["methods"][method] for r in cell.values() if method in r["methods"]]
    steps = [step for row in rows for step in row.get("allocation_per_round") or []]
    if not rows or not steps:
        return None
    return float(np.mean([step["total_variation"] for step in steps]))


def _seed_scope(cell: dict[int, dict[str, Any]]) -> str:
    """Whether a cell's seeds varied the data seed along with the training seed."""
    data_seeds = {record["config"].get("data", {}).get("seed") for record in cell.values()}
    if len(cell) > 1 and len(data_seeds) == len(cell):
        return "seeds vary the training and the data seed together"
    return "seeds vary the training seed only (one data set draw)"


def _largest_budget(cell: dict[int, dict[str, Any]], method: str) -> int | None:
    """The most synthetic pairs one base pair got from ``method`` in any seed's last round."""
    rows = [r["methods"][method] for r in cell.values() if method in r["methods"]]
    if not rows or any("budget_max_per_round" not in row for row in rows):
        return None
    return max(row["budget_max_per_round"][-1] for row in rows)


def _finetune_accuracy(cell: dict[int, dict[str, Any]], method: str) -> tuple[float, ...]:
    """Mean accuracy and interval: over seeds, or one run's bootstrap interval."""
    values = _values(cell, method, "accuracy")
    if len(values) > 1:
        return t_interval(values)
    record = next(iter(cell.values()))["methods"][method]
    lower, upper = record.get("accuracy_lower"), record.get("accuracy_upper")
    if lower is None or upper is None:
        return (values[0], math.nan, math.nan)
    return (values[0], lower, upper)


SENSITIVITY_CELLS = ("normalized", "curriculum", "v2")


def _sensitivity_order(name: str) -> tuple[int, float]:
    """Fixed-temperature cells by temperature, then the other modes, then the v2 cell."""
    if name.startswith("tau-"):
        return (0, float(name[4:]))
    return (1, float(SENSITIVITY_CELLS.index(name)) if name in SENSITIVITY_CELLS else math.inf)


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


UNTESTABLE = "untestable: MARS's allocation equalled uniform's"
UNMOVED = "untestable: the rounds did not change the reward model"
FINAL_METRICS = ("accuracy_per_round", "auc", "snr", "ece")


def untestable_reason(cell: dict[int, dict[str, Any]]) -> str | None:
    """Why comparing MARS with uniform in ``cell`` tests nothing, or ``None``.

    Either MARS's budgets equalled the stratified uniform ones (:func:`untestable`), or the two
    methods ended with the same reward model in every seed: the same held-out accuracy in every
    round and the same final ROC-AUC, signal-to-noise and calibration error, to the last bit
    (what happens when each round's best validation epoch is its starting state, so that the
    synthetic pairs never reach the model).
    """
    if untestable(cell, "mars"):
        return UNTESTABLE
    if same_model(cell, "mars", "uniform"):
        return UNMOVED
    return None


def same_model(cell: dict[int, dict[str, Any]], a: str, b: str) -> bool:
    """Whether methods ``a`` and ``b`` report identical metrics in every round of every seed."""
    pairs = [
        (record["methods"][a], record["methods"][b])
        for record in cell.values()
        if a in record["methods"] and b in record["methods"]
    ]
    return bool(pairs) and all(x.get(key) == y.get(key) for x, y in pairs for key in FINAL_METRICS)


def untestable(cell: dict[int, dict[str, Any]], method: str) -> bool:
    """Whether ``method``'s budgets equalled the stratified uniform ones in every round of
    every seed (total-variation distance 0), so that comparing it with uniform tests nothing.

    Runs recorded before the allocation diagnostics existed fall back to what they kept: an
    even last-round split (largest budget B / N, no base pair without a draw) and the same
    held-out accuracy as uniform in every round of every seed.
    """
    rows = [record["methods"][method] for record in cell.values() if method in record["methods"]]
    if not rows:
        return False
    if all("allocation_per_round" in row for row in rows):
        return all(
            step["total_variation"] == 0 for row in rows for step in row["allocation_per_round"]
        )
    config = next(iter(cell.values())).get("config", {})
    if "refine" not in config or "data" not in config:
        return False  # nothing recorded to tell
    if any("budget_max_per_round" not in row for row in rows):
        return False
    even = config["refine"]["budget"] / config["data"]["num_base_pairs"]
    same_accuracy = all(
        record["methods"][method]["accuracy_per_round"]
        == record["methods"]["uniform"]["accuracy_per_round"]
        for record in cell.values()
        if method in record["methods"] and "uniform" in record["methods"]
    )
    return same_accuracy and all(
        row["budget_max_per_round"][-1] == math.ceil(even)
        and row["budget_zero_fraction_per_round"][-1] == 0
        and even == int(even)
        for row in rows
    )


def _allocation_note(cell: dict[int, dict[str, Any]]) -> list[str]:
    """How far each method's last-round allocation is from spreading the budget evenly."""
    parts = []
    for method in _methods(cell):
        largest = _largest_budget(cell, method)
        if largest is None:
            continue
        rows = [r["methods"][method] for r in cell.values() if method in r["methods"]]
        zero = np.mean([row["budget_zero_fraction_per_round"][-1] for row in rows])
        if largest > 0:
            parts.append(f"{method} at most {largest} per base pair, {100 * zero:.1f}% none")
    if not parts:
        return []
    refine = next(iter(cell.values()))["config"]["refine"]
    return [
        f"Last-round allocation (B = {refine['budget']} synthetic pairs per round, MARS "
        f"{_temperature_text(refine)}; synthetic pairs drawn per base pair, over all "
        "seeds): " + "; ".join(parts) + ".",
        "",
    ]


def _where(claimed: float, stat: tuple[float, float, float], scale: float) -> str:
    lo, hi = stat[1] * scale, stat[2] * scale
    if math.isnan(lo):
        return "not comparable with"
    if claimed > hi:
        return "above"
    if claimed < lo:
        return "below"
    return "inside"


def _has_curvature(record: dict[str, Any]) -> bool:
    methods = record["methods"]
    return all(methods.get(m, {}).get("curvature_per_round") for m in ("mars", "uniform"))


def _final_curvature(
    record: dict[str, Any], method: str, subset: str, operator: str, quantity: str
) -> float | None:
    last = record["methods"][method]["curvature_per_round"][-1]
    return last.get(subset, {}).get(operator, {}).get(quantity)


def speed_rows(readme: str) -> list[list[str]]:
    """Rows (benchmark, device, target, measured, met?) of a benchmarks README's Summary table.

    A row's device is its own ``device`` column if the table has one, else the machine
    described by the README's "Machine and date" table (CPU model, count and JAX backend).
    """
    machine = _machine(readme)
    summary = re.search(r"^## Summary\s*$(.*?)(?=^## )", readme, re.M | re.S)
    if summary is None:
        return []
    table = [line for line in summary.group(1).splitlines() if line.startswith("|")]
    if len(table) < 3:
        return []
    header = [c.strip().lower() for c in _cells(table[0])]
    rows = []
    for line in table[2:]:
        row = dict(zip(header, _cells(line), strict=False))
        rows.append(
            [
                row.get("benchmark", ""),
                row.get("device", machine),
                row.get("target", ""),
                row.get("measured", ""),
                row.get("met?", ""),
            ]
        )
    return rows


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _machine(readme: str) -> str:
    found: dict[str, str] = {}
    for line in readme.splitlines():
        cells = _cells(line) if line.startswith("|") else []
        if len(cells) == 2:
            found[cells[0].split(" (")[0].lower()] = cells[1]
    cpu, cpus, backend = found.get("cpu"), found.get("cpus"), found.get("backend")
    if not cpu:
        return "see benchmarks/README.md"
    return f"{cpu}, {cpus} CPUs" + (f", {backend}" if backend else "")


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the report; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: --results: no such folder: {args.results}", file=sys.stderr)
        raise SystemExit(2)
    report = Report(load_runs(args.results), args.results, args.out)
    text = report.render()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
