"""Run a configured comparison of methods: data, model, the round loop, the run directory.

This is the runner's only reader of a :class:`~mars_jax.config.Config`. It builds the
data and the model once, then for each method starts from the same initial parameters
and the same run key (so methods are paired), warms up, and loops over rounds, writing
one JSON line per round as it goes.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mars_jax import __version__
from mars_jax.augment.cheap import make_cheap_pool
from mars_jax.checkpoint import save_params
from mars_jax.config import Config, ConfigError, config_hash, config_to_dict
from mars_jax.curvature.report import CurvatureSettings
from mars_jax.data.synthetic import SyntheticSuite, make_synthetic_suite, true_reward
from mars_jax.errors import MarsError
from mars_jax.metrics_log import MetricsLog, read_records
from mars_jax.models.heads import RewardModel, init_members, mlp_reward_model
from mars_jax.outputs import (
    compact_curvature,
    write_curvature_plots,
    write_json_atomic,
    write_plots,
)
from mars_jax.parallel import MeshSettings, placement_for
from mars_jax.refine import (
    NonFiniteTrainingError,
    RefineData,
    Refiner,
    RefineSettings,
    RoundSummary,
)
from mars_jax.resume import (
    Checkpoint,
    RunCheckpoints,
    check_fingerprint,
    check_methods,
    run_fingerprint,
)
from mars_jax.train import LossSettings, OptimizerSettings, Trainer
from mars_jax.types import PairBatch, Pool

__all__ = [
    "build_data",
    "build_trainer",
    "curvature_settings",
    "mesh_settings",
    "refine_settings",
    "run_experiment",
]

RoundCallback = Callable[[RoundSummary], None]


def build_data(config: Config) -> tuple[RefineData, dict[str, Any]]:
    """The run's base pairs, pool and held-out pairs, and a description of them."""
    if config.data.suite == "pairs" and config.model.finetune_encoder:
        from mars_jax.data.tokens import build_token_data

        return build_token_data(config)
    if config.data.suite == "pairs":
        from mars_jax.data.text import build_text_data

        return build_text_data(config)
    if config.model.finetune_encoder:
        raise ConfigError("model.finetune_encoder: needs data.suite = 'pairs' (text to encode)")
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

    pool, info = _synthetic_pool(config, suite)
    refine_data = RefineData(
        base=pairs(suite.base.chosen, suite.base.rejected),
        pool=pool,
        heldout=pairs(suite.heldout.chosen, suite.heldout.rejected),
    )
    return refine_data, {"suite": data.suite, "pool": data.pool, **_plain(info)}


def _synthetic_pool(config: Config, suite: SyntheticSuite) -> tuple[Pool, dict[str, Any]]:
    """The suite's own pool ("perturb"), or a "mixup" pool with its true-label statistics."""
    data = config.data
    if data.pool == "perturb":
        return suite.pool, suite.info
    if data.pool != "mixup":
        raise ConfigError(f"data.pool: {data.pool!r} needs data.suite = 'pairs'")
    pool = make_cheap_pool(
        "mixup",
        data.seed,
        suite.base.chosen,
        suite.base.rejected,
        paraphrases=data.paraphrases,
        perturbation_scale=data.perturbation_scale,
        prompt_shift_scale=data.prompt_shift_scale,
        mixup_scale=data.mixup_scale,
    )
    margin = true_reward(suite.reward_params, pool.chosen) - true_reward(
        suite.reward_params, pool.rejected
    )
    wrong = np.asarray(margin) < 0
    base_wrong = np.asarray(suite.base.true_margin)[np.asarray(pool.source)] < 0
    info = {
        **suite.info,
        "num_pool_pairs": int(wrong.size),
        "pool_label_disagreement": float(wrong.mean()),
        "pool_drift_fraction": float(np.mean(wrong != base_wrong)),
    }
    return pool, info


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
        curvature=curvature_settings(config) if config.curvature.enabled else None,
        curvature_lowest_k=config.curvature.lowest_k,
    )


