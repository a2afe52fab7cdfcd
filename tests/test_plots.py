"""Tests for the PNG plots of a MARS run directory."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mars_jax.runner.plots import plot_accuracy, plot_margin_histograms, plot_metric_rounds

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    """Assert ``path`` is a readable, non-trivial PNG and is alone with no temp files."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 2000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _histograms(rounds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    edges = np.linspace(-4.0, 4.0, 21)
    return [np.histogram(rng.normal(0.3 * r, 1.0, size=200), bins=edges) for r in range(rounds)]


def test_accuracy_with_intervals_and_uneven_rounds(tmp_path: Path) -> None:
    accuracy = {"none": [0.6, 0.62, 0.63], "mars": [0.6, 0.66, 0.7, 0.72], "uniform": [0.61]}
    intervals = {
        "none": [(0.55, 0.65), (0.57, 0.67), (0.58, 0.68)],
        "mars": [(0.55, 0.65), (0.6, 0.7), (0.65, 0.75), (0.68, 0.76)],
    }
    out = plot_accuracy(tmp_path / "accuracy.png", accuracy, intervals=intervals)
    assert out == tmp_path / "accuracy.png"
    _assert_png(out)


def test_accuracy_without_intervals_single_round(tmp_path: Path) -> None:
    out = plot_accuracy(str(tmp_path / "acc.png"), {"none": [0.5], "mars": [0.55]})
    assert isinstance(out, Path)
    _assert_png(out)


def test_metric_rounds_generic(tmp_path: Path) -> None:
    out = plot_metric_rounds(
        tmp_path / "loss.png",
        {"west_of_n": [1.0, 0.8, float("nan"), 0.5], "mars": []},
        title="Loss",
        ylabel="loss",
    )
    _assert_png(out)


def test_metric_rounds_rejects_bad_intervals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 intervals for 3 rounds"):
        plot_accuracy(
            tmp_path / "a.png", {"mars": [0.1, 0.2, 0.3]}, intervals={"mars": [(0, 1), (0, 1)]}
        )
    with pytest.raises(ValueError, match="without values"):
        plot_accuracy(tmp_path / "a.png", {"mars": [0.1]}, intervals={"none": [(0, 1)]})
    with pytest.raises(ValueError, match="at least one method"):
        plot_accuracy(tmp_path / "a.png", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_methods", [1, 4])
def test_margin_histograms(tmp_path: Path, n_methods: int) -> None:
    methods = ["none", "uniform", "west_of_n", "mars"][:n_methods]
    histograms = {m: _histograms(rounds=i + 1, seed=i) for i, m in enumerate(methods)}
    out = plot_margin_histograms(tmp_path / "margins.png", histograms)
    _assert_png(out)


def test_margin_histograms_single_round_and_empty_method(tmp_path: Path) -> None:
    out = plot_margin_histograms(
        tmp_path / "m.png", {"mars": _histograms(rounds=1, seed=0), "none": []}, title="t"
    )
    _assert_png(out)


def test_margin_histograms_rejects_bad_edges(tmp_path: Path) -> None:
    counts, edges = _histograms(rounds=1, seed=0)[0]
    with pytest.raises(ValueError, match="edges"):
        plot_margin_histograms(tmp_path / "m.png", {"mars": [(counts, edges[:-1])]})
    assert list(tmp_path.iterdir()) == []


def test_parent_directories_created(tmp_path: Path) -> None:
    nested = tmp_path / "run" / "plots" / "deep"
    a = plot_accuracy(nested / "acc.png", {"mars": [0.5, 0.6]})
    h = plot_margin_histograms(nested / "hist.png", {"mars": _histograms(rounds=2, seed=1)})
    assert a.is_file()
    assert h.is_file()
    assert sorted(p.name for p in nested.iterdir()) == ["acc.png", "hist.png"]


@pytest.mark.parametrize("which", ["accuracy", "histograms"])
def test_failed_render_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    target = tmp_path / "plot.png"
    if which == "accuracy":
        plot_accuracy(target, {"mars": [0.5, 0.6]})
    else:
        plot_margin_histograms(target, {"mars": _histograms(rounds=2, seed=2)})
    old = target.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("render failed")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        if which == "accuracy":
            plot_accuracy(target, {"mars": [0.1, 0.2, 0.3]})
        else:
            plot_margin_histograms(target, {"mars": _histograms(rounds=3, seed=3)})
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
