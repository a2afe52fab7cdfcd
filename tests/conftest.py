"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module, so that the suite's memory stays
    that of one module rather than growing with every module run before it."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled (float64 oracles on CPU)."""
    with jax.enable_x64(True):
        yield


def symmetric_matrix(seed: int, eigenvalues) -> np.ndarray:
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q`` (numpy float64)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (basis * np.asarray(eigenvalues)) @ basis.T


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` loaded as a module (benchmarks are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
