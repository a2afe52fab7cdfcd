"""The MARS round: score -> allocate -> draw -> train -> evaluate, on immutable states.

A :class:`Refiner` holds what does not change during a run (the trainer, the settings
and the compiled functions) and maps a :class:`RoundState` to the next one with
:meth:`Refiner.run_round`. The outer loop is the caller's short Python ``for``::

    state = refiner.init(key, params)
    for _ in range(settings.rounds):
        state, summary = refiner.run_round(state, data)
        if refiner.stop_reason(state):
            break

Choices from method.md section 3, all in :class:`RefineSettings`: absolute or signed
margin (methods ``mars`` / ``mars_signed``), a per-round or cumulative synthetic set, a
warm-up on the base pairs before the first allocation, optimizer reset per round, and the
stop rule (distance between successive base-margin distributions, or total budget).

Base margins scored after a round's training are kept in the state and reused as the
next round's allocation signal, so each round scores the base set once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.allocation import (
    Draws,
    adaboost_weights,
    draw_from_pool,
    ensemble_weights,
    largest_remainder_budgets,
    mars_weights,
    pool_size_weights,
)
from mars_jax.curvature.report import CurvatureSettings, curvature_report
from mars_jax.errors import MarsError
from mars_jax.metrics import bootstrap_ci, evaluate_margins
from mars_jax.parallel import Placement, pad_rows
from mars_jax.train import StepStats, Trainer, TrainState
from mars_jax.types import PairBatch, Pool, PyTree, tree_concat, tree_take

__all__ = [
    "METHODS",
    "Allocation",
    "NonFiniteTrainingError",
    "RefineData",
    "RefineSettings",
    "Refiner",
    "RoundState",
    "RoundSummary",
    "allocate_round",
    "ensemble_reward_fn",
    "lowest_margin_pairs_of",
    "margin_distance",
]

METHODS = ("none", "uniform", "west_of_n", "mars", "mars_signed", "adaboost", "ensemble")


@dataclass(frozen=True)
class RefineSettings:
    """Everything a round needs besides the model and data."""

    method: str = "mars"
    budget: int = 2000
    temperature: float = 0.1
    synthetic_set: str = "per_round"
    reset_optimizer: bool = True
    epochs_per_round: int = 1
    warmup_epochs: int = 1
    batch_size: int = 64
    chunk_steps: int = 16
    stop_tolerance: float = 0.0
    stop_distance: str = "wasserstein"
    total_budget: int = 0
    adaboost_temperature: float = 1.0
    ensemble_size: int = 5
    ensemble_temperature: float = 1.0
    histogram_bins: int = 30
    calibration_bins: int = 10
    num_bootstrap: int = 1000
    curvature: CurvatureSettings | None = None
    curvature_lowest_k: int = 128

    @property
    def num_members(self) -> int:
        """Heads in the model: an ensemble for the disagreement baseline, else one."""
        return self.ensemble_size if self.method == "ensemble" else 1


class RefineData(NamedTuple):
    """Base pairs, their synthetic pool and held-out pairs (weights of base/held-out: 1)."""

    base: PairBatch
    pool: Pool
    heldout: PairBatch


@dataclass(frozen=True)
class RoundState:
    """Everything that changes from round to round.

    Attributes:
      train: member-stacked :class:`TrainState` (leading axis ``M``).
      round_index: rounds completed.
      key: PRNG key for the next round.
      budget_spent: synthetic pairs drawn so far.
      synthetic_rows: ``[S]`` pool rows of the current synthetic training set.
      base_margins: ``[M, N]`` base margins under the current parameters.
      margin_history: mean-over-members base margins after each round (``[N]`` each).
    """

    train: TrainState
    round_index: int
    key: jax.Array
    budget_spent: int
    synthetic_rows: jax.Array
    base_margins: jax.Array
    margin_history: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class RoundSummary:
    """What one round did and how the model stands after it (JSON-ready via to_json).

    ``budget_max`` and ``budget_zero_fraction`` describe how concentrated the allocation
    was (the largest per-pair budget; the fraction of base pairs that got none).
    ``timings`` holds the seconds of each phase: score_pool (West-of-N ranks the pool by
    its current margins), allocate (weights, budgets and draws), train, score (the base
    set, reused by the next allocation), evaluate, and curvature when enabled.
    ``curvature`` is the round's curvature report (see :meth:`Refiner.curvature`).
    """

    method: str
    round: int
    synthetic_drawn: int
    budget_spent: int
    num_train_pairs: int
    train_loss: float
    margin_mean: float
    margin_std: float
    margin_abs_mean: float
    margin_negative_fraction: float
    budget_max: int
    budget_zero_fraction: float
    histogram_counts: list[int]
    histogram_edges: list[float]
    distance: float | None
    heldout: dict[str, float]
    timings: dict[str, float]
    seconds: float
    curvature: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict of Python scalars and lists."""
        return dataclasses.asdict(self)


