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

# The files with the most test time (seconds on 2 quiet cores), longest first. The workers
# (``--dist loadfile``) take files in collection order, so these go first and the many short
# files fill in at the end, where they let both workers finish together. A stale entry costs
# only balance, never a result.
LONGEST_FILES = (
    "test_parallel.py",
    "test_curvature_tolerance.py",
    "test_faults.py",
    "test_curvature_report.py",
    "test_bench_curvature.py",
    "test_experiments.py",
    "test_resume.py",
    "test_continuous_batching.py",
    "test_llm_backbone.py",
    "test_refine.py",
    "test_augment_run.py",
    "test_curvature_run.py",
    "test_library_docs.py",
    "test_allocation_in_the_loop.py",
    "test_multihost.py",
)


def pytest_configure(config):
    _compile_without_llvm_optimisation()
    _share_one_compilation_cache(config)


def _compile_without_llvm_optimisation() -> None:
    """XLA's CPU backend compiles the test run's programs at optimisation level 0, exported to
    the environment for every subprocess: about a third less CPU time for the suite, where
    compiling many small programs dominates and running them does not. The programs (HLO) are
    the same; the last bits of a float result may differ from a build at the default level 3,
    which the tests' tolerances allow. A level the user set in ``XLA_FLAGS`` is kept (set
    ``--xla_backend_optimization_level=3`` there to test at the default)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


def _share_one_compilation_cache(config) -> None:
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


def pytest_collection_modifyitems(config, items):
    """Collect the test files of ``LONGEST_FILES`` first, longest first (order within a file
    and among the other files is kept)."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
