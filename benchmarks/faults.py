"""Random fault trials: kill runs and pool builds at random moments, damage checkpoints, rerun.

Goal: every trial survives, over at least 50 random trials. A trial survives when the work
finished after the fault is identical to an uninterrupted reference:

- ``run`` trial: ``mars-jax run --resume`` on the config (2 methods x 3 rounds) is SIGKILLed
  once a random checkpoint exists, plus a random delay (so inside a round, a save or a
  metrics line). Then, half of the time, when two checkpoints exist, the newest is damaged
  at random (a flipped byte in a random file of it, a file cut short, its ``state`` folder
  removed, or its meta garbled). ``--resume`` must then finish with exit status 0, no
  traceback, and results equal to the reference: every metrics line apart from timings,
  the final parameters of every method bitwise, the summary's final metrics.
- ``pool`` trial: ``mars-jax augment`` (the fake generator of tests/augment_fakes.py, which
  sleeps per call) is SIGKILLed once a random number of chunks exist plus a random delay,
  then run again: the pool must equal the reference build's (records, chunk headers and
  counts), and no answered request may be generated twice but the one in flight at the
  kill.

Runs use a shared JAX compilation cache; on a 2-core CPU a ``run`` trial takes about 20 s and
a ``pool`` trial about 6 s.

Usage::

    python benchmarks/faults.py [--smoke] [--trials 50] [--seed 0] [--config configs/tiny.toml]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUN_OVERRIDES = [
    'refine.methods=["uniform", "mars"]',
    "refine.rounds=3",
    "refine.synthetic_set=cumulative",
    "data.num_heldout_pairs=50",
    "eval.num_bootstrap=0",
    "output.plots=false",
]
AUGMENT_OVERRIDES = [
    "augment.prompt_paraphrases=3",
    "augment.chosen_paraphrases=2",
    "augment.rejected_paraphrases=2",
    "augment.chunk_size=4",
    "augment.max_retries=3",
]
NUM_POOL_PAIRS = 40
SMOKE_POOL_PAIRS = 16  # 4 chunks: a kill can still land before, between or inside them
DAMAGES = ("flip", "truncate", "missing-state", "garbled-meta")
TIMEOUT = 300

# ``mars-jax augment`` with the fake generator; each answered request's hash goes to
# $FAKE_CALL_LOG (the driver of tests/test_faults.py, less its $FAKE_HOLD).
AUGMENT_DRIVER = """
import hashlib, json, os, sys
sys.path.insert(0, sys.argv.pop(1))
import augment_fakes
from mars_jax.augment import generator as generators
from mars_jax.runner.cli import main

