"""A corpus of bad inputs through the CLI: each one line on stderr naming its source, exit 2.

Every case is aimed at an existing run directory (``--out RUN --resume`` unless the case is
about ``--out`` itself), and that directory must be byte-for-byte unchanged afterwards.
Most cases run in-process with ``cli.main``; a few run in a real process, to show that no
traceback reaches stderr.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mars_jax.runner.cli import main
from mars_jax.runner.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")
RUN_ARGS = [
    TINY,
    'refine.methods=["none"]',
    "refine.rounds=1",
    "data.num_heldout_pairs=50",
    "eval.num_bootstrap=0",
    "output.plots=false",
]

# File name -> content of the bad data files (bytes), each referred to as {name} below.
DATA_FILES = {
    "malformed.jsonl": b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "ch\n',
    "not_object.jsonl": b"[1, 2, 3]\n",
    "missing_field.jsonl": b'{"prompt": "p", "chosen": "a"}\n',
    "mistyped_field.jsonl": b'{"prompt": "p", "chosen": 5, "rejected": "b"}\n',
    "mistyped_prompt.jsonl": b'{"prompt": {"x": 1}, "chosen": "a", "rejected": "b"}\n',
    "empty_strings.jsonl": b'{"prompt": "p", "chosen": "", "rejected": "b"}\n' * 3,
    "not_utf8.jsonl": b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}\n',
    "nan_score.jsonl": b'{"prompt": "p", "responses": ["a", "b"], "scores": [NaN, 1.0]}\n',
    "inf_margin.jsonl": b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": Infinity}\n',
    "huge_margin.jsonl": b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1e400}\n',
    "bad_choice.jsonl": (
        b'{"info": {"id": "1", "post": "x"}, "summaries": [{"text": "a"}, {"text": "b"}],'
        b' "choice": 2}\n'
    ),
    "bad_rank.jsonl": b'{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}\n',
    "one_response.jsonl": b'{"prompt": "p", "responses": ["a"], "scores": [1.0]}\n',
    "empty.jsonl": b"",
    "blank_lines.jsonl": b"\n  \n\n",
    "truncated.jsonl.gz": gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')[:20],
    "unknown_key.toml": b'extends = "TINY"\n[refine]\nbudgett = 3\n',
    "unknown_section.toml": b'extends = "TINY"\n[refinee]\nbudget = 3\n',
    "bad_syntax.toml": b"[refine\nbudget = 3\n",
    "mistyped.toml": b'extends = "TINY"\n[refine]\nbudget = "lots"\n',
    "nan_value.toml": b'extends = "TINY"\n[train]\nlearning_rate = nan\n',
    "not_utf8.toml": b"[refine]\nbudget = 3 # \xff\xfe\n",
    "cycle_a.toml": b'extends = "cycle_b.toml"\n',
    "cycle_b.toml": b'extends = "cycle_a.toml"\n',
    "a_file": b"not a directory\n",
}


def pairs(name: str, fmt: str = "auto") -> list[str]:
    """Overrides that read ``name`` as the run's preference data."""
    return ["data.suite=pairs", f'data.paths=["{{bad}}/{name}"]', f"data.format={fmt}"]


