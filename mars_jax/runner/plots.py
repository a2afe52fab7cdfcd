"""PNG plots for a MARS run directory: per-round metrics, margin histograms, spectra.

Everything is drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), so no
pyplot global state is touched, no window is ever opened and plotting is thread-safe.
Every write is atomic: the figure is rendered to a temporary file next to the target and
then moved over it with ``os.replace``, so a failed render never leaves a torn PNG behind
nor damages an existing one.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_accuracy",
    "plot_margin_histograms",
    "plot_metric_rounds",
    "plot_spectral_densities",
]

_DPI = 120
_MAX_COLUMNS = 3
_ROUND_CMAP = "Blues"
_LIGHTEST, _DARKEST = 0.35, 1.0


@contextlib.contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    """Yield a fresh Agg-backed figure and free its artists afterwards."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    try:
        yield fig
    finally:
        fig.clear()


def _save_atomic(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` as PNG to ``path`` via a temporary file and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=_DPI)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


def _round_colors(n_rounds: int) -> np.ndarray:
    """RGBA colours for rounds ``1..n_rounds``, light (early) to dark (late)."""
    cmap = matplotlib.colormaps[_ROUND_CMAP]
    if n_rounds == 1:
        return cmap(np.array([_DARKEST]))
    return cmap(np.linspace(_LIGHTEST, _DARKEST, n_rounds))


def plot_metric_rounds(
    path: str | os.PathLike[str],
    values: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> Path:
    """Plot one line per method over rounds ``1..R`` and write it as a PNG.

    Args:
      path: target PNG file; missing parent directories are created.
      values: method name -> per-round values; methods may have different round counts.
      title: figure title.
      ylabel: y-axis label.
      intervals: optional method name -> per-round ``(lower, upper)`` bounds, drawn as a
        shaded band in the method's colour; each must have one entry per round.

    Returns:
      The path of the written PNG.
    """
    if not values:
        raise ValueError("plot_metric_rounds needs at least one method")
    intervals = intervals or {}
    unknown = sorted(set(intervals) - set(values))
    if unknown:
        raise ValueError(f"intervals given for methods without values: {unknown}")
    max_rounds = max(len(v) for v in values.values())
    with _figure(7.0, 4.5) as fig:
        ax = fig.add_subplot()
        for method, series in values.items():
            y = np.asarray(series, dtype=float).reshape(-1)
            x = np.arange(1, y.size + 1)
            (line,) = ax.plot(x, y, marker="o", label=method)
            if method in intervals:
                bounds = np.asarray(intervals[method], dtype=float).reshape(-1, 2)
                if bounds.shape[0] != y.size:
                    raise ValueError(
                        f"method {method!r}: {bounds.shape[0]} intervals for {y.size} rounds"
                    )
                ax.fill_between(
                    x, bounds[:, 0], bounds[:, 1], color=line.get_color(), alpha=0.2, linewidth=0
                )
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if max_rounds:
            ax.set_xlim(0.75, max_rounds + 0.25)
        ax.grid(True, alpha=0.3)
        ax.legend(title="method")
        return _save_atomic(fig, path)


def plot_accuracy(
    path: str | os.PathLike[str],
    accuracy: Mapping[str, Sequence[float]],
    *,
    intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    title: str = "Held-out pairwise accuracy",
    ylabel: str = "accuracy",
) -> Path:
    """Plot held-out pairwise accuracy per method over rounds, with optional bands."""
    return plot_metric_rounds(path, accuracy, title=title, ylabel=ylabel, intervals=intervals)


def plot_margin_histograms(
    path: str | os.PathLike[str],
    histograms: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    title: str = "Base-pair margins per round",
) -> Path:
    """Plot each method's per-round margin histograms as step outlines and write a PNG.

    Args:
      path: target PNG file; missing parent directories are created.
      histograms: method name -> per-round ``(counts[bins], edges[bins + 1])``.
        Methods may have different round counts; a round's colour is the same in every
        subplot and goes from light (first round) to dark (last round).
      title: figure title.

    Returns:
      The path of the written PNG.
    """

    def draw(ax: Axes, method: str, r: int, item: tuple[np.ndarray, np.ndarray], color) -> None:
        counts, edges = (np.asarray(a, dtype=float).reshape(-1) for a in item)
        if edges.size != counts.size + 1:
            raise ValueError(
                f"method {method!r} round {r + 1}: {counts.size} counts need "
                f"{counts.size + 1} edges, got {edges.size}"
            )
        ax.stairs(counts, edges, color=color, linewidth=1.4)

    return _round_panels(
        path,
        histograms,
        draw,
        title=title,
        xlabel="margin r(chosen) - r(rejected)",
        ylabel="count",
        zero_line=True,
    )


def plot_spectral_densities(
    path: str | os.PathLike[str],
    densities: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    title: str = "Spectral density of the loss Hessian per round",
) -> Path:
    """Plot each method's per-round spectral densities (log scale) and write a PNG.

    Args:
      path: target PNG file; missing parent directories are created.
      densities: method name -> per-round ``(grid[G], density[G])``.
      title: figure title.

    Returns:
      The path of the written PNG.
    """

    def draw(ax: Axes, method: str, r: int, item: tuple[np.ndarray, np.ndarray], color) -> None:
        grid, density = (np.asarray(a, dtype=float).reshape(-1) for a in item)
        if grid.size != density.size:
            raise ValueError(
                f"method {method!r} round {r + 1}: grid of {grid.size} points for "
                f"{density.size} density values"
            )
        ax.plot(grid, np.maximum(density, _DENSITY_FLOOR), color=color, linewidth=1.4)
        ax.set_yscale("log")

    return _round_panels(
        path, densities, draw, title=title, xlabel="eigenvalue", ylabel="density", zero_line=True
    )


_DENSITY_FLOOR = 1e-8


def _round_panels(
    path: str | os.PathLike[str],
    series: Mapping[str, Sequence[Any]],
    draw: Callable[[Axes, str, int, Any, Any], None],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    zero_line: bool,
) -> Path:
    """One subplot per method, one curve per round coloured light (early) to dark (late)."""
    if not series:
        raise ValueError("a per-round plot needs at least one method")
    n_methods = len(series)
    n_cols = min(_MAX_COLUMNS, n_methods)
    n_rows = math.ceil(n_methods / n_cols)
    max_rounds = max(1, *(len(items) for items in series.values()))
    colors = _round_colors(max_rounds)
    with _figure(4.2 * n_cols + 1.0, 3.3 * n_rows + 0.6) as fig:
        axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=False).ravel()
        for ax, (method, rounds) in zip(axes, series.items(), strict=False):
            for r, item in enumerate(rounds):
                draw(ax, method, r, item, colors[r])
            if not rounds:
                ax.text(0.5, 0.5, "no rounds", ha="center", va="center", transform=ax.transAxes)
            if zero_line:
                ax.axvline(0.0, color="black", linestyle="--", linewidth=0.9)
            ax.set_title(method)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        for ax in axes[n_methods:]:
            ax.set_visible(False)
        norm = BoundaryNorm(np.arange(0.5, max_rounds + 1.5), max_rounds)
        mappable = ScalarMappable(norm=norm, cmap=ListedColormap(colors))
        colorbar = fig.colorbar(mappable, ax=list(axes[:n_methods]), label="round")
        colorbar.locator = MaxNLocator(integer=True)
        colorbar.update_ticks()
        fig.suptitle(title)
        return _save_atomic(fig, path)
