"""The examples in the curvature package's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mars_jax.curvature",
    "mars_jax.curvature.density",
    "mars_jax.curvature.operators",
    "mars_jax.curvature.power",
    "mars_jax.curvature.trace",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