def margin_distance(previous: np.ndarray, current: np.ndarray, *, kind: str) -> float:
    """Distance between two empirical margin distributions (``[N]`` each).

    ``kind="wasserstein"``: Wasserstein-1, the mean absolute difference of sorted values
    (equal sizes). ``kind="ks"``: the Kolmogorov-Smirnov statistic, the largest gap
    between the empirical CDFs.
    """
    a, b = np.sort(previous), np.sort(current)
    if kind == "wasserstein":
        return float(np.mean(np.abs(a - b)))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


class Allocation(NamedTuple):
    """A round's allocation.

    Attributes:
      budgets: ``[N]`` int32 synthetic pairs per base pair.
      base_weights: ``[N]`` loss weights of the base pairs (1 except for ``adaboost``).
      draws: the drawn pool rows (``S = draw_count`` slots).
    """

    budgets: jax.Array
    base_weights: jax.Array
    draws: Draws


def allocate_round(
    member_margins: jax.Array,
    offsets: jax.Array,
    key: jax.Array,
    *,
    settings: RefineSettings,
    draw_count: int,
    max_per_source: int,
    priority: jax.Array | None = None,
) -> Allocation:
    """Weights, integer budgets and pool draws of one round for ``settings.method``.

    Pure and jit-able with the keyword arguments static.

    Args:
      member_margins: ``[M, N]`` base-pair margins under each ensemble member.
      offsets: ``[N + 1]`` CSR offsets of the pool.
      key: PRNG key.
      settings: the method and its temperatures.
      draw_count: synthetic pairs to draw this round (0 for ``none`` and ``adaboost``).
      max_per_source: the largest pool of any base pair.
      priority: ``[P]`` draw order for ``west_of_n`` (the pool pairs' margins).
    """
    method = settings.method
    margins = member_margins.mean(axis=0)
    num_base = margins.shape[0]
    base_weights = jnp.ones(num_base, jnp.float32)
    if method == "adaboost":
        base_weights = adaboost_weights(margins, temperature=settings.adaboost_temperature)
    if method in ("mars", "mars_signed"):
        weights = mars_weights(
            margins, temperature=settings.temperature, signed=method == "mars_signed"
        )
    elif method == "ensemble":
        weights = ensemble_weights(member_margins, temperature=settings.ensemble_temperature)
    else:
        weights = pool_size_weights(offsets)
    budget_key, draw_key = jax.random.split(key)
    if draw_count:
        budgets = largest_remainder_budgets(weights, budget=draw_count, key=budget_key)
    else:
        budgets = jnp.zeros(num_base, jnp.int32)
    draws = draw_from_pool(
        draw_key,
        budgets,
        offsets,
        num_draws=draw_count,
        max_per_source=max_per_source,
        priority=priority,
    )
    return Allocation(budgets=budgets, base_weights=base_weights, draws=draws)


