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
    adaboost_weights,
    draw_from_pool,
    ensemble_weights,
    largest_remainder_budgets,
    mars_weights,
    pool_size_weights,
)
from mars_jax.metrics import bootstrap_ci, evaluate_margins
from mars_jax.train import Trainer, TrainState
from mars_jax.types import PairBatch, Pool, PyTree, tree_concat, tree_take

__all__ = [
    "METHODS",
    "RefineData",
    "RefineSettings",
    "Refiner",
    "RoundState",
    "RoundSummary",
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
    synthetic_rows: np.ndarray
    base_margins: np.ndarray
    margin_history: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class RoundSummary:
    """What one round did and how the model stands after it (JSON-ready via to_json).

    ``budget_max`` and ``budget_zero_fraction`` describe how concentrated the allocation
    was (the largest per-pair budget; the fraction of base pairs that got none).
    ``timings`` holds the seconds of each phase: allocate (including any scoring of the
    pool), draw, train, score (the base set, reused by the next allocation), evaluate.
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


@dataclass(frozen=True)
class Refiner:
    """Maps a :class:`RoundState` to the next for one method (see module docstring)."""

    trainer: Trainer
    settings: RefineSettings

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
            train, _ = self._train(train, warm_key, base, self.settings.warmup_epochs)
        margins = self._member_margins(train.params, base.chosen, base.rejected)
        return RoundState(
            train=train,
            round_index=0,
            key=key,
            budget_spent=0,
            synthetic_rows=np.zeros(0, np.int32),
            base_margins=np.asarray(margins),
        )

    def run_round(self, state: RoundState, data: RefineData) -> tuple[RoundState, RoundSummary]:
        """One round: allocate from the current margins, draw, train, evaluate."""
        settings = self.settings
        clock = _Stopwatch()
        key, alloc_key, draw_key, train_key, boot_key = jax.random.split(state.key, 5)

        draw_count = self._round_budget(state)
        budgets, base_weights, priority = self._allocate(state, data, alloc_key, draw_count)
        budgets = clock.lap("allocate", budgets)
        new_rows = np.zeros(0, np.int32)
        if draw_count:
            draws = self._draw(
                draw_key, budgets, data.pool.source, data.pool.offsets, draw_count, priority
            )
            new_rows = np.asarray(draws.indices)[np.asarray(draws.valid)]
        if settings.synthetic_set == "cumulative":
            rows = np.concatenate([state.synthetic_rows, new_rows])
        else:
            rows = new_rows
        clock.lap("draw")

        train_set = self._training_set(data, base_weights, rows)
        train = state.train
        if settings.reset_optimizer:
            train = self._fresh_train_state(train.params)
        train, loss = self._train(train, train_key, train_set, settings.epochs_per_round)
        clock.lap("train")

        base_margins = np.asarray(
            self._member_margins(train.params, data.base.chosen, data.base.rejected)
        )
        clock.lap("score")
        heldout = self.evaluate(train.params, data.heldout, boot_key)
        clock.lap("evaluate")

        mean_margins = base_margins.mean(axis=0)
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
            budget_spent=state.budget_spent + int(new_rows.size),
            synthetic_rows=rows.astype(np.int32),
            base_margins=base_margins,
            margin_history=(*state.margin_history, mean_margins),
        )
        counts, edges = np.histogram(mean_margins, bins=settings.histogram_bins)
        budgets = np.asarray(budgets)
        summary = RoundSummary(
            method=settings.method,
            round=new_state.round_index,
            synthetic_drawn=int(new_rows.size),
            budget_spent=new_state.budget_spent,
            num_train_pairs=int(train_set.weight.shape[0]),
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
        metrics, margins = _jit_heldout_metrics(self.trainer, self.settings.calibration_bins)(
            params, pairs.chosen, pairs.rejected
        )
        result = {name: float(value) for name, value in metrics.items()}
        if self.settings.num_bootstrap:
            interval = self._accuracy_interval(key, margins)
            result["accuracy_lower"] = float(interval.lower)
            result["accuracy_upper"] = float(interval.upper)
        return result

    def _round_budget(self, state: RoundState) -> int:
        settings = self.settings
        if settings.method in ("none", "adaboost"):
            return 0
        if settings.total_budget:
            return max(0, min(settings.budget, settings.total_budget - state.budget_spent))
        return settings.budget

    def _allocate(
        self, state: RoundState, data: RefineData, key: jax.Array, draw_count: int
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Per-source budgets ``[N]``, base-pair loss weights ``[N]`` and a draw order."""
        settings = self.settings
        member_margins = jnp.asarray(state.base_margins)
        margins = member_margins.mean(axis=0)
        num_base = margins.shape[0]
        base_weights = jnp.ones(num_base, jnp.float32)
        priority = None
        method = settings.method
        if method == "adaboost":
            base_weights = adaboost_weights(margins, temperature=settings.adaboost_temperature)
        if draw_count == 0:
            return jnp.zeros(num_base, jnp.int32), base_weights, priority
        if method in ("mars", "mars_signed"):
            weights = mars_weights(
                margins, temperature=settings.temperature, signed=method == "mars_signed"
            )
        elif method == "ensemble":
            weights = ensemble_weights(member_margins, temperature=settings.ensemble_temperature)
        else:
            weights = pool_size_weights(data.pool.offsets)
        if method == "west_of_n":
            pool = data.pool
            priority = self._member_margins(state.train.params, pool.chosen, pool.rejected)
            priority = priority.mean(axis=0)
        budgets = self._budgets(weights, draw_count, key)
        return budgets, base_weights, priority

    def _training_set(
        self, data: RefineData, base_weights: jax.Array, rows: np.ndarray
    ) -> PairBatch:
        base = data.base._replace(weight=base_weights)
        if rows.size == 0:
            return base
        rows = jnp.asarray(rows)
        synthetic = PairBatch(
            chosen=tree_take(data.pool.chosen, rows),
            rejected=tree_take(data.pool.rejected, rows),
            weight=jnp.ones(rows.shape[0], jnp.float32),
        )
        return tree_concat([base, synthetic])

    def _fresh_train_state(self, params: PyTree) -> TrainState:
        return jax.vmap(self.trainer.init_state)(params)

    def _train(
        self, train: TrainState, key: jax.Array, pairs: PairBatch, epochs: int
    ) -> tuple[TrainState, float]:
        """``epochs`` shuffled passes over ``pairs``; returns the state and the mean loss."""
        settings = self.settings
        num_pairs = int(pairs.weight.shape[0])
        num_members = int(train.step.shape[0])
        steps_per_epoch = math.ceil(num_pairs / settings.batch_size)
        train = train.replace(
            step=jnp.zeros_like(train.step),
            num_steps=jnp.full_like(train.num_steps, steps_per_epoch * epochs),
        )
        loss_sum, loss_count = jnp.zeros(()), 0
        for epoch_key in jax.random.split(key, epochs):
            rows, mask = _epoch_rows(epoch_key, num_pairs, num_members, settings.batch_size)
            chunk = settings.chunk_steps
            num_chunks = math.ceil(steps_per_epoch / chunk)
            for index in range(num_chunks):
                chunk_rows = _pad_steps(rows[index * chunk : (index + 1) * chunk], chunk)
                chunk_mask = _pad_steps(mask[index * chunk : (index + 1) * chunk], chunk)
                active = np.arange(chunk) < (steps_per_epoch - index * chunk)
                batches = PairBatch(
                    chosen=tree_take(pairs.chosen, chunk_rows),
                    rejected=tree_take(pairs.rejected, chunk_rows),
                    weight=pairs.weight[chunk_rows] * chunk_mask,
                )
                train, losses = self._train_chunk(train, batches, jnp.asarray(active))
                loss_sum = loss_sum + jnp.sum(losses)
                loss_count += int(active.sum()) * num_members
        return train, float(loss_sum) / max(loss_count, 1)

    @property
    def _train_chunk(self):
        return _jit_train_chunk(self.trainer)

    @property
    def _member_margins(self):
        return _jit_member_margins(self.trainer)

    @property
    def _accuracy_interval(self):
        return _jit_accuracy_interval(self.settings.num_bootstrap)

    _budgets = staticmethod(
        jax.jit(
            lambda weights, budget, key: largest_remainder_budgets(weights, budget=budget, key=key)
        )
    )
    _draw = staticmethod(
        jax.jit(
            lambda key, budgets, source, offsets, num_draws, priority: draw_from_pool(
                key, budgets, source, offsets, num_draws=num_draws, priority=priority
            ),
            static_argnums=4,
        )
    )


# Compiled functions are shared by every Refiner of the same trainer (e.g. the methods
# of one run), so each shape compiles once per run rather than once per method.


@functools.cache
def _jit_train_chunk(trainer: Trainer):
    return jax.jit(trainer.train_chunk, donate_argnums=0)


@functools.cache
def _jit_member_margins(trainer: Trainer):
    def margins(params: PyTree, chosen: PyTree, rejected: PyTree) -> jax.Array:
        return trainer.member_rewards(params, chosen) - trainer.member_rewards(params, rejected)

    return jax.jit(margins)


@functools.cache
def _jit_heldout_metrics(trainer: Trainer, num_bins: int):
    def heldout(params: PyTree, chosen: PyTree, rejected: PyTree):
        chosen_rewards = trainer.member_rewards(params, chosen).mean(axis=0)
        rejected_rewards = trainer.member_rewards(params, rejected).mean(axis=0)
        margins = chosen_rewards - rejected_rewards
        metrics = evaluate_margins(
            margins,
            chosen_rewards=chosen_rewards,
            rejected_rewards=rejected_rewards,
            num_bins=num_bins,
        )
        return metrics, margins

    return jax.jit(heldout)


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
    key: jax.Array, num_pairs: int, num_members: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """A shuffled pass per member: row indices and masks ``[S, M, b]`` (padding masked)."""
    steps = math.ceil(num_pairs / batch_size)
    padded = steps * batch_size
    keys = jax.random.split(key, num_members)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_pairs))(keys)
    perms = jnp.pad(perms, ((0, 0), (0, padded - num_pairs)))
    mask = jnp.broadcast_to(jnp.arange(padded) < num_pairs, perms.shape).astype(jnp.float32)
    to_steps = lambda x: x.reshape(num_members, steps, batch_size).transpose(1, 0, 2)  # noqa: E731
    return to_steps(perms), to_steps(mask)


def _pad_steps(x: jax.Array, steps: int) -> jax.Array:
    """Pad the leading (step) axis of ``x`` with zeros up to ``steps``."""
    return jnp.pad(x, ((0, steps - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))
