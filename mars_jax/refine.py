"""The MARS round: score -> allocate -> draw -> train -> evaluate, on immutable states.

A :class:`Refiner` holds what does not change during a run (the method, the trainer, the
settings and its compiled allocation) and maps a :class:`RoundState` to the next one with
:meth:`Refiner.run_round`; margins come from the trainer, budgets and draws from the
:func:`mars_jax.allocation.allocate` kernel, training from :meth:`Trainer.fit
<mars_jax.train.Trainer.fit>`. The outer loop is the caller's short Python ``for``::

    state = refiner.init(key, params, data)
    for _ in range(refiner.settings.rounds):
        state, summary = refiner.run_round(state, data)
        if refiner.stop_reason(state):
            break

Choices from method.md section 3: absolute or signed margin (methods ``mars`` /
``mars_signed``), a per-round or cumulative synthetic set, optimizer reset per round and the
stop rule (distance between successive base-margin distributions, or total budget) are in
:class:`RefineSettings`; the warm-up on the base pairs before the first allocation is in
:class:`~mars_jax.train.FitSettings`.

Base margins scored after a round's training are kept in the state and reused as the
next round's allocation signal, so each round scores the base set once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.allocation import (
    METHODS,
    TEMPERATURE_MODES,
    Allocation,
    allocate,
    allocation_diagnostics,
    curriculum_temperature,
    margin_statistics,
)
from mars_jax.curvature.report import CurvatureReporter
from mars_jax.evaluation import Evaluator
from mars_jax.parallel import Placement
from mars_jax.settings import setting
from mars_jax.train import FitSettings, Trainer, TrainState
from mars_jax.types import PairBatch, Pool, PyTree, ResponsePairs, tree_concat, tree_take

__all__ = [
    "METHODS",
    "RefineData",
    "RefineSettings",
    "Refiner",
    "RoundState",
    "RoundSummary",
    "lowest_margin_pairs_of",
    "margin_distance",
]


@dataclass(frozen=True)
class RefineSettings:
    """The refinement loop: rounds, the synthetic budget, the temperatures, the stop rules."""

    rounds: int = setting(5, "refinement rounds", min=1)
    budget: int = setting(2000, "synthetic pairs drawn per round (B)", min=0)
    temperature: float = setting(0.1, "tau of MARS weights softmax(-tau*|margin|)", min_exclusive=0)
    temperature_mode: str = setting(
        "target_ess",
        "how MARS's tau is set each round: 'fixed' (the paper), 'normalized' (tau applied to "
        "|m| / std(|m|): free of the margin scale) or 'target_ess' (solved so the weights' "
        "effective sample size is refine.target_ess * N)",
        choices=TEMPERATURE_MODES,
    )
    target_ess: float = setting(
        0.5, "effective sample size / N that temperature_mode 'target_ess' aims at", min=0.01, max=1
    )
    final_temperature: float = setting(
        0.0,
        "curriculum: tau moves geometrically from refine.temperature in round 1 to this in the "
        "last round (0: a constant tau)",
        min=0,
    )
    synthetic_set: str = setting(
        "per_round",
        "train on this round's synthetic pairs only, or on all drawn so far",
        choices=("per_round", "cumulative"),
    )
    reset_optimizer: bool = setting(True, "fresh optimizer state at the start of each round")
    stop_tolerance: float = setting(
        0.0,
        "stop when the distance between successive rounds' base-margin distributions "
        "falls below it (0 disables)",
        min=0,
    )
    stop_distance: str = setting(
        "wasserstein", "distance used by stop_tolerance", choices=("wasserstein", "ks")
    )
    total_budget: int = setting(
        0, "stop once this many synthetic pairs are spent (0: no limit)", min=0
    )
    adaboost_temperature: float = setting(
        1.0, "temperature of the AdaBoost-style weights", min_exclusive=0
    )
    ensemble_size: int = setting(5, "heads in the ensemble-disagreement baseline", min=2)
    ensemble_temperature: float = setting(
        1.0, "temperature of the ensemble-disagreement weights", min_exclusive=0
    )

    def temperature_of(self, method: str, round_index: int = 0) -> float:
        """The temperature ``method``'s weights use in round ``round_index`` (0-based; 1.0
        where it uses none)."""
        if method in ("mars", "mars_signed"):
            if self.final_temperature:
                return float(
                    curriculum_temperature(
                        round_index,
                        self.rounds,
                        start=self.temperature,
                        end=self.final_temperature,
                    )
                )
            return self.temperature
        if method == "ensemble":
            return self.ensemble_temperature
        if method == "adaboost":
            return self.adaboost_temperature
        return 1.0

    def num_members(self, method: str) -> int:
        """Heads in ``method``'s model: an ensemble for the disagreement baseline, else one."""
        return self.ensemble_size if method == "ensemble" else 1