def lowest_margin_pairs_of(pairs: PairBatch, margins: np.ndarray, *, k: int) -> PairBatch:
    """The ``k`` pairs with the smallest ``|margins|`` (``[B]``), in order of ``|margin|``."""
    lowest = np.argsort(np.abs(np.asarray(margins)), kind="stable")[:k]
    return PairBatch(
        tree_take(pairs.chosen, lowest), tree_take(pairs.rejected, lowest), pairs.weight[lowest]
    )


@functools.cache
def ensemble_reward_fn(trainer: Trainer):
    """The model's reward ``reward(params, inputs) -> [B]`` over member-stacked params.

    The mean over the members (the model itself when ``M = 1``). Cached per trainer, so
    functions compiled for it are reused.
    """

    def reward(params: PyTree, inputs: PyTree) -> jax.Array:
        return trainer.member_rewards(params, inputs).mean(axis=0)

    return reward


@dataclass(frozen=True)
class Refiner:
    """Maps a :class:`RoundState` to the next for one method (see module docstring).

    With a ``placement`` (see :mod:`mars_jax.parallel`) the training batches, the scoring
    passes and the curvature estimators run sharded over its device mesh; without one,
    everything runs on the default device.
    """

    trainer: Trainer
    settings: RefineSettings
    placement: Placement | None = None

    def init(self, key: jax.Array, params: PyTree, data: RefineData) -> RoundState:
        """The state before round 1: member-stacked params, warmed up on the base pairs.

        Args:
          key: PRNG key of the run (shared by methods for paired comparisons).
          params: parameters stacked on a leading member axis ``M``.
          data: the run's data.
        """
        train = self._fresh_train_state(params)
        warm_key, key = jax.random.split(key)
        base = data.base
        if self.settings.warmup_epochs:
            num_base = base.weight.shape[0]
            pairs = self._training_set(data, base.weight, jnp.zeros(0, jnp.int32))
            train, _ = self._train(
                train,
                warm_key,
                pairs,
                self.settings.warmup_epochs,
                num_pairs=num_base,
                stage="warm-up",
            )
        margins = self._margins(train.params, base.chosen, base.rejected)
        return RoundState(
            train=train,
            round_index=0,
            key=key,
            budget_spent=0,
            synthetic_rows=jnp.zeros(0, jnp.int32),
            base_margins=margins,
        )

    def run_round(self, state: RoundState, data: RefineData) -> tuple[RoundState, RoundSummary]:
        """One round: allocate from the current margins, draw, train, evaluate."""
        settings = self.settings
        clock = _Stopwatch()
        key, alloc_key, train_key, boot_key, curvature_key = _split_round_key(state.key)

        draw_count = self._round_budget(state)
        priority = None
        if settings.method == "west_of_n" and draw_count:
            pool = data.pool
            priority = self._margins(state.train.params, pool.chosen, pool.rejected)
            priority = priority.mean(axis=0)
        priority = clock.lap("score_pool", priority)
        allocation = _jit_allocate(settings, draw_count, _max_per_source(data.pool))(
            state.base_margins, data.pool.offsets, alloc_key, priority=priority
        )
        # Budgets sum to draw_count exactly, so every draw slot is valid.
        new_rows = allocation.draws.indices
        if settings.synthetic_set == "cumulative":
            rows = jnp.concatenate([state.synthetic_rows, new_rows])
        else:
            rows = new_rows
        rows = clock.lap("allocate", rows)

        train_set = self._training_set(data, allocation.base_weights, rows)
        num_train_pairs = data.base.weight.shape[0] + rows.size
        train = state.train
        if settings.reset_optimizer:
            train = self._fresh_train_state(train.params)
        train, loss = self._train(
            train,
            train_key,
            train_set,
            settings.epochs_per_round,
            num_pairs=num_train_pairs,
            stage=f"round {state.round_index + 1}",
        )
        clock.lap("train")

        base_margins = self._margins(train.params, data.base.chosen, data.base.rejected)
        base_margins = clock.lap("score", base_margins)
        heldout = self.evaluate(train.params, data.heldout, boot_key)
        clock.lap("evaluate")

        mean_margins = np.asarray(base_margins).mean(axis=0)
        curvature = None
        if settings.curvature is not None:
            curvature = self.curvature(train.params, data, train_set, mean_margins, curvature_key)
            clock.lap("curvature")
        previous = state.margin_history[-1] if state.margin_history else None
        distance = (
            None
            if previous is None
            else margin_distance(previous, mean_margins, kind=settings.stop_distance)
        )
        new_state = RoundState(
            train=train,
            round_index=state.round_index + 1,
            key=key,
            budget_spent=state.budget_spent + draw_count,
            synthetic_rows=rows,
            base_margins=base_margins,
            margin_history=(*state.margin_history, mean_margins),
        )
        counts, edges = np.histogram(mean_margins, bins=settings.histogram_bins)
        budgets = np.asarray(allocation.budgets)
        summary = RoundSummary(
            method=settings.method,
            round=new_state.round_index,
            synthetic_drawn=draw_count,
            budget_spent=new_state.budget_spent,
            num_train_pairs=num_train_pairs,
            train_loss=loss,
            margin_mean=float(mean_margins.mean()),
            margin_std=float(mean_margins.std()),
            margin_abs_mean=float(np.abs(mean_margins).mean()),
            margin_negative_fraction=float((mean_margins < 0).mean()),
            budget_max=int(budgets.max(initial=0)),
            budget_zero_fraction=float((budgets == 0).mean()) if draw_count else 1.0,
            histogram_counts=counts.tolist(),
            histogram_edges=edges.tolist(),
            distance=distance,
            heldout=heldout,
            timings=clock.laps,
            seconds=clock.total(),
            curvature=curvature,
        )
        return new_state, summary

    def stop_reason(self, state: RoundState) -> str | None:
        """Why the loop should stop after this state, or None to go on."""
        settings = self.settings
        if settings.total_budget and state.budget_spent >= settings.total_budget:
            return f"total synthetic budget {settings.total_budget} spent"
        history = state.margin_history
        if settings.stop_tolerance and len(history) >= 2:
            distance = margin_distance(history[-2], history[-1], kind=settings.stop_distance)
            if distance < settings.stop_tolerance:
                return (
                    f"margin distribution stable ({settings.stop_distance} distance "
                    f"{distance:.4g} < {settings.stop_tolerance:g})"
                )
        return None

    def evaluate(self, params: PyTree, pairs: PairBatch, key: jax.Array) -> dict[str, float]:
        """Held-out metrics of the member-averaged reward, with a bootstrap accuracy CI."""
        num_bins = self.settings.calibration_bins
        placement = self.placement
        if placement is None:
            metrics, margins = _jit_heldout_metrics(self.trainer, num_bins)(
                params, pairs.chosen, pairs.rejected
            )
        else:
            num_pairs = pairs.weight.shape[0]
            rewards = _jit_mean_rewards(self.trainer)(
                placement.put_params(params), *placement.put_rows((pairs.chosen, pairs.rejected))
            )
            rewards = [placement.unpad(r, num_pairs) for r in rewards]
            metrics, margins = _jit_reward_metrics(num_bins)(*rewards)
        result = {name: float(value) for name, value in metrics.items()}
        if self.settings.num_bootstrap:
            interval = self._accuracy_interval(key, margins)
            result["accuracy_lower"] = float(interval.lower)
            result["accuracy_upper"] = float(interval.upper)
        return result

    def curvature(
        self,
        params: PyTree,
        data: RefineData,
        train_set: PairBatch,
        margins: np.ndarray,
        key: jax.Array,
    ) -> dict[str, Any]:
        """Curvature report of the (member-averaged) model's loss on three subsets.

        ``base``: the base pairs; ``lowest_margin``: the ``curvature_lowest_k`` base pairs
        with the smallest ``|margins|`` (``[N]``); ``train``: the round's training set
        with its loss weights.
        """
        base = data.base
        lowest = np.argsort(np.abs(margins), kind="stable")[: self.settings.curvature_lowest_k]
        subsets = {
            "base": base,
            "lowest_margin": PairBatch(
                tree_take(base.chosen, lowest),
                tree_take(base.rejected, lowest),
                base.weight[lowest],
            ),
            "train": train_set,
        }
        placement = self.placement
        return curvature_report(
            ensemble_reward_fn(self.trainer),
            params,
            subsets,
            key,
            settings=self.settings.curvature,
            loss=self.trainer.loss,
            place_params=None if placement is None else placement.put_params,
            place_pairs=None if placement is None else placement.put_pairs,
            constrain=None if placement is None else placement.constrain_params,
        )

    def _margins(self, params: PyTree, chosen: PyTree, rejected: PyTree) -> jax.Array:
        """Margins ``[M, B]`` of every member; sharded by rows over the placement's mesh."""
        placement = self.placement
        if placement is None:
            return self._member_margins(params, chosen, rejected)
        num_pairs = jax.tree.leaves(chosen)[0].shape[0]
        margins = self._member_margins(
            placement.put_params(params), *placement.put_rows((chosen, rejected))
        )
        return placement.unpad(margins, num_pairs, axis=1)

    def _round_budget(self, state: RoundState) -> int:
        settings = self.settings
        if settings.method in ("none", "adaboost"):
            return 0
        if settings.total_budget:
            return max(0, min(settings.budget, settings.total_budget - state.budget_spent))
        return settings.budget

    def _training_set(
        self, data: RefineData, base_weights: jax.Array, rows: jax.Array
    ) -> PairBatch:
        """Base pairs (with their loss weights) and the drawn pool rows, as one batch.

        Padded with zero-weight rows to a power of two, so the compiled training chunk
        sees few distinct shapes however the synthetic set grows.
        """
        pool = data.pool
        num_pairs = data.base.weight.shape[0] + rows.size
        padding = _bucket(num_pairs) - num_pairs
        pool_rows = jnp.pad(rows, (0, padding))
        weights = jnp.concatenate(
            [base_weights, jnp.ones(rows.size, jnp.float32), jnp.zeros(padding, jnp.float32)]
        )
        synthetic = PairBatch(
            chosen=tree_take(pool.chosen, pool_rows),
            rejected=tree_take(pool.rejected, pool_rows),
            weight=weights[data.base.weight.shape[0] :],
        )
        return tree_concat([data.base._replace(weight=weights[: base_weights.shape[0]]), synthetic])

    def _fresh_train_state(self, params: PyTree) -> TrainState:
        return jax.vmap(self.trainer.init_state)(params)

    def _train(
        self,
        train: TrainState,
        key: jax.Array,
        pairs: PairBatch,
        epochs: int,
        num_pairs: int,
        *,
        stage: str,
    ) -> tuple[TrainState, float]:
        """``epochs`` shuffled passes over the first ``num_pairs`` rows of ``pairs``.

        Returns the state and the mean training loss.

        Raises:
          NonFiniteTrainingError: a loss or gradient norm was NaN or infinite (checked on
            the host once, after the last chunk; ``stage`` names the round in the message).
        """
        settings = self.settings
        num_members = int(train.step.shape[0])
        chunk = settings.chunk_steps
        steps_per_epoch = math.ceil(num_pairs / settings.batch_size)
        num_chunks = math.ceil(steps_per_epoch / chunk)
        train = train.replace(
            step=jnp.zeros_like(train.step),
            num_steps=jnp.full_like(train.num_steps, steps_per_epoch * epochs),
        )
        placement = self.placement
        if placement is not None:
            train = placement.put_params(train)
            pairs = placement.put_replicated(pairs)
        loss_sum = jnp.zeros(())
        finite = jnp.asarray(True)
        chunk_stats = []
        for epoch_key in jax.random.split(key, epochs):
            rows, mask = _epoch_rows(
                epoch_key, num_pairs, num_members, settings.batch_size, num_chunks * chunk
            )
            for index in range(num_chunks):
                steps = slice(index * chunk, (index + 1) * chunk)
                active = np.arange(chunk) < (steps_per_epoch - index * chunk)
                step_rows, step_mask = rows[steps], mask[steps]
                if placement is not None:
                    step_rows, step_mask, active = _place_steps(
                        placement, step_rows, step_mask, active
                    )
                train, stats = self._train_chunk(train, pairs, step_rows, step_mask, active)
                loss_sum = loss_sum + jnp.sum(stats.loss)
                finite = finite & _all_finite(stats)
                chunk_stats.append(stats)
        if not bool(finite):
            raise _non_finite_error(
                settings.method,
                stage,
                chunk_stats,
                chunk=chunk,
                chunks_per_epoch=num_chunks,
                steps_per_epoch=steps_per_epoch,
                total=steps_per_epoch * epochs,
            )
        return train, float(loss_sum) / max(steps_per_epoch * epochs * num_members, 1)

    @property
    def _train_chunk(self):
        return _jit_train_chunk(self.trainer)

    @property
    def _member_margins(self):
        return _jit_member_margins(self.trainer)

    @property
    def _accuracy_interval(self):
        return _jit_accuracy_interval(self.settings.num_bootstrap)


