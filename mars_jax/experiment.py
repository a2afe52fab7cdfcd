"""Run a configured comparison of methods: data, model, the round loop, the run directory.

This is the runner's only reader of a :class:`~mars_jax.config.Config`. It builds the
data and the model once, then for each method starts from the same initial parameters
and the same run key (so methods are paired), warms up, and loops over rounds, writing
one JSON line per round as it goes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax import __version__
from mars_jax.config import Config, config_hash, config_to_dict
from mars_jax.data.synthetic import make_synthetic_suite
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.plots import plot_accuracy, plot_margin_histograms
from mars_jax.refine import RefineData, Refiner, RefineSettings, RoundSummary
from mars_jax.train import LossSettings, OptimizerSettings, Trainer
from mars_jax.types import PairBatch

__all__ = [
    "build_data",
    "build_trainer",
    "refine_settings",
    "run_experiment",
    "write_json_atomic",
    "write_plots",
]

RoundCallback = Callable[[RoundSummary], None]


def build_data(config: Config) -> tuple[RefineData, dict[str, Any]]:
    """The run's base pairs, pool and held-out pairs, and a description of them."""
    data = config.data
    suite = make_synthetic_suite(
        seed=data.seed,
        num_base_pairs=data.num_base_pairs,
        num_heldout_pairs=data.num_heldout_pairs,
        responses_per_prompt=data.responses_per_prompt,
        feature_dim=data.feature_dim,
        paraphrases=data.paraphrases,
        perturbation_scale=data.perturbation_scale,
        prompt_shift_scale=data.prompt_shift_scale,
        nonlinear_weight=data.nonlinear_weight,
        reward_scale=data.reward_scale,
        label_flip_rate=data.label_flip_rate,
    )

    def pairs(chosen: jax.Array, rejected: jax.Array) -> PairBatch:
        return PairBatch(chosen, rejected, jnp.ones(chosen.shape[0], jnp.float32))

    refine_data = RefineData(
        base=pairs(suite.base.chosen, suite.base.rejected),
        pool=suite.pool,
        heldout=pairs(suite.heldout.chosen, suite.heldout.rejected),
    )
    return refine_data, {"suite": data.suite, **_plain(suite.info)}


def refine_settings(config: Config, method: str) -> RefineSettings:
    """The round settings of ``method`` under ``config``."""
    refine, train, evaluation = config.refine, config.train, config.eval
    return RefineSettings(
        method=method,
        budget=refine.budget,
        temperature=refine.temperature,
        synthetic_set=refine.synthetic_set,
        reset_optimizer=refine.reset_optimizer,
        epochs_per_round=train.epochs_per_round,
        warmup_epochs=train.warmup_epochs,
        batch_size=train.batch_size,
        stop_tolerance=refine.stop_tolerance,
        stop_distance=refine.stop_distance,
        total_budget=refine.total_budget,
        adaboost_temperature=refine.adaboost_temperature,
        ensemble_size=refine.ensemble_size,
        ensemble_temperature=refine.ensemble_temperature,
        histogram_bins=evaluation.histogram_bins,
        calibration_bins=evaluation.calibration_bins,
        num_bootstrap=evaluation.num_bootstrap,
    )


def build_trainer(config: Config, in_features: int):
    """The reward model and its trainer."""
    model = mlp_reward_model(
        in_features, config.model.hidden_sizes, activation=config.model.activation
    )
    train = config.train
    trainer = Trainer(
        reward_fn=model.reward_fn,
        loss=LossSettings(
            kind=train.loss,
            target_margin=train.target_margin,
            label_smoothing=train.label_smoothing,
            centering_coef=train.centering_coef,
        ),
        optimizer=OptimizerSettings(
            learning_rate=train.learning_rate,
            warmup_fraction=train.warmup_fraction,
            weight_decay=train.weight_decay,
            grad_clip_norm=train.grad_clip_norm,
        ),
    )
    return model, trainer


def run_experiment(
    config: Config, run_dir: Path, *, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Run every configured method and write the run directory.

    Writes ``config.json`` first, then ``metrics.jsonl`` (one line per method and round,
    flushed as rounds finish), then ``summary.json`` and, if enabled, the plots.

    Args:
      config: a validated configuration.
      run_dir: an existing, empty directory.
      on_round: called with each round's summary (progress display).

    Returns:
      The summary written to ``summary.json``.
    """
    started = time.perf_counter()
    write_json_atomic(
        run_dir / "config.json", {"config": config_to_dict(config), "hash": config_hash(config)}
    )
    data, data_info = build_data(config)
    model, trainer = build_trainer(config, int(data.base.chosen.shape[-1]))
    key = jax.random.key(config.train.seed)
    init_key, run_key = jax.random.split(key)

    results: dict[str, dict[str, Any]] = {}
    history: dict[str, list[dict[str, Any]]] = {}
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics_file:
        for method in config.refine.methods:
            settings = refine_settings(config, method)
            refiner = Refiner(trainer=trainer, settings=settings)
            params = init_members(model, init_key, settings.num_members)
            state = refiner.init(run_key, params, data)
            rounds: list[dict[str, Any]] = []
            stop_reason = None
            for _ in range(config.refine.rounds):
                state, summary = refiner.run_round(state, data)
                record = summary.to_json()
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                rounds.append(record)
                if on_round is not None:
                    on_round(summary)
                stop_reason = refiner.stop_reason(state)
                if stop_reason:
                    break
            results[method] = {
                "rounds_run": len(rounds),
                "stop_reason": stop_reason,
                "budget_spent": state.budget_spent,
                "final": rounds[-1]["heldout"],
                "accuracy_per_round": [r["heldout"]["accuracy"] for r in rounds],
                "seconds": sum(r["seconds"] for r in rounds),
            }
            history[method] = rounds

    summary = {
        "version": __version__,
        "config_hash": config_hash(config),
        "data": data_info,
        "methods": results,
        "seconds": time.perf_counter() - started,
        "platform": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
    }
    write_json_atomic(run_dir / "summary.json", summary)
    if config.output.plots:
        write_plots(run_dir / "plots", history)
    return summary


def write_plots(plot_dir: Path, history: dict[str, list[dict[str, Any]]]) -> None:
    """Held-out accuracy per round per method, and base-margin histograms per round."""
    accuracy = {m: [r["heldout"]["accuracy"] for r in rounds] for m, rounds in history.items()}
    intervals = None
    if all("accuracy_lower" in r["heldout"] for rounds in history.values() for r in rounds):
        intervals = {
            m: [(r["heldout"]["accuracy_lower"], r["heldout"]["accuracy_upper"]) for r in rounds]
            for m, rounds in history.items()
        }
    plot_accuracy(plot_dir / "accuracy.png", accuracy, intervals=intervals)
    histograms = {
        m: [(np.asarray(r["histogram_counts"]), np.asarray(r["histogram_edges"])) for r in rounds]
        for m, rounds in history.items()
    }
    plot_margin_histograms(plot_dir / "margins.png", histograms)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a dict that may hold numpy or jax scalars."""
    return {key: np.asarray(value).tolist() for key, value in info.items()}