class RefineData(NamedTuple):
    """Base pairs, their synthetic pool and held-out pairs (weights of base/held-out: 1).

    ``base_responses``, for ranked data (prompts with ``K > 2`` responses), gives the base
    pairs again as rows of their distinct responses: scoring them then costs ``K`` reward
    evaluations per prompt instead of ``K (K - 1)``. ``validation`` pairs (prompts apart from
    the base and held-out pairs) choose each training stage's best epoch (see
    :meth:`Trainer.fit <mars_jax.train.Trainer.fit>`).
    """

    base: PairBatch
    pool: Pool
    heldout: PairBatch
    base_responses: ResponsePairs | None = None
    validation: PairBatch | None = None


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
    was (the largest per-pair budget; the fraction of base pairs that got none);
    ``allocation`` holds :func:`~mars_jax.allocation.allocation_diagnostics` against the
    stratified uniform budgets of the round (``total_variation`` 0: the method allocated
    exactly as uniform did) and the ``temperature`` used; ``margin_statistics`` the base
    margins' :func:`~mars_jax.allocation.margin_statistics` (the scale ``tau`` acts on).
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
    margin_statistics: dict[str, float]
    budget_max: int
    budget_zero_fraction: float
    allocation: dict[str, float]
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


def lowest_margin_pairs_of(pairs: PairBatch, margins: np.ndarray, *, k: int) -> PairBatch:
    """The ``k`` pairs with the smallest ``|margins|`` (``[B]``), in order of ``|margin|``."""
    lowest = np.argsort(np.abs(np.asarray(margins)), kind="stable")[:k]
    return PairBatch(
        tree_take(pairs.chosen, lowest), tree_take(pairs.rejected, lowest), pairs.weight[lowest]
    )