# Compiled functions are shared by every Refiner of the same trainer (e.g. the methods
# of one run), so each shape compiles once per run rather than once per method.


class NonFiniteTrainingError(MarsError):
    """Training produced a NaN or infinite loss or gradient norm; the state is discarded."""


@jax.jit
def _all_finite(stats: StepStats) -> jax.Array:
    return jnp.isfinite(stats.loss).all() & jnp.isfinite(stats.grad_norm).all()


def _non_finite_error(
    method: str,
    stage: str,
    chunk_stats: list[StepStats],
    *,
    chunk: int,
    chunks_per_epoch: int,
    steps_per_epoch: int,
    total: int,
) -> NonFiniteTrainingError:
    """The error naming the first step whose loss or gradient norm is not finite.

    ``chunk_stats`` holds each chunk's ``[C, M]`` statistics in order, ``chunks_per_epoch``
    chunks per epoch (the last one padded with steps whose statistics are 0); ``total`` is
    the number of real steps of the stage.
    """
    for chunk_index, stats in enumerate(chunk_stats):
        epoch, index = divmod(chunk_index, chunks_per_epoch)
        losses, norms = np.asarray(stats.loss), np.asarray(stats.grad_norm)
        for row in range(losses.shape[0]):
            for name, values in (("loss", losses[row]), ("gradient norm", norms[row])):
                bad = ~np.isfinite(values)
                if bad.any():
                    step = epoch * steps_per_epoch + index * chunk + row + 1
                    member = f", ensemble member {int(np.argmax(bad))}" if values.size > 1 else ""
                    return NonFiniteTrainingError(
                        f"method {method!r}, {stage}, step {step} of {total}{member}: "
                        f"training {name} is {values[bad][0]}; stopped before saving this state"
                    )
    return NonFiniteTrainingError(f"method {method!r}, {stage}: non-finite training statistics")