class Logged(augment_fakes.FakeGenerator):
    def generate(self, prompts, **options):
        replies = super().generate(prompts, **options)
        request = json.dumps([list(prompts), options], sort_keys=True).encode()
        fd = os.open(os.environ["FAKE_CALL_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, hashlib.sha256(request).hexdigest().encode() + b"\\n")
        os.close(fd)
        return replies

delay = float(os.environ.get("FAKE_DELAY", "0"))
generators.load_text_generator = lambda *args, **options: Logged(bad=True, delay=delay)
sys.exit(main(sys.argv[1:]))
"""


def _fakes():
    path = REPO / "tests" / "augment_fakes.py"
    spec = importlib.util.spec_from_file_location("augment_fakes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Trials:
    """The references and the two kinds of trial, in a work folder."""

    def __init__(self, work: Path, config: str, num_pool_pairs: int = NUM_POOL_PAIRS) -> None:
        self.work = work
        self.config = config
        self.num_pool_pairs = num_pool_pairs
        # A compilation cache already set (the test suite's) is shared; else one of its own.
        cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(work / "jax-cache")
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        self.pairs = work / "pairs.jsonl"
        table = _fakes().make_table(num_pool_pairs)
        rows = zip(table.prompt, table.chosen, table.rejected, strict=True)
        self.pairs.write_text(
            "".join(
                json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows
            )
        )
        self.reference_run = work / "reference-run"
        result = self._run_command(self.reference_run, resume=False)
        if result.returncode:
            raise RuntimeError(f"the reference run failed: {result.stderr}")
        self.reference_pool = work / "reference-pool"
        log = work / "reference-calls.log"
        result = self._augment(self.reference_pool, log, delay=0)
        if result.returncode:
            raise RuntimeError(f"the reference pool build failed: {result.stderr}")
        self.reference_calls = set(log.read_text().split())

    # -- commands

    def _run_args(self, out: Path, resume: bool) -> list[str]:
        command = [sys.executable, "-m", "mars_jax.runner.cli", "run", self.config]
        command += [*RUN_OVERRIDES, "--out", str(out), "--quiet"]
        return command + (["--resume"] if resume else [])

    def _run_command(self, out: Path, *, resume: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._run_args(out, resume),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def _augment_args(self, out: Path) -> list[str]:
        command = [sys.executable, "-c", AUGMENT_DRIVER, str(REPO / "tests"), "augment"]
        command += [*AUGMENT_OVERRIDES, "--pairs", str(self.pairs)]
        return [*command, "--out", str(out), "--quiet"]

    def _augment(self, out: Path, log: Path, delay: float) -> subprocess.CompletedProcess:
        env = {**self.env, "FAKE_CALL_LOG": str(log), "FAKE_DELAY": str(delay)}
        return subprocess.run(
            self._augment_args(out), env=env, capture_output=True, text=True, timeout=TIMEOUT
        )

    # -- trials

    def run_trial(self, rng: random.Random, out: Path) -> dict:
        """Kill a run, maybe damage its newest checkpoint, resume, compare."""
        kill_after = rng.randint(1, 5)  # of 6 checkpoints
        delay = rng.uniform(0, 0.4)
        process = subprocess.Popen(
            self._run_args(out, True),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT
        while max(_steps(out), default=0) < kill_after and process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                return {"kind": "run", "survived": False, "why": "no checkpoint appeared"}
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        trial = {"kind": "run", "kill_after": kill_after, "delay": round(delay, 3)}
        steps = _steps(out)
        if len(steps) >= 2 and rng.random() < 0.5:
            # Damage is reported when it is found: always, when the file digests were
            # recorded; without them (a kill right after the save) only damage that changes
            # the restored arrays, the only damage that matters then.
            trial["verifiable"] = (out / "checkpoints" / f".{steps[-1]}.sha256.json").is_file()
            trial["damaged"] = _damage(out / "checkpoints" / str(steps[-1]), rng)
        result = self._run_command(out)
        problems = []
        if result.returncode != 0 or "Traceback" in result.stderr:
            problems.append(f"resume exited {result.returncode}: {result.stderr.strip()[-300:]}")
        else:
            problems += _compare_runs(out, self.reference_run)
        if trial.get("verifiable") and "damaged checkpoint" not in result.stderr:
            problems.append("the damaged checkpoint was not reported")
        return {**trial, "survived": not problems, "why": "; ".join(problems)}

    def pool_trial(self, rng: random.Random, out: Path) -> dict:
        """Kill a pool build, build again, compare, count repeated requests."""
        kill_after = rng.randint(0, self.num_pool_pairs // 4 - 2)  # chunks written
        delay = rng.uniform(0, 0.2)
        log = out.with_name(out.name + "-calls.log")
        env = {**self.env, "FAKE_CALL_LOG": str(log), "FAKE_DELAY": "0.03"}
        process = subprocess.Popen(
            self._augment_args(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while process.poll() is None and not (
            len(list(out.glob("chunk-*.jsonl.gz"))) >= kill_after and log.exists()
        ):
            if time.monotonic() > deadline:
                process.kill()
                return {"kind": "pool", "survived": False, "why": "the build did not start"}
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        trial = {"kind": "pool", "kill_after": kill_after, "delay": round(delay, 3)}
        result = self._augment(out, log, delay=0)
        problems = []
        if result.returncode != 0 or "Traceback" in result.stderr:
            problems.append(f"rebuild exited {result.returncode}: {result.stderr.strip()[-300:]}")
        else:
            got, want = _pool(out), _pool(self.reference_pool)
            for part, a, b in zip(("chunks", "counts", "stray files"), got, want, strict=True):
                if a != b:
                    detail = f": {a}" if part == "stray files" else ""
                    problems.append(f"the pool's {part} differ from the reference build{detail}")
            calls = log.read_text().split()
            repeated = sum(count - 1 for count in Counter(calls).values())
            trial["repeated_requests"] = repeated
            if repeated > 1 or set(calls) != self.reference_calls:
                problems.append(f"{repeated} requests generated twice")
        return {**trial, "survived": not problems, "why": "; ".join(problems)}


def _steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _damage(step_dir: Path, rng: random.Random) -> str:
    kind = rng.choice(DAMAGES)
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size)
    if kind == "flip":
        path = rng.choice(files)
        data = bytearray(path.read_bytes())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        return f"flip {path.relative_to(step_dir)}"
    if kind == "truncate":
        path = rng.choice(files)
        path.write_bytes(path.read_bytes()[: rng.randrange(path.stat().st_size)])
        return f"truncate {path.relative_to(step_dir)}"
    if kind == "missing-state":
        shutil.rmtree(step_dir / "state")
        return kind
    (step_dir / "meta" / "metadata").write_text('{"step": ')
    return kind


def _compare_runs(run_dir: Path, reference: Path) -> list[str]:
    import jax
    import numpy as np

    from mars_jax.checkpoint import load_params, read_model_info
    from mars_jax.models.heads import init_members, mlp_reward_model

    def metrics(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return [{k: v for k, v in r.items() if k not in ("timings", "seconds")} for r in records]

    problems = []
    if metrics(run_dir) != metrics(reference):
        problems.append("metrics.jsonl differs")
    config = json.loads((reference / "config.json").read_text())["config"]
    model = mlp_reward_model(config["data"]["feature_dim"], config["model"]["hidden_sizes"])
    summary, reference_summary = (
        json.loads((folder / "summary.json").read_text()) for folder in (run_dir, reference)
    )
    for method in config["refine"]["methods"]:
        info = read_model_info(reference / "models" / method)
        like = jax.eval_shape(
            lambda info=info: init_members(model, jax.random.key(0), info["num_members"])
        )
        got = load_params(run_dir / "models" / method, like)
        want = load_params(reference / "models" / method, like)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            if np.asarray(a).tobytes() != np.asarray(b).tobytes():
                problems.append(f"models/{method} differs")
                break
        if summary["methods"][method]["final"] != reference_summary["methods"][method]["final"]:
            problems.append(f"summary of {method} differs")
    if (run_dir / ".mars-jax.lock").exists():
        problems.append("the lock was left behind")
    return problems


def _pool(directory: Path) -> tuple:
    chunks = sorted(directory.glob("chunk-*.jsonl.gz"))
    manifest = json.loads((directory / "pool.json").read_text())
    stray = sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
    return [gzip.decompress(p.read_bytes()) for p in chunks], manifest["counts"], stray


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="one trial of each kind, a smaller pool"
    )
    parser.add_argument("--trials", type=int, default=50, help="random trials (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random trials")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.toml"))
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    kinds = ["run", "pool"] if args.smoke else None
    num_trials = len(kinds) if kinds else args.trials
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mars-jax-faults-") as folder:
        work = Path(folder)
        trials = Trials(work, args.config, SMOKE_POOL_PAIRS if args.smoke else NUM_POOL_PAIRS)
        for number in range(num_trials):
            kind = kinds[number] if kinds else rng.choice(["run", "pool"])
            out = work / f"trial-{number}"
            trial = (trials.run_trial if kind == "run" else trials.pool_trial)(rng, out)
            results.append({"trial": number, **trial})
            shutil.rmtree(out, ignore_errors=True)
            status = "ok" if trial["survived"] else f"FAILED: {trial['why']}"
            print(f"trial {number}: {kind} {json.dumps(trial)[:160]} {status}", flush=True)
    survived = sum(trial["survived"] for trial in results)
    by_kind = {
        kind: (
            sum(t["survived"] for t in results if t["kind"] == kind),
            sum(t["kind"] == kind for t in results),
        )
        for kind in ("run", "pool")
    }
    report = {
        "config": args.config,
        "seed": args.seed,
        "trials": num_trials,
        "survived": survived,
        "by_kind": by_kind,
        "damaged_checkpoints": sum("damaged" in t for t in results),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print()
    print("| kind | survived | trials |")
    print("|---|---|---|")
    for kind, (ok, total) in by_kind.items():
        print(f"| {kind} | {ok} | {total} |")
    print(f"\ntrials survived: {survived}/{num_trials} ({report['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report["survived"] == report["trials"] else 1)
