"""The README's library example runs as written, and its quick start matches .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_library_example_runs(capsys):
    (example,) = code_blocks("python")
    exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    for name in ("accuracy", "auc", "signal_to_noise", "calibration_error"):
        assert name in printed


def test_quick_start_commands_are_what_ci_runs():
    install, tests = code_blocks("bash")[:2]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert install.strip() in ci
    assert tests.strip() in ci