@functools.cache
def _jit_train_chunk(trainer: Trainer):
    return jax.jit(trainer.train_chunk, donate_argnums=0)


@jax.jit
def _split_round_key(key: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jax.random.split(key, 5))


@functools.cache
def _jit_allocate(settings: RefineSettings, draw_count: int, max_per_source: int):
    return jax.jit(
        functools.partial(
            allocate_round,
            settings=settings,
            draw_count=draw_count,
            max_per_source=max_per_source,
        )
    )


def _max_per_source(pool: Pool) -> int:
    return int(np.max(np.diff(np.asarray(pool.offsets)), initial=1))


@functools.cache
def _jit_member_margins(trainer: Trainer):
    def margins(params: PyTree, chosen: PyTree, rejected: PyTree) -> jax.Array:
        return trainer.member_rewards(params, chosen) - trainer.member_rewards(params, rejected)

    return jax.jit(margins)


def _mean_rewards(trainer: Trainer, params: PyTree, chosen: PyTree, rejected: PyTree):
    """Member-averaged rewards ``([B], [B])`` of the chosen and rejected responses."""
    return (
        trainer.member_rewards(params, chosen).mean(axis=0),
        trainer.member_rewards(params, rejected).mean(axis=0),
    )


def _reward_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array, num_bins: int):
    margins = chosen_rewards - rejected_rewards
    metrics = evaluate_margins(
        margins, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, num_bins=num_bins
    )
    return metrics, margins


