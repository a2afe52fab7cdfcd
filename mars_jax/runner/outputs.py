"""Files of a run directory: atomic JSON, and the plots drawn from the per-round records.

The plot module (matplotlib, about a second of imports) is imported when a plot is drawn, so
that runs without plots, bad-input errors and ``--help`` do not wait for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mars_jax.types import Records

__all__ = ["compact_curvature", "write_curvature_plots", "write_plots"]


def write_plots(plot_dir: Path, history: Records) -> None:
    """Held-out accuracy per round per method, and base-margin histograms per round."""
    from mars_jax.runner.plots import plot_accuracy, plot_margin_histograms

    accuracy = {m: [r["heldout"]["accuracy"] for r in rounds] for m, rounds in history.items()}
    intervals = None
    if all("accuracy_lower" in r["heldout"] for rounds in history.values() for r in rounds):
        intervals = {
            m: [(r["heldout"]["accuracy_lower"], r["heldout"]["accuracy_upper"]) for r in rounds]
            for m, rounds in history.items()
        }
    plot_accuracy(plot_dir / "accuracy.png", accuracy, intervals=intervals)
    histograms = {
        m: [(np.asarray(r["histogram_counts"]), np.asarray(r["histogram_edges"])) for r in rounds]
        for m, rounds in history.items()
    }
    plot_margin_histograms(plot_dir / "margins.png", histograms)


def compact_curvature(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a curvature report, for one line of ``metrics.jsonl``.

    Per subset and operator: the power-iteration top eigenvalue, the Lanczos top
    eigenvalues and the trace with its standard error.
    """
    compact: dict[str, Any] = {}
    for subset, entry in report["subsets"].items():
        compact[subset] = {"num_pairs": entry["num_pairs"]}
        for operator, result in entry.items():
            if isinstance(result, dict):
                compact[subset][operator] = {
                    "top_eigenvalue": result["top_eigenvalue"]["eigenvalue"],
                    "top_eigenvalues": result["top_eigenvalues"]["eigenvalues"],
                    "trace": result["trace"]["estimate"],
                    "trace_std_error": result["trace"]["std_error"],
                }
    return compact


def write_curvature_plots(plot_dir: Path, report_dir: Path, history: Records) -> None:
    """Per operator and subset: the top eigenvalue per round per method, and the densities.

    Reads the per-round reports written to ``report_dir/METHOD/round-R.json``.
    """
    from mars_jax.runner.plots import plot_metric_rounds, plot_spectral_densities

    reports = {
        method: [
            json.loads((report_dir / method / f"round-{r['round']}.json").read_text())
            for r in rounds
        ]
        for method, rounds in history.items()
    }
    first = next(iter(reports.values()))[0]
    for subset, entry in first["subsets"].items():
        for operator in (name for name, value in entry.items() if isinstance(value, dict)):
            results = {
                method: [report["subsets"][subset][operator] for report in method_reports]
                for method, method_reports in reports.items()
            }
            label = f"{operator} on {subset} pairs"
            plot_metric_rounds(
                plot_dir / f"{operator}-{subset}-top-eigenvalue.png",
                {m: [r["top_eigenvalue"]["eigenvalue"] for r in rs] for m, rs in results.items()},
                title=f"Top eigenvalue of the loss {label}",
                ylabel="top eigenvalue",
            )
            plot_spectral_densities(
                plot_dir / f"{operator}-{subset}-density.png",
                {
                    m: [(r["density"]["grid"], r["density"]["density"]) for r in rs]
                    for m, rs in results.items()
                },
                title=f"Spectral density of the loss {label}",
            )
