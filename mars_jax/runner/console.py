"""Terminal output of a run: a progress bar while it runs, comparison tables at the end."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mars_jax.refine import RoundSummary
from mars_jax.runner.config import Config

MARGIN_DRIVEN = ("mars", "mars_signed", "ensemble")

__all__ = [
    "MARGIN_DRIVEN",
    "RunDisplay",
    "curvature_table",
    "make_console",
    "round_table",
    "summary_table",
    "untestable_lines",
]

_MIN_WIDTH = 110


def make_console() -> Console:
    """A console at least 110 columns wide, so tables do not wrap in pipes and logs."""
    console = Console()
    return console if console.width >= _MIN_WIDTH else Console(width=_MIN_WIDTH)


class RunDisplay:
    """Progress over all (method, round) steps of a run, then the comparison tables."""

    def __init__(self, config: Config, *, enabled: bool = True) -> None:
        self.console = make_console()
        self.enabled = enabled
        self.show_progress = enabled and config.output.progress
        self.total = len(config.refine.methods) * config.refine.rounds
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = None

    def __enter__(self) -> RunDisplay:
        if self.show_progress:
            self.progress.start()
            self.task = self.progress.add_task("rounds", total=self.total)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.show_progress:
            self.progress.stop()

    def on_round(self, summary: RoundSummary) -> None:
        """Advance the bar with one finished round."""
        if self.task is not None:
            accuracy = summary.heldout["accuracy"]
            self.progress.update(
                self.task,
                advance=1,
                description=f"{summary.method} round {summary.round}: acc {accuracy:.3f}",
            )

    def print_summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        """Print the per-round table, the final-metrics table and where files went."""
        if not self.enabled:
            return
        self.console.print(round_table(summary))
        self.console.print(summary_table(summary))
        for line in untestable_lines(summary):
            self.console.print(line)
        warning = summary.get("floor_check", {}).get("warning")
        if warning:
            self.console.print(f"[bold yellow]warning:[/] {warning}")
        self.console.print(f"run directory: {run_dir}  ({summary['seconds']:.1f} s)")


def round_table(summary: dict[str, Any]) -> Table:
    """Held-out accuracy per round (rows) and method (columns)."""
    methods = summary["methods"]
    table = Table(title="Held-out pairwise accuracy per round")
    table.add_column("round", justify="right")
    for method in methods:
        table.add_column(method, justify="right")
    num_rounds = max(result["rounds_run"] for result in methods.values())
    for index in range(num_rounds):
        cells = []
        for result in methods.values():
            per_round = result["accuracy_per_round"]
            cells.append(f"{per_round[index]:.4f}" if index < len(per_round) else "-")
        table.add_row(str(index + 1), *cells)
    return table


def summary_table(summary: dict[str, Any]) -> Table:
    """Final held-out metrics per method, with the bootstrap accuracy interval, then one row
    per accuracy floor (the same held-out pairs; see :mod:`mars_jax.data.floor_report`)."""
    table = Table(title="Final held-out metrics")
    columns = ("method", "accuracy", "95% CI", "ROC-AUC", "SNR", "ECE", "synthetic", "TV")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, result in summary["methods"].items():
        final = result["final"]
        interval = (
            f"[{final['accuracy_lower']:.3f}, {final['accuracy_upper']:.3f}]"
            if "accuracy_lower" in final
            else "-"
        )
        table.add_row(
            method,
            f"{final['accuracy']:.4f}",
            interval,
            f"{final['auc']:.4f}",
            f"{final['signal_to_noise']:.3f}",
            f"{final['calibration_error']:.4f}",
            str(result["budget_spent"]),
            _mean_distance(result),
        )
    for name, floor in summary.get("floors", {}).items():
        table.add_row(f"floor: {name}", f"{floor['accuracy']:.4f}", *6 * ["-"])
    table.caption = "TV: mean total-variation distance of the budgets from stratified uniform's"
    return table


def untestable_lines(summary: dict[str, Any]) -> list[str]:
    """A line for each margin-driven method whose budgets equalled stratified uniform's in every
    round: comparing it with ``uniform`` is untestable (method.md section 6)."""
    lines = []
    for method, result in summary["methods"].items():
        distances = result.get("allocation_distance_per_round", [])
        if method in MARGIN_DRIVEN and result["budget_spent"] and not any(distances):
            lines.append(
                f"{method}: its budgets equalled the stratified uniform ones in every round, "
                "so a comparison with 'uniform' is untestable (see refine.temperature_mode)"
            )
    return lines


def _mean_distance(result: dict[str, Any]) -> str:
    distances = result.get("allocation_distance_per_round", [])
    return f"{sum(distances) / len(distances):.3f}" if distances else "-"


def curvature_table(report: dict[str, Any]) -> Table:
    """Top eigenvalues and trace per subset and operator of a curvature report."""
    table = Table(
        title=f"Loss curvature ({report['dtype']}, matmul precision {report['matmul_precision']}, "
        f"{report['num_params']} parameters)"
    )
    for column in ("subset", "pairs", "operator", "top eigenvalue", "Lanczos top", "trace"):
        table.add_column(column, justify="left" if column in ("subset", "operator") else "right")
    for subset, entry in report["subsets"].items():
        for operator, result in entry.items():
            if not isinstance(result, dict):
                continue
            power, trace = result["top_eigenvalue"], result["trace"]
            ritz = " ".join(f"{value:.3g}" for value in result["top_eigenvalues"]["eigenvalues"])
            table.add_row(
                subset,
                str(entry["num_pairs"]),
                operator,
                f"{power['eigenvalue']:.4g}",
                ritz,
                f"{trace['estimate']:.4g} ± {trace['std_error']:.2g}",
            )
    return table
