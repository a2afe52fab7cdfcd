"""Progress bars for long jobs (embedding, pool building): count, rate and time left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["progress_bar"]


class _RateColumn(ProgressColumn):
    """Items per second of a progress task."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"-- {self.unit}/s" if speed is None else f"{speed:,.1f} {self.unit}/s")


@contextmanager
def progress_bar(
    total: int, *, enabled: bool, label: str = "embedding", unit: str = "seq"
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (count, rate, ETA); yields ``advance(n)``."""
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled) as progress:
        task = progress.add_task(label, total=total)
        yield partial(progress.advance, task)
