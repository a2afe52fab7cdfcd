"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest

# Programs that take longer than this to compile are kept in the on-disk cache.
CACHE_MIN_COMPILE_SECONDS = "0.1"
_CACHE_KEY = pytest.StashKey[str]()


def pytest_configure(config):
    """One on-disk XLA compilation cache for the whole test run, exported to the environment so
    that every subprocess the tests start (CLI runs, kill-and-resume drivers, the sharded
    checks) shares it. A cache hit loads the same executable, so results are unchanged; only
    compile time is saved (after ``jax.clear_caches()`` and across processes). A cache the
    user set with ``JAX_COMPILATION_CACHE_DIR`` is used as it is and kept."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    path = tempfile.mkdtemp(prefix="mars-jax-tests-xla-")
    config.stash[_CACHE_KEY] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = CACHE_MIN_COMPILE_SECONDS
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(CACHE_MIN_COMPILE_SECONDS)
    )


def pytest_unconfigure(config):
    path = config.stash.get(_CACHE_KEY, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


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
