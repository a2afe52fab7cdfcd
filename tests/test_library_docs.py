"""docs/library.md: every example runs as written (and checks its own results)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "library.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_page_has_its_four_examples():
    assert len(EXAMPLES) == 4


def test_the_mars_example_fits_in_30_lines():
    assert len(EXAMPLES[0].strip().splitlines()) <= 30


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_example_runs(index: int):
    exec(compile(EXAMPLES[index], f"{PAGE}:example{index + 1}", "exec"), {"__name__": "docs"})
