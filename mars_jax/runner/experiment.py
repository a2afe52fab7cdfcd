"""Run a configured comparison of methods: data, model, the round loop, the run directory.

:func:`run_experiment` reads top to bottom: build the data and the model once, open the run
directory (resuming from its newest checkpoint if asked), then for each method start from the
same initial parameters and the same run key (so methods are paired), warm up and loop over
rounds (one JSON line and one checkpoint per round), save the final model, and finally write
the summary and the plots.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from mars_jax import __version__
from mars_jax.checkpoint import save_params
from mars_jax.curvature.report import CurvatureReporter, CurvatureSettings
from mars_jax.data.floor_report import beaten_floors
from mars_jax.errors import MarsError
from mars_jax.evaluation import EvalSettings, Evaluator
from mars_jax.files import write_json_atomic
from mars_jax.losses import LossSettings
from mars_jax.models.heads import RewardModel, init_members, mlp_reward_model
from mars_jax.parallel import MeshSettings, Placement, placement_for
from mars_jax.refine import (
    RefineData,
    Refiner,
    RefineSettings,
    RoundState,
    RoundSummary,
)
from mars_jax.runner.config import Config, config_hash, config_to_dict
from mars_jax.runner.data import build_data
from mars_jax.runner.logs import MetricsLog, read_records
from mars_jax.runner.outputs import compact_curvature, write_curvature_plots, write_plots
from mars_jax.runner.resume import (
    Checkpoint,
    RunCheckpoints,
    check_fingerprint,
    check_methods,
    run_fingerprint,
)
from mars_jax.settings import settings_from
from mars_jax.train import FitSettings, NonFiniteTrainingError, OptimizerSettings, Trainer
from mars_jax.types import Records

__all__ = ["build_refiners", "build_trainer", "run_experiment"]


def build_trainer(config: Config, data: RefineData) -> tuple[RewardModel, Trainer]:
    """The reward model for ``data``'s inputs and its trainer."""
    if config.model.finetune_encoder:
        from mars_jax.models.backbone import backbone_pooling
        from mars_jax.models.finetune import finetune_reward_model
        from mars_jax.models.pretrained import resolve_encoder

        model = finetune_reward_model(
            resolve_encoder(config.data.encoder),
            hidden_sizes=config.model.hidden_sizes,
            pooling=backbone_pooling("bert", config.data.pooling),
            activation=config.model.activation,
        )
    else:
        in_features = int(data.base.chosen.shape[-1])
        model = mlp_reward_model(
            in_features, config.model.hidden_sizes, activation=config.model.activation
        )
    trainer = Trainer.adamw(
        model.reward_fn,
        loss=settings_from(LossSettings, config.train),
        optimizer=settings_from(OptimizerSettings, config.train),
    )
    return model, trainer


def build_refiners(
    config: Config,
    trainer: Trainer,
    placement: Placement | None = None,
    *,
    methods: tuple[str, ...] | None = None,
) -> dict[str, Refiner]:
    """A refiner per method (default: ``config.refine.methods``), sharing one evaluator and
    one curvature reporter (so each shape compiles once per run)."""
    evaluator = Evaluator(trainer, settings_from(EvalSettings, config.eval), placement)
    curvature = None
    if config.curvature.enabled:
        curvature = CurvatureReporter(
            trainer.mean_reward,
            settings_from(CurvatureSettings, config.curvature),
            loss=trainer.loss,
            place_params=None if placement is None else placement.put_params,
            place_pairs=None if placement is None else placement.put_pairs,
            constrain=None if placement is None else placement.constrain_params,
        )
    return {
        method: Refiner(
            method,
            trainer,
            settings=settings_from(RefineSettings, config.refine),
            fit=settings_from(FitSettings, config.train),
            evaluator=evaluator,
            curvature=curvature,
            curvature_lowest_k=config.curvature.lowest_k,
            placement=placement,
        )
        for method in (config.refine.methods if methods is None else methods)
    }


@dataclass
class _RunStart:
    """Where the run starts: from scratch, or from a checkpoint (its state and records)."""

    checkpoint: Checkpoint | None = None
    state: RoundState | None = None
    history: Records = field(default_factory=dict)

    @property
    def finished(self) -> dict[str, str | None]:
        return dict(self.checkpoint.finished) if self.checkpoint else {}


