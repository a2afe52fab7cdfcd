"""Stopping rules for Lanczos eigenvalues: the Ritz residual against ``residual**2 / gap``.

Why :func:`mars_jax.curvature.top_eigenvalues` stops on the Ritz residual ``r``. Kato-Temple
bounds the error of a Ritz value ``theta`` by ``r**2 / gap``, with ``gap`` the distance from
``theta`` to the *rest of the spectrum of A*; a solver only knows the distance to the next
Ritz value, which overestimates the gap while an eigenvalue of ``A`` near ``theta`` is not yet
represented by a Ritz value (a cluster). This script measures what that costs on dense
problems with a known spectrum: a random orthogonal basis, ``numpy.linalg.eigh`` as the
oracle, float64 Lanczos with full reorthogonalisation from a normal start (the same
tridiagonal quantities as the library's). Each rule stops at the first step whose estimate
meets ``rtol |theta_i|`` for every wanted value; per rule: converged runs, runs that returned a
value farther than the tolerance from every eigenvalue of ``A`` ("nearest", which the
residual rule excludes in exact arithmetic) or from the wanted eigenvalue ("wanted"), the
worst such ratio, and the steps spent after the first step whose values were within the
tolerance of the wanted eigenvalues. Counts only, no timings: the numbers do not depend on the
machine.

Usage::

    python benchmarks/stopping_rules.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

RULES = ("residual", "ritz gap")
CASES = ((1, "largest"), (2, "largest"), (3, "largest"), (1, "smallest"), (2, "smallest"))
FULL = {
    "size": 80,
    "max_order": 60,
    "seeds": 3,
    "rtols": (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6),
}
SMOKE = {"size": 30, "max_order": 25, "seeds": 1, "rtols": (1e-2, 1e-4)}


def spectra(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Test spectra: a GOE-like bulk in [-1, 1] with isolated, paired, tripled or dense ends."""
    noise = rng.standard_normal((size, size))
    bulk = np.linalg.eigvalsh((noise + noise.T) / np.sqrt(4 * size))
    out = {"isolated": np.concatenate([[-6.0, -4.0], bulk[2:-3], [3.0, 4.5, 7.0]])}
    for gap in (1e-1, 1e-2, 1e-3):
        out[f"pair {gap:g}"] = np.concatenate([bulk[:-2], [10.0 * (1 - gap), 10.0]])
        out[f"pair {gap:g} + isolated"] = np.concatenate([bulk[:-3], [5.0, 10 * (1 - gap), 10.0]])
        out[f"triple {gap:g}"] = np.concatenate([bulk[:-3], 10.0 * (1 - gap * np.arange(3)[::-1])])
    index = np.arange(1, size + 1)
    out["power 1"] = np.sign(rng.standard_normal(size)) * 0.2 / index**0.3 + 1.0 / index
    out["power 0.5"] = np.where(index % 7 == 0, -1.0, 1.0) / index**0.5
    out["dense top"] = np.concatenate([0.2 * bulk[:-20], 1.0 + 0.3 * np.sort(rng.random(20))])
    return out


def lanczos(matrix: np.ndarray, start: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas[order], betas[order])`` of Lanczos with full reorthogonalisation (twice)."""
    basis = np.zeros((order + 1, matrix.shape[0]))
    alphas, betas = np.zeros(order), np.zeros(order)
    basis[0] = start / np.linalg.norm(start)
    for step in range(order):
        image = matrix @ basis[step]
        alphas[step] = basis[step] @ image
        residual = image - alphas[step] * basis[step]
        if step:
            residual -= betas[step - 1] * basis[step - 1]
        for _ in range(2):
            residual -= basis[: step + 1].T @ (basis[: step + 1] @ residual)
        betas[step] = np.linalg.norm(residual)
        basis[step + 1] = residual / betas[step]
    return alphas, betas


def ritz(alphas: np.ndarray, betas: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending Ritz values ``[steps]`` of ``T_steps`` and their residuals ``|beta s_last|``."""
    tridiagonal = np.diag(alphas[:steps]) + np.diag(betas[: steps - 1], 1)
    values, vectors = np.linalg.eigh(tridiagonal + np.diag(betas[: steps - 1], -1))
    return values, np.abs(betas[steps - 1] * vectors[-1])