def curvature_settings(config: Config) -> CurvatureSettings:
    """The curvature estimators' settings under ``config``."""
    curvature = config.curvature
    return CurvatureSettings(
        operators=curvature.operators,
        power_iters=curvature.power_iters,
        lanczos_order=curvature.lanczos_order,
        num_eigenvalues=curvature.num_eigenvalues,
        trace_probes=curvature.trace_probes,
        density_order=curvature.density_order,
        density_runs=curvature.density_runs,
        max_pairs=curvature.max_pairs,
        precision=curvature.precision,
        float64=curvature.float64,
    )


def mesh_settings(config: Config) -> MeshSettings:
    """The device-mesh settings under ``config``."""
    parallel = config.parallel
    return MeshSettings(
        enabled=parallel.enabled,
        data=parallel.data,
        fsdp=parallel.fsdp,
        distributed=parallel.distributed,
    )


def build_trainer(config: Config, data: RefineData) -> tuple[RewardModel, Trainer]:
    """The reward model for ``data``'s inputs and its trainer."""
    if config.model.finetune_encoder:
        from mars_jax.models.embeddings import finetune_reward_model
        from mars_jax.models.pretrained import resolve_encoder

        model = finetune_reward_model(
            resolve_encoder(config.data.encoder),
            hidden_sizes=config.model.hidden_sizes,
            pooling=config.data.pooling,
            activation=config.model.activation,
        )
    else:
        in_features = int(data.base.chosen.shape[-1])
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
    config: Config,
    run_dir: Path,
    *,
    data: tuple[RefineData, dict[str, Any]] | None = None,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run every configured method and write the run directory.

    Writes ``config.json`` first, then ``metrics.jsonl`` (one line per method and round,
    flushed as rounds finish) and, if enabled, ``curvature/METHOD/round-R.json``; after each
    round a checkpoint under ``checkpoints/`` (see :mod:`mars_jax.resume`); after each
    method its final model under ``models/METHOD/``; then ``summary.json`` and the plots.

    Args:
      config: a validated configuration.
      run_dir: an existing, empty directory, or with ``resume`` one written by this function.
      data: the run's data and its description, if already built (see build_data).
      on_round: called with each round's summary (progress display).
      resume: continue from the newest checkpoint in ``run_dir`` (from the start if none):
        finished methods are not rerun, ``metrics.jsonl`` is cut back to the checkpoint.
      force: resume even from a checkpoint of another config, data or library version.

    Returns:
      The summary written to ``summary.json``.

    Raises:
      MarsError: a checkpoint that does not match the run (unless ``force``).
      NonFiniteTrainingError: training diverged; the last checkpoint is left intact.
    """
    started = time.perf_counter()
    placement = placement_for(mesh_settings(config))
    data, data_info = data if data is not None else build_data(config)
    checkpoints = RunCheckpoints(run_dir)
    fingerprint = run_fingerprint(config, data)
    point = checkpoints.latest() if resume else None
    model, trainer = build_trainer(config, data)
    key = jax.random.key(config.train.seed)
    init_key, run_key = jax.random.split(key)
    metrics_path = run_dir / "metrics.jsonl"
    history: dict[str, list[dict[str, Any]]] = {m: [] for m in config.refine.methods}
    resumed_state = None
    if point is not None:  # every check before the first write
        checkpoints.check(point, fingerprint, force=force)
        check_methods(point, config.refine.methods)
        members = refine_settings(config, point.method).num_members
        like = jax.eval_shape(
            lambda: jax.vmap(trainer.init_state)(init_members(model, init_key, members))
        )
        resumed_state = checkpoints.restore_state(point, like, int(data.base.weight.shape[0]))
        records = read_records(metrics_path, size=point.metrics_size)
        if len(records) != point.metrics_lines:
            raise MarsError(
                f"{metrics_path}: {len(records)} complete records where the checkpoint "
                f"recorded {point.metrics_lines}; the run directory was modified"
            )
        for number, record in enumerate(records, 1):
            if record.get("method") not in history:
                raise MarsError(f"{metrics_path}:{number}: not a record of this run's methods")
            history[record["method"]].append(record)
    elif resume and not force and (run_dir / "config.json").exists():
        _check_config_file(run_dir / "config.json", fingerprint)
    write_json_atomic(
        run_dir / "config.json", {"config": config_to_dict(config), "hash": config_hash(config)}
    )

    finished: dict[str, str | None] = dict(point.finished) if point else {}
    size, lines = (point.metrics_size, point.metrics_lines) if point else (0, 0)
    try:
        with MetricsLog(metrics_path, size=size, lines=lines) as log:
            for method_index, method in enumerate(config.refine.methods):
                if method in finished:
                    continue
                settings = refine_settings(config, method)
                refiner = Refiner(trainer=trainer, settings=settings, placement=placement)
                if point is not None and point.method == method:
                    state = resumed_state
                else:
                    params = init_members(model, init_key, settings.num_members)
                    state = refiner.init(run_key, params, data)
                rounds = history[method]
                stop_reason = refiner.stop_reason(state)
                while state.round_index < config.refine.rounds and stop_reason is None:
                    state, summary = refiner.run_round(state, data)
                    record = summary.to_json()
                    if summary.curvature is not None:
                        write_json_atomic(
                            run_dir / "curvature" / method / f"round-{summary.round}.json",
                            {"method": method, "round": summary.round, **summary.curvature},
                        )
                        record["curvature"] = compact_curvature(summary.curvature)
                    log.append(record)
                    rounds.append(record)
                    checkpoints.save(
                        Checkpoint(
                            step=log.lines,
                            method_index=method_index,
                            method=method,
                            round_index=state.round_index,
                            budget_spent=state.budget_spent,
                            num_synthetic_rows=int(state.synthetic_rows.size),
                            finished=dict(finished),
                            metrics_size=log.size,
                            metrics_lines=log.lines,
                            fingerprint=fingerprint,
                        ),
                        state,
                    )
                    if on_round is not None:
                        on_round(summary)
                    stop_reason = refiner.stop_reason(state)
                model_dir = run_dir / "models" / method
                if model_dir.exists():  # a save cut short by a kill: write it again
                    shutil.rmtree(model_dir)
                params = state.train.params
                if jax.process_count() > 1:  # several hosts: process 0 saves a full copy
                    params = multihost_utils.process_allgather(params, tiled=True)
                if jax.process_index() == 0:
                    save_params(
                        model_dir,
                        params,
                        {
                            "method": method,
                            "num_members": settings.num_members,
                            "rounds": len(rounds),
                        },
                    )
                finished[method] = stop_reason
    except NonFiniteTrainingError as error:
        last = f"{checkpoints.directory / str(log.lines)}" if log.lines else "none yet"
        raise NonFiniteTrainingError(f"{error} (last checkpoint: {last})") from None
    finally:
        checkpoints.close()

    results = {
        method: {
            "rounds_run": len(rounds),
            "stop_reason": finished[method],
            "budget_spent": rounds[-1]["budget_spent"],
            "final": rounds[-1]["heldout"],
            "accuracy_per_round": [r["heldout"]["accuracy"] for r in rounds],
            "seconds": sum(r["seconds"] for r in rounds),
        }
        for method, rounds in history.items()
    }
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
            "mesh": None if placement is None else dict(placement.mesh.shape),
        },
    }
    write_json_atomic(run_dir / "summary.json", summary)
    if config.output.plots:
        write_plots(run_dir / "plots", history)
        if config.curvature.enabled:
            write_curvature_plots(run_dir / "plots" / "curvature", run_dir / "curvature", history)
    return summary


def _check_config_file(path: Path, fingerprint: dict[str, Any]) -> None:
    """Before the first checkpoint: refuse to resume a run directory of another config."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
        saved = {section: keys for section, keys in saved.items() if section != "output"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MarsError(f"{path}: not a run's config.json ({error!r})") from None
    check_fingerprint({**fingerprint, "config": saved}, fingerprint, source=str(path))


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a dict that may hold numpy or jax scalars."""
    return {key: np.asarray(value).tolist() for key, value in info.items()}