def run_experiment(
    config: Config,
    run_dir: Path,
    *,
    data: tuple[RefineData, dict[str, Any]] | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
    resume: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run every configured method and write the run directory.

    Writes ``config.json`` first, then ``metrics.jsonl`` (one line per method and round,
    flushed as rounds finish) and, if enabled, ``curvature/METHOD/round-R.json``; after each
    round a checkpoint under ``checkpoints/`` (see :mod:`mars_jax.runner.resume`); after each
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
    placement = placement_for(settings_from(MeshSettings, config.parallel))
    data, data_info = data if data is not None else build_data(config)
    model, trainer = build_trainer(config, data)
    refiners = build_refiners(config, trainer, placement)
    init_key, run_key = jax.random.split(jax.random.key(config.train.seed))

    def restore(point: Checkpoint) -> RoundState:
        members = refiners[point.method].num_members
        like = jax.eval_shape(lambda: trainer.init_members(init_members(model, init_key, members)))
        return checkpoints.restore_state(point, like, int(data.base.weight.shape[0]))

    checkpoints = RunCheckpoints(run_dir)
    fingerprint = run_fingerprint(config, data)
    start = _open_run(config, run_dir, fingerprint, checkpoints, restore, resume, force)
    finished = start.finished
    history: Records = {m: start.history.get(m, []) for m in config.refine.methods}
    point = start.checkpoint
    size, lines = (point.metrics_size, point.metrics_lines) if point else (0, 0)
    validation: dict[str, dict[str, float]] = {}
    try:
        with MetricsLog(run_dir / "metrics.jsonl", size=size, lines=lines) as log:
            for index, (method, refiner) in enumerate(refiners.items()):
                if method in finished:
                    continue
                if point is not None and point.method == method:
                    state = start.state
                else:
                    params = init_members(model, init_key, refiner.num_members)
                    state = refiner.init(run_key, params, data)

                def save(state: RoundState, method: str = method, index: int = index) -> None:
                    _save_checkpoint(checkpoints, log, state, method, index, finished, fingerprint)

                state, finished[method] = _run_rounds(
                    refiner, state, data, run_dir, log, history[method], save, on_round
                )
                _save_model(run_dir / "models" / method, state, refiner, len(history[method]))
                if data.validation is not None:
                    validation[method] = refiner.evaluator(
                        state.train.params, data.validation, jax.random.key(0)
                    )
    except NonFiniteTrainingError as error:
        last = f"{checkpoints.directory / str(log.lines)}" if log.lines else "none yet"
        raise NonFiniteTrainingError(f"{error} (last checkpoint: {last})") from None
    finally:
        checkpoints.close()
    summary = _summary(config, data_info, history, finished, placement, started, validation)
    write_json_atomic(run_dir / "summary.json", summary)
    _write_plots(config, run_dir, history)
    return summary


def _open_run(
    config: Config,
    run_dir: Path,
    fingerprint: dict[str, Any],
    checkpoints: RunCheckpoints,
    restore: Callable[[Checkpoint], RoundState],
    resume: bool,
    force: bool,
) -> _RunStart:
    """Check a resumed run against its newest checkpoint, then write ``config.json``.

    Every check comes before the first write, so a refused resume changes nothing.
    ``restore(checkpoint)`` restores the checkpoint's round state.
    """
    start = _RunStart()
    found = None
    if resume and jax.process_count() > 1:
        raise MarsError(
            f"--resume: a run of {jax.process_count()} processes cannot resume yet (process 0 "
            "alone keeps checkpoints); start it again with a new --out"
        )
    if resume:

        def check(point: Checkpoint) -> None:
            checkpoints.check(point, fingerprint, force=force)
            check_methods(point, config.refine.methods)

        found = checkpoints.resume_point(check, restore)
    if found is not None:
        point = found.checkpoint
        start = _RunStart(
            point, found.state, _read_history(run_dir / "metrics.jsonl", point, config)
        )
        if found.damaged:  # one line: what was damaged, where the run resumes
            steps = [step for step, _ in found.damaged]
            reasons = "; ".join(reason for _, reason in found.damaged)
            print(
                f"mars-jax: warning: damaged checkpoint {reasons}; resuming from checkpoint "
                f"{point.step} (the damaged one is removed)",
                file=sys.stderr,
            )
            checkpoints.discard(steps)
    elif resume and not force and (run_dir / "config.json").exists():
        _check_config_file(run_dir / "config.json", fingerprint)
    if resume:  # temporaries of JSON files and plots that a kill left behind
        for pattern in (".*.tmp", "*/.*.tmp", "*/*/.*.tmp"):
            for stray in run_dir.glob(pattern):
                stray.unlink(missing_ok=True)
    write_json_atomic(
        run_dir / "config.json", {"config": config_to_dict(config), "hash": config_hash(config)}
    )
    return start


def _read_history(path: Path, point: Checkpoint, config: Config) -> Records:
    """The records of ``metrics.jsonl`` up to the checkpoint, by method."""
    records = read_records(path, size=point.metrics_size)
    if len(records) != point.metrics_lines:
        raise MarsError(
            f"{path}: {len(records)} complete records where the checkpoint "
            f"recorded {point.metrics_lines}; the run directory was modified"
        )
    history: Records = {method: [] for method in config.refine.methods}
    for number, record in enumerate(records, 1):
        if record.get("method") not in history:
            raise MarsError(f"{path}:{number}: not a record of this run's methods")
        history[record["method"]].append(record)
    return history


def _run_rounds(
    refiner: Refiner,
    state: RoundState,
    data: RefineData,
    run_dir: Path,
    log: MetricsLog,
    rounds: list[dict[str, Any]],
    save: Callable[[RoundState], None],
    on_round: Callable[[RoundSummary], None] | None,
) -> tuple[RoundState, str | None]:
    """Rounds of one method until ``refine.rounds`` or a stop rule; returns the stop reason."""
    stop_reason = refiner.stop_reason(state)
    while state.round_index < refiner.settings.rounds and stop_reason is None:
        state, summary = refiner.run_round(state, data)
        record = summary.to_json()
        if summary.curvature is not None:
            write_json_atomic(
                run_dir / "curvature" / summary.method / f"round-{summary.round}.json",
                {"method": summary.method, "round": summary.round, **summary.curvature},
            )
            record["curvature"] = compact_curvature(summary.curvature)
        log.append(record)
        rounds.append(record)
        save(state)
        if on_round is not None:
            on_round(summary)
        stop_reason = refiner.stop_reason(state)
    return state, stop_reason


def _save_checkpoint(
    checkpoints: RunCheckpoints,
    log: MetricsLog,
    state: RoundState,
    method: str,
    method_index: int,
    finished: dict[str, str | None],
    fingerprint: dict[str, Any],
) -> None:
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


def _save_model(model_dir: Path, state: RoundState, refiner: Refiner, rounds: int) -> None:
    """The method's final parameters (process 0 saves a full copy on several hosts)."""
    if model_dir.exists():  # a save cut short by a kill: write it again
        shutil.rmtree(model_dir)
    params = state.train.params
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        info = {"method": refiner.method, "num_members": refiner.num_members, "rounds": rounds}
        save_params(model_dir, params, info)


def _summary(
    config: Config,
    data_info: dict[str, Any],
    history: Records,
    finished: dict[str, str | None],
    placement: Placement | None,
    started: float,
    validation: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """``summary.json``: final metrics per method, the data and the platform.

    ``validation``: the final model's metrics on the validation pairs, per method (methods
    finished before a resume have none).
    """
    results = {
        method: {
            "rounds_run": len(rounds),
            "stop_reason": finished[method],
            "budget_spent": rounds[-1]["budget_spent"],
            "final": rounds[-1]["heldout"],
            "accuracy_per_round": [r["heldout"]["accuracy"] for r in rounds],
            "allocation_distance_per_round": [r["allocation"]["total_variation"] for r in rounds],
            "seconds": sum(r["seconds"] for r in rounds),
        }
        for method, rounds in history.items()
    }
    for method, metrics in (validation or {}).items():
        results[method]["validation"] = metrics
    data_info = dict(data_info)
    floors = data_info.pop("floors", None)
    summary: dict[str, Any] = {
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
    if floors:
        finals = {method: result["final"]["accuracy"] for method, result in results.items()}
        summary["floors"] = floors
        summary["floor_check"] = beaten_floors(floors, finals)
    return summary


def _write_plots(config: Config, run_dir: Path, history: Records) -> None:
    if config.output.plots:
        write_plots(run_dir / "plots", history)
        if config.curvature.enabled:
            write_curvature_plots(run_dir / "plots" / "curvature", run_dir / "curvature", history)


def _check_config_file(path: Path, fingerprint: dict[str, Any]) -> None:
    """Before the first checkpoint: refuse to resume a run directory of another config."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
        saved = {section: keys for section, keys in saved.items() if section != "output"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MarsError(f"{path}: not a run's config.json ({error!r})") from None
    check_fingerprint({**fingerprint, "config": saved}, fingerprint, source=str(path))