# (id, argv after 'mars-jax', text the one-line error must contain). {run}: the existing run
# directory; {bad}: the folder of DATA_FILES; {tiny}: configs/tiny.toml.
RESUME = ["--out", "{run}", "--resume", "--quiet"]
CASES = [
    # Preference data files.
    ("malformed-json", ["run", *RUN_ARGS, *pairs("malformed.jsonl"), *RESUME], "malformed.jsonl:2"),
    ("not-an-object", ["run", *RUN_ARGS, *pairs("not_object.jsonl", "trl"), *RESUME], ":1"),
    ("missing-field", ["run", *RUN_ARGS, *pairs("missing_field.jsonl"), *RESUME], "rejected"),
    ("mistyped-field", ["run", *RUN_ARGS, *pairs("mistyped_field.jsonl"), *RESUME], "chosen"),
    ("mistyped-prompt", ["run", *RUN_ARGS, *pairs("mistyped_prompt.jsonl"), *RESUME], "prompt"),
    ("empty-strings", ["run", *RUN_ARGS, *pairs("empty_strings.jsonl"), *RESUME], "data.paths"),
    ("non-utf8-data", ["run", *RUN_ARGS, *pairs("not_utf8.jsonl"), *RESUME], "not_utf8.jsonl:1"),
    ("nan-score", ["run", *RUN_ARGS, *pairs("nan_score.jsonl"), *RESUME], "scores[0]"),
    ("inf-margin", ["run", *RUN_ARGS, *pairs("inf_margin.jsonl"), *RESUME], "margin"),
    ("huge-margin", ["run", *RUN_ARGS, *pairs("huge_margin.jsonl"), *RESUME], "margin"),
    ("bad-choice", ["run", *RUN_ARGS, *pairs("bad_choice.jsonl"), *RESUME], "choice"),
    ("bad-rank", ["run", *RUN_ARGS, *pairs("bad_rank.jsonl"), *RESUME], "ranks[0]"),
    ("one-response", ["run", *RUN_ARGS, *pairs("one_response.jsonl"), *RESUME], "responses"),
    ("empty-file", ["run", *RUN_ARGS, *pairs("empty.jsonl"), *RESUME], "empty.jsonl"),
    ("blank-lines", ["run", *RUN_ARGS, *pairs("blank_lines.jsonl"), *RESUME], "blank_lines"),
    ("truncated-gzip", ["run", *RUN_ARGS, *pairs("truncated.jsonl.gz"), *RESUME], "truncated"),
    ("missing-data-file", ["run", *RUN_ARGS, *pairs("absent.jsonl"), *RESUME], "absent.jsonl"),
    ("directory-as-data", ["run", *RUN_ARGS, *pairs("subdir"), *RESUME], "subdir"),
    ("pairs-without-paths", ["run", *RUN_ARGS, "data.suite=pairs", *RESUME], "data.paths"),
    # Config files and overrides.
    ("unknown-key", ["run", "{bad}/unknown_key.toml", *RESUME], "refine.budgett"),
    ("unknown-section", ["run", "{bad}/unknown_section.toml", *RESUME], "refinee"),
    ("toml-syntax", ["run", "{bad}/bad_syntax.toml", *RESUME], "bad_syntax.toml"),
    ("mistyped-value", ["run", "{bad}/mistyped.toml", *RESUME], "refine.budget"),
    ("nan-value", ["run", "{bad}/nan_value.toml", *RESUME], "train.learning_rate"),
    ("non-utf8-config", ["run", "{bad}/not_utf8.toml", *RESUME], "not_utf8.toml"),
    ("extends-cycle", ["run", "{bad}/cycle_a.toml", *RESUME], "cycle"),
    ("missing-config", ["run", "{bad}/absent.toml", *RESUME], "absent.toml"),
    ("directory-as-config", ["run", "{bad}/subdir", *RESUME], "subdir"),
    ("negative-budget", ["run", "{tiny}", "refine.budget=-1", *RESUME], "refine.budget"),
    ("zero-temperature", ["run", "{tiny}", "refine.temperature=0", *RESUME], "refine.temperature"),
    ("zero-rounds", ["run", "{tiny}", "refine.rounds=0", *RESUME], "refine.rounds"),
    ("unknown-method", ["run", "{tiny}", "refine.methods=['mars','bogus']", *RESUME], "bogus"),
    ("empty-methods", ["run", "{tiny}", "refine.methods=[]", *RESUME], "refine.methods"),
    ("duplicate-methods", ["run", "{tiny}", "refine.methods=['mars','mars']", *RESUME], "[1]"),
    ("empty-string-value", ["run", "{tiny}", "output.dir=''", *RESUME], "output.dir"),
    ("bool-as-int", ["run", "{tiny}", "train.seed=true", *RESUME], "train.seed"),
    ("unknown-override", ["run", "{tiny}", "refine.budgett=3", *RESUME], "refine.budgett"),
    ("override-without-key", ["run", "{tiny}", "budget=3", *RESUME], "budget=3"),
    ("two-config-files", ["run", "{tiny}", "{tiny}", *RESUME], "unexpected argument"),
    # Command-line arguments and the run directory.
    ("unknown-flag", ["run", "{tiny}", "--bogus-flag", *RESUME], "--bogus-flag"),
    ("unknown-command", ["frobnicate"], "frobnicate"),
    ("out-without-value", ["run", "{tiny}", "--out"], "--out"),
    ("force-without-resume", ["run", "{tiny}", "--out", "{run}", "--force"], "--force"),
    ("resume-without-out", ["run", "{tiny}", "--resume"], "--resume"),
    ("out-is-a-file", ["run", "{tiny}", "--out", "{bad}/a_file"], "a_file"),
    ("out-under-a-file", ["run", "{tiny}", "--out", "{bad}/a_file/run", "--quiet"], "a_file"),
    ("out-not-empty", ["run", *RUN_ARGS, "--out", "{run}"], "not empty"),
    ("resume-not-a-run", ["run", "{tiny}", "--out", "{bad}", "--resume"], "no config.json"),
    ("resume-other-config", ["run", *RUN_ARGS, "refine.budget=7", *RESUME], "refine.budget: 120"),
    ("resume-other-methods", ["run", *RUN_ARGS[:1], *RUN_ARGS[2:], *RESUME], "refine.methods"),
    (
        "resume-other-config-before-checkpoint",
        ["run", *RUN_ARGS, "--out", "{bad}/half_run", "--resume"],
        "refine.budget: 7 in the run, 120 now",
    ),
    (
        "resume-cut-metrics",
        ["run", *RUN_ARGS, "--out", "{bad}/cut_run", "--resume"],
        "metrics.jsonl: 0 complete records where the checkpoint recorded 1",
    ),
    (
        "resume-force-other-model",
        ["run", *RUN_ARGS, "model.hidden_sizes=[4]", "--force", *RESUME],
        "does not match this run's model",
    ),
    ("curvature-missing-run", ["curvature", "{bad}/absent"], "absent"),
    ("curvature-not-a-run", ["curvature", "{bad}"], "no config.json"),
    (
        "curvature-missing-data",
        ["curvature", "{run}", "--method", "none", "--data", "{bad}/x.npz"],
        "x.npz",
    ),
    ("curvature-unknown-method", ["curvature", "{run}", "--method", "mars"], "mars"),
]
SUBPROCESS_CASES = (
    "malformed-json",
    "non-utf8-config",
    "resume-other-config",
    "resume-force-other-model",
    "out-is-a-file",
)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, run_dir) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    for name, content in DATA_FILES.items():
        (folder / name).write_bytes(content.replace(b"TINY", TINY.replace("\\", "/").encode()))
    (folder / "subdir").mkdir()
    # A run killed before its first checkpoint: only config.json (with another budget).
    other = config_to_dict(load_config(TINY, [*RUN_ARGS[1:], "refine.budget=7"]))
    (folder / "half_run").mkdir()
    (folder / "half_run" / "config.json").write_text(json.dumps({"config": other}))
    # A copy of the run whose metrics.jsonl lost bytes after the checkpoint was taken.
    shutil.copytree(run_dir, folder / "cut_run")
    metrics = folder / "cut_run" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-5])
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("existing") / "run"
    assert main(["run", *RUN_ARGS, "--out", str(out), "--quiet"]) == 0
    return out


def _fill(argv: list[str], run_dir: Path, bad: Path) -> list[str]:
    return [arg.format(run=run_dir, bad=bad, tiny=TINY) for arg in argv]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_corpus_is_large_and_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert set(SUBPROCESS_CASES) <= set(ids)


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_alone(
    argv, expected, run_dir, bad, capsys
):
    before = _digest(run_dir)
    status = main(_fill(argv, run_dir, bad))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mars-jax: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert _digest(run_dir) == before


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process_shows_no_traceback(case, run_dir, bad):
    _, argv, expected = next(c for c in CASES if c[0] == case)
    before = _digest(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "mars_jax.runner.cli", *_fill(argv, run_dir, bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        cwd=bad,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert _digest(run_dir) == before


def test_the_run_directory_is_a_complete_run(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["methods"]["none"]["rounds_run"] == 1
    assert (run_dir / "models" / "none" / "model.json").is_file()