def estimate(
    values: np.ndarray, residuals: np.ndarray, wanted: np.ndarray, rule: str
) -> np.ndarray:
    """The rule's error estimates of the wanted Ritz values (indices ``wanted``)."""
    if rule == "residual" or values.size == 1:
        return residuals[wanted]
    gaps = np.array([np.min(np.abs(values[i] - np.delete(values, i))) for i in wanted])
    r = residuals[wanted]
    return np.where(gaps > r, r**2 / np.where(gaps > r, gaps, 1.0), r)


def first_step(
    alphas: np.ndarray, betas: np.ndarray, k: int, which: str, done: Callable[..., bool]
) -> tuple[int, np.ndarray] | None:
    """The first step ``m >= k`` with ``done(values, residuals, wanted)`` and its wanted values."""
    for steps in range(k, alphas.size + 1):
        values, residuals = ritz(alphas, betas, steps)
        wanted = np.argsort(-values if which == "largest" else values)[:k]
        if done(values, residuals, wanted):
            return steps, values[wanted]
    return None


def measure(cfg: dict) -> dict:
    """Every rule on every problem, case, seed and tolerance; totals per rule."""
    totals = {
        rule: {
            "runs": 0,
            "converged": 0,
            "nearest": 0,
            "wanted": 0,
            "worst_nearest": 0.0,
            "worst_wanted": 0.0,
            "extra_steps": 0,
        }
        for rule in RULES
    }
    for seed in range(cfg["seeds"]):
        rng = np.random.default_rng(seed)
        for eigenvalues in spectra(rng, cfg["size"]).values():
            basis, _ = np.linalg.qr(rng.standard_normal((cfg["size"], cfg["size"])))
            matrix = (basis * eigenvalues) @ basis.T
            exact = np.linalg.eigvalsh((matrix + matrix.T) / 2)
            for k, which in CASES:
                alphas, betas = lanczos(matrix, rng.standard_normal(cfg["size"]), cfg["max_order"])
                target = exact[::-1][:k] if which == "largest" else exact[:k]
                for rtol in cfg["rtols"]:
                    oracle = first_step(
                        alphas,
                        betas,
                        k,
                        which,
                        lambda v, r, w, t=target, q=rtol: bool(
                            np.all(np.abs(v[w] - t) <= q * np.abs(t))
                        ),
                    )
                    for rule in RULES:
                        total = totals[rule]
                        total["runs"] += 1
                        stop = first_step(
                            alphas,
                            betas,
                            k,
                            which,
                            lambda v, r, w, q=rtol, u=rule: bool(
                                np.all(estimate(v, r, w, u) <= q * np.abs(v[w]))
                            ),
                        )
                        if stop is None:
                            continue
                        steps, values = stop
                        total["converged"] += 1
                        nearest = np.max(
                            np.min(np.abs(values[:, None] - exact), axis=1)
                            / (rtol * np.abs(values))
                        )
                        wanted = np.max(np.abs(values - target) / (rtol * np.abs(target)))
                        total["nearest"] += int(nearest > 1)
                        total["wanted"] += int(wanted > 1)
                        total["worst_nearest"] = max(total["worst_nearest"], float(nearest))
                        total["worst_wanted"] = max(total["worst_wanted"], float(wanted))
                        total["extra_steps"] += steps - (oracle[0] if oracle else steps)
    return {
        "config": {**cfg, "rtols": list(cfg["rtols"]), "cases": [list(c) for c in CASES]},
        "rules": totals,
    }


def table(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"size {cfg['size']}, up to {cfg['max_order']} steps, {cfg['seeds']} seeds, tolerances "
        f"{', '.join(f'{t:g}' for t in cfg['rtols'])}; cases (k, which) {cfg['cases']}\n",
        "| rule | runs | converged | beyond rtol of every eigenvalue [worst, × rtol] "
        "| beyond rtol of the wanted one [worst] | steps after (-: before) the first accurate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rule, t in report["rules"].items():
        nearest = f"{t['nearest']} [{t['worst_nearest']:.2f}]"
        wanted = f"{t['wanted']} [{t['worst_wanted']:.2f}]"
        lines.append(
            f"| {rule} | {t['runs']:,} | {t['converged']:,} | {nearest} | {wanted} "
            f"| {t['extra_steps']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run, print the table, return (and optionally save) the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one small seed, seconds")
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    args = parser.parse_args(argv)
    report = measure(SMOKE if args.smoke else FULL)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
