"""Benchmark of ``lowest_margin_pairs``: chunked scan against naive full materialisation.

Draws random rewards ``[G, K]`` with between 2 and ``K`` valid responses per group, jits each
method, times it after a separate ahead-of-time compile and a warm-up run, and reports valid
pairs processed per second and peak memory. Every configuration runs in a fresh subprocess;
its peak memory is ``ru_maxrss`` at the end (host resident set, so it is the relevant number on
the CPU backend) minus that of a baseline subprocess which only imports jax and allocates the
rewards; the part already reached when compilation ends (XLA compiler and runtime overhead)
is shown too. On accelerators the device's own peak (``memory_stats``) is reported as well.

Usage::

    python benchmarks/group_margins.py [--smoke] [--groups 100000] [--responses 16] [--k 1000]
        [--chunk-size N] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHUNK_SIZES = (1024, 4096)
SMOKE = {"groups": 2000, "responses": 8, "k": 100, "repeats": 3}
FULL = {"groups": 100_000, "responses": 16, "k": 1000, "repeats": 5}


def make_data(groups: int, responses: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Random rewards ``[G, K]``, a mask with 2..K valid responses per group, and #valid pairs."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(groups, responses)).astype(np.float32)
    counts = rng.integers(2, responses + 1, size=groups)
    mask = np.arange(responses)[None, :] < counts[:, None]
    return rewards, mask, int((counts * (counts - 1) // 2).sum())


def naive_lowest_margin_pairs(rewards, mask, *, k: int):
    """Reference: materialise all ``[G, K, K]`` margins, then one ``top_k`` over everything."""
    import jax
    import jax.numpy as jnp

    from mars_jax.margins import LowestPairs, group_margins

    size = rewards.shape[1]
    margins, valid = group_margins(rewards, mask)
    scores = jnp.where(valid, -jnp.abs(margins), -jnp.inf).reshape(-1)
    _, flat = jax.lax.top_k(scores, k)
    ok = valid.reshape(-1)[flat]
    zero = jnp.zeros((), jnp.int32)
    return LowestPairs(
        margins=jnp.where(ok, margins.reshape(-1)[flat], 0),
        group=jnp.where(ok, flat // (size * size), zero),
        first=jnp.where(ok, flat // size % size, zero),
        second=jnp.where(ok, flat % size, zero),
        valid=ok,
    )


def run_worker(args: argparse.Namespace) -> dict:
    """One configuration in this (fresh) process; returns timings and peak memory."""
    import functools

    import jax
    import jax.numpy as jnp

    from mars_jax.margins import lowest_margin_pairs

    rewards_np, mask_np, valid_pairs = make_data(args.groups, args.responses, args.seed)
    rewards, mask = jnp.asarray(rewards_np), jnp.asarray(mask_np)
    jax.block_until_ready((rewards, mask))
    result: dict = {"method": args.worker, "chunk_size": args.chunk_size}
    if args.worker != "baseline":
        if args.worker == "chunked":
            fn = functools.partial(lowest_margin_pairs, k=args.k, chunk_size=args.chunk_size)
        else:
            fn = functools.partial(naive_lowest_margin_pairs, k=args.k)
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(rewards, mask).compile()
        compile_s = time.perf_counter() - start
        result["compiled_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = jax.block_until_ready(compiled(rewards, mask))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(rewards, mask))
            times.append(time.perf_counter() - start)
        run_s = statistics.median(times)
        digest = hashlib.sha256()
        for leaf in out:
            digest.update(np.asarray(leaf).tobytes())
        stats = jax.devices()[0].memory_stats() or {}
        result |= {
            "compile_s": compile_s,
            "run_s": run_s,
            "valid_pairs": valid_pairs,
            "pairs_per_s": valid_pairs / run_s,
            "num_found": int(np.asarray(out.valid).sum()),
            "digest": digest.hexdigest()[:16],
            "device_peak_mib": stats["peak_bytes_in_use"] / 2**20
            if "peak_bytes_in_use" in stats
            else None,
        }
    result |= {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    return result


def spawn(args: argparse.Namespace, method: str, chunk_size: int) -> dict:
    """Run one configuration in a fresh subprocess and parse its JSON result."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--groups",
        str(args.groups),
        "--responses",
        str(args.responses),
        "--k",
        str(args.k),
        "--chunk-size",
        str(chunk_size),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} (chunk {chunk_size}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(report: dict) -> str:
    """Markdown table of the rows of ``report``, memory relative to the naive method."""
    naive = next(row for row in report["rows"] if row["method"] == "naive")
    lines = [
        "| method | chunk | compile (s) | run (ms) | valid pairs/s | peak RSS (MiB) "
        "| Δ RSS over baseline (MiB) | of which by compile end (MiB) | Δ RSS vs naive "
        "| device peak (MiB) | same result as naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        ratio = (
            f"{row['extra_rss_mib'] / naive['extra_rss_mib']:.3f}×"
            if naive["extra_rss_mib"] > 0
            else "n/a"
        )
        device_peak = row["device_peak_mib"]
        lines.append(
            f"| {row['method']} | {row['chunk_size'] or '-'} | {row['compile_s']:.2f} "
            f"| {row['run_s'] * 1e3:.1f} | {row['pairs_per_s']:.3g} | {row['peak_rss_mib']:.1f} "
            f"| {row['extra_rss_mib']:.1f} | {row['compile_extra_rss_mib']:.1f} | {ratio} "
            f"| {'-' if device_peak is None else f'{device_peak:.1f}'} "
            f"| {'yes' if row['digest'] == naive['digest'] else 'NO'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--groups", type=int, help="G (default 100000; smoke 2000)")
    parser.add_argument("--responses", type=int, help="K (default 16; smoke 8)")
    parser.add_argument("--k", type=int, help="pairs to find (default 1000; smoke 100)")
    parser.add_argument("--chunk-size", type=int, help="one chunk size (default: 1024 and 4096)")
    parser.add_argument("--repeats", type=int, help="timed runs, median reported (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--worker", choices=["baseline", "chunked", "naive"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    for name, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (or, with the internal ``--worker``, one configuration of it)."""
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
        print(json.dumps(result))
        return result

    chunk_sizes = [args.chunk_size] if args.chunk_size else list(DEFAULT_CHUNK_SIZES)
    baseline = spawn(args, "baseline", 0)
    rows = [spawn(args, "chunked", chunk) for chunk in chunk_sizes]
    rows.append(spawn(args, "naive", 0))
    for row in rows:
        row["extra_rss_mib"] = row["peak_rss_mib"] - baseline["peak_rss_mib"]
        row["compile_extra_rss_mib"] = row["compiled_rss_mib"] - baseline["peak_rss_mib"]
    report = {
        "groups": args.groups,
        "responses": args.responses,
        "k": args.k,
        "repeats": args.repeats,
        "seed": args.seed,
        "valid_pairs": rows[0]["valid_pairs"],
        "backend": baseline["backend"],
        "device": baseline["device"],
        "baseline_rss_mib": baseline["peak_rss_mib"],
        "rows": rows,
    }
    print(
        f"lowest_margin_pairs: G={args.groups} K={args.responses} k={args.k}, "
        f"{report['valid_pairs']} valid pairs, {report['backend']} ({report['device']}), "
        f"baseline RSS {report['baseline_rss_mib']:.1f} MiB, median of {args.repeats} runs\n"
    )
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
