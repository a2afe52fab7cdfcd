"""The three rings: kernels import only kernels, assembly never imports the runner.

Every import of every module is read from its source (function-level imports included), so
a lazy import cannot hide a dependency that points outward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mars_jax"
KERNELS = (
    "mars_jax.types",
    "mars_jax.errors",
    "mars_jax.settings",
    "mars_jax.losses",
    "mars_jax.margins",
    "mars_jax.allocation",
    "mars_jax.metrics",
    "mars_jax.floors",
    "mars_jax.curvature",
)
RUNNER = ("mars_jax.runner",)
FACADES = ("mars_jax", "mars_jax.__main__")  # the package's lazy exports and entry point


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("mars_jax.")}


MODULES = {
    _module_name(path): _imports(path)
    for path in sorted(PACKAGE.rglob("*.py"))
    if _module_name(path) not in FACADES
}


def test_the_rings_cover_every_module():
    kernels = [m for m in MODULES if _in(m, KERNELS)]
    runner = [m for m in MODULES if _in(m, RUNNER)]
    assert "mars_jax.allocation" in kernels and "mars_jax.runner.cli" in runner
    assert len(MODULES) > len(kernels) + len(runner) > 0


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, KERNELS)))
def test_kernels_import_only_kernels(module: str):
    outward = sorted(name for name in MODULES[module] if not _in(name, KERNELS))
    assert not outward, f"{module} imports {outward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _in(m, (*KERNELS, *RUNNER))))
def test_assembly_never_imports_the_runner(module: str):
    outward = sorted(name for name in MODULES[module] if _in(name, RUNNER))
    assert not outward, f"{module} imports {outward}"


def test_the_import_reader_sees_a_lazy_import(tmp_path: Path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from mars_jax.runner.cli import main\n    return main\n")
    assert "mars_jax.runner.cli" in _imports(source)