@dataclass(frozen=True)
class Refiner:
    """Maps a :class:`RoundState` to the next for one method (see module docstring).

    With a ``placement`` (see :mod:`mars_jax.parallel`) the training batches, the scoring
    passes and the curvature estimators run sharded over its device mesh; without one,
    everything runs on the default device. The trainer, the evaluator and the curvature
    reporter may be shared by the refiners of one run (the methods), so that each shape
    compiles once per run.

    Attributes:
      method: one of :data:`METHODS`.
      trainer: the model's trainer.
      settings: the loop's settings.
      fit: batch size and epochs.
      evaluator: held-out metrics (its trainer must be ``trainer``).
      curvature: per-round curvature reports (None: none).
      curvature_lowest_k: size of the lowest-|margin| subset of the curvature reports.
      placement: the device mesh's shardings (None: the default device).
    """

    method: str
    trainer: Trainer
    settings: RefineSettings = RefineSettings()
    fit: FitSettings = FitSettings()
    evaluator: Evaluator | None = None
    curvature: CurvatureReporter | None = None
    curvature_lowest_k: int = 128
    placement: Placement | None = None
    _compiled: dict[str, Callable] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.evaluator is None:
            object.__setattr__(self, "evaluator", Evaluator(self.trainer))

    @property
    def num_members(self) -> int:
        """Heads in the model: an ensemble for the disagreement baseline, else one."""
        return self.settings.num_members(self.method)

    def init(self, key: jax.Array, params: PyTree, data: RefineData) -> RoundState:
        """The state before round 1: member-stacked params, warmed up on the base pairs.

        Args:
          key: PRNG key of the run (shared by methods for paired comparisons).
          params: parameters stacked on a leading member axis ``M``.
          data: the run's data.
        """
        train = self.trainer.init_members(params)
        warm_key, key = jax.random.split(key)
        base = data.base
        if self.fit.warmup_epochs:
            pairs = self._training_set(data, base.weight, jnp.zeros(0, jnp.int32))
            train, _ = self._train(
                train,
                warm_key,
                pairs,
                self.fit.warmup_epochs,
                base.weight.shape[0],
                "warm-up",
                data.validation,
            )
        return RoundState(
            train=train,
            round_index=0,
            key=key,
            budget_spent=0,
            synthetic_rows=jnp.zeros(0, jnp.int32),
            base_margins=self._base_margins(train.params, data),
        )

    def run_round(self, state: RoundState, data: RefineData) -> tuple[RoundState, RoundSummary]:
        """One round: allocate from the current margins, draw, train, evaluate."""
        settings = self.settings
        clock = _Stopwatch()
        key, alloc_key, train_key, boot_key, curvature_key = self._jit(
            "split", lambda: jax.jit(lambda k: tuple(jax.random.split(k, 5)))
        )(state.key)

        num_draws = self._round_budget(state)
        priority = None
        if self.method == "west_of_n" and num_draws:
            pool = data.pool
            priority = self._margins(state.train.params, pool.chosen, pool.rejected).mean(axis=0)
        priority = clock.lap("score_pool", priority)
        allocation = self._allocate(
            state.base_margins, data.pool, alloc_key, num_draws, priority, state.round_index
        )
        # Budgets sum to num_draws exactly, so every draw slot is valid.
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
            train = self.trainer.init_members(train.params)
        train, loss = self._train(
            train,
            train_key,
            train_set,
            self.fit.epochs_per_round,
            num_train_pairs,
            f"round {state.round_index + 1}",
            data.validation,
        )
        clock.lap("train")

        base_margins = self._base_margins(train.params, data)
        base_margins = clock.lap("score", base_margins)
        heldout = self.evaluator(train.params, data.heldout, boot_key)
        clock.lap("evaluate")

        mean_margins = np.asarray(base_margins).mean(axis=0)
        curvature = None
        if self.curvature is not None:
            curvature = self.curvature_report(
                train.params, data, train_set, mean_margins, curvature_key
            ).to_json()
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
            budget_spent=state.budget_spent + num_draws,
            synthetic_rows=rows,
            base_margins=base_margins,
            margin_history=(*state.margin_history, mean_margins),
        )
        counts, edges = np.histogram(mean_margins, bins=self.evaluator.settings.histogram_bins)
        budgets = np.asarray(allocation.budgets)
        diagnostics = self._jit("diagnostics", lambda: jax.jit(allocation_diagnostics))(
            allocation.budgets, allocation.reference_budgets
        )
        statistics = self._jit("margin_statistics", lambda: jax.jit(margin_statistics))(
            mean_margins
        )
        summary = RoundSummary(
            method=self.method,
            round=new_state.round_index,
            synthetic_drawn=num_draws,
            budget_spent=new_state.budget_spent,
            num_train_pairs=num_train_pairs,
            train_loss=loss,
            margin_mean=float(mean_margins.mean()),
            margin_std=float(mean_margins.std()),
            margin_abs_mean=float(np.abs(mean_margins).mean()),
            margin_negative_fraction=float((mean_margins < 0).mean()),
            margin_statistics=_floats(statistics._asdict()),
            budget_max=int(budgets.max(initial=0)),
            budget_zero_fraction=float((budgets == 0).mean()) if num_draws else 1.0,
            allocation=_floats({**diagnostics._asdict(), "temperature": allocation.temperature}),
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

    def curvature_report(
        self,
        params: PyTree,
        data: RefineData,
        train_set: PairBatch,
        margins: np.ndarray,
        key: jax.Array,
    ):
        """Curvature report of the (member-averaged) model's loss on three subsets.

        ``base``: the base pairs; ``lowest_margin``: the ``curvature_lowest_k`` base pairs
        with the smallest ``|margins|`` (``[N]``); ``train``: the round's training set
        with its loss weights.
        """
        subsets = {
            "base": data.base,
            "lowest_margin": lowest_margin_pairs_of(data.base, margins, k=self.curvature_lowest_k),
            "train": train_set,
        }
        return self.curvature(params, subsets, key)

    def _margins(self, params: PyTree, chosen: PyTree, rejected: PyTree) -> jax.Array:
        """Margins ``[M, B]`` of every member; sharded by rows over the placement's mesh."""
        placement = self.placement
        if placement is None:
            return self.trainer.member_margins(params, chosen, rejected)
        num_pairs = jax.tree.leaves(chosen)[0].shape[0]
        margins = self.trainer.member_margins(
            placement.put_params(params), *placement.put_rows((chosen, rejected))
        )
        return placement.unpad(margins, num_pairs, axis=1)

    def _base_margins(self, params: PyTree, data: RefineData) -> jax.Array:
        """Margins ``[M, N]`` of the base pairs; through their distinct responses when the data
        has them (on the default device)."""
        if data.base_responses is not None and self.placement is None:
            return self.trainer.member_response_margins(params, data.base_responses)
        return self._margins(params, data.base.chosen, data.base.rejected)

    def _allocate(
        self,
        member_margins: jax.Array,
        pool: Pool,
        key: jax.Array,
        num_draws: int,
        priority: jax.Array | None,
        round_index: int,
    ) -> Allocation:
        """:func:`mars_jax.allocation.allocate`, compiled per static argument values."""
        static = ("method", "num_draws", "max_per_source", "temperature")
        static += ("temperature_mode", "ess_fraction")
        allocate_jit = self._jit("allocate", lambda: jax.jit(allocate, static_argnames=static))
        settings = self.settings
        mode = settings.temperature_mode if self.method in ("mars", "mars_signed") else "fixed"
        return allocate_jit(
            member_margins,
            pool.offsets,
            key,
            method=self.method,
            num_draws=num_draws,
            max_per_source=_max_per_source(pool),
            temperature=settings.temperature_of(self.method, round_index),
            temperature_mode=mode,
            ess_fraction=settings.target_ess if mode == "target_ess" else None,
            priority=priority,
        )

    def _round_budget(self, state: RoundState) -> int:
        settings = self.settings
        if self.method in ("none", "adaboost"):
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

    def _train(
        self,
        train: TrainState,
        key: jax.Array,
        pairs: PairBatch,
        epochs: int,
        num_pairs: int,
        stage: str,
        validation: PairBatch | None = None,
    ) -> tuple[TrainState, float]:
        return self.trainer.fit(
            train,
            key,
            pairs,
            epochs=epochs,
            batch_size=self.fit.batch_size,
            num_pairs=num_pairs,
            placement=self.placement,
            stage=f"method {self.method!r}, {stage}",
            validation=validation,
            patience=self.fit.patience,
        )

    def _jit(self, name: str, build: Callable[[], Callable]) -> Callable:
        if name not in self._compiled:
            self._compiled[name] = build()
        return self._compiled[name]


def _floats(values: dict[str, Any]) -> dict[str, float]:
    """The values as Python floats (JSON-ready)."""
    return {name: float(value) for name, value in values.items()}


def _max_per_source(pool: Pool) -> int:
    return int(np.max(np.diff(np.asarray(pool.offsets)), initial=1))


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


def _bucket(size: int) -> int:
    """The next power of two at or above ``size`` (at least 64)."""
    return max(64, 1 << max(size - 1, 0).bit_length())