@functools.cache
def _jit_heldout_metrics(trainer: Trainer, num_bins: int):
    def heldout(params: PyTree, chosen: PyTree, rejected: PyTree):
        return _reward_metrics(*_mean_rewards(trainer, params, chosen, rejected), num_bins)

    return jax.jit(heldout)


@functools.cache
def _jit_mean_rewards(trainer: Trainer):
    return jax.jit(functools.partial(_mean_rewards, trainer))


@functools.cache
def _jit_reward_metrics(num_bins: int):
    return jax.jit(functools.partial(_reward_metrics, num_bins=num_bins))


def _place_steps(
    placement: Placement, rows: np.ndarray, mask: np.ndarray, active: np.ndarray
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A chunk's rows and mask ``[C, M, b]`` padded on ``b`` with masked slots, sharded on b.

    Padding slots point at row 0 with mask 0, so they carry zero loss weight.
    """
    multiple = placement.batch_multiple
    sharding = placement.rows_sharding(3, axis=2)
    return (
        placement.put(pad_rows(rows, multiple, axis=2), sharding),
        placement.put(pad_rows(mask, multiple, axis=2), sharding),
        placement.put(active, placement.replicated),
    )


@functools.cache
def _jit_accuracy_interval(num_resamples: int):
    def interval(key: jax.Array, margins: jax.Array):
        return bootstrap_ci(key, margins, _accuracy, num_resamples=num_resamples)

    return jax.jit(interval)


def _accuracy(margins: jax.Array) -> jax.Array:
    return jnp.mean(margins > 0)


class _Stopwatch:
    """Wall-clock laps of a round's phases, waiting for JAX's asynchronous results."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str, result: Any = None) -> Any:
        """Record the time since the previous lap under ``name``; returns ``result`` ready."""
        result = jax.block_until_ready(result)
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now
        return result

    def total(self) -> float:
        return time.perf_counter() - self.start


def _epoch_rows(
    key: jax.Array, num_pairs: int, num_members: int, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """A shuffled pass per member: rows and masks ``[num_steps, M, b]`` (padding masked)."""
    padded = num_steps * batch_size
    keys = jax.random.split(key, num_members)
    perms = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, num_pairs))(keys))
    rows = np.zeros((num_members, padded), np.int32)
    rows[:, :num_pairs] = perms
    mask = np.zeros((num_members, padded), np.float32)
    mask[:, :num_pairs] = 1.0
    to_steps = lambda x: x.reshape(num_members, num_steps, batch_size).transpose(1, 0, 2)  # noqa: E731
    return to_steps(rows), to_steps(mask)


def _bucket(size: int) -> int:
    """The next power of two at or above ``size`` (at least 64)."""
    return max(64, 1 << max(size - 1, 0).bit_length())
