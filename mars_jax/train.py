"""Train state, train step and the epoch loop for pairwise reward models.

A :class:`Trainer` joins a reward function ``reward_fn(params, inputs) -> rewards[B]``, a
pairwise loss and any ``optax.GradientTransformation``. The state is an immutable pytree;
:meth:`Trainer.train_step` maps a state and a batch to a new state and is pure. A model may
be an ensemble of ``M`` heads: every leaf of a :class:`TrainState` then has a leading member
axis and :meth:`Trainer.train_chunk` vmaps the step over it (``M = 1`` for a single model).
:meth:`Trainer.fit` runs shuffled epochs as compiled chunks of steps; the compiled programs
belong to the trainer and die with it.

The optimizer's updates are applied as they are (``optax.apply_updates``), unless the
trainer has a ``learning_rate`` schedule of ``(step, num_steps)``: then the optimizer gives
a direction and the rate comes from the state's counters, so rounds of different lengths
reuse one compiled step. :meth:`Trainer.adamw` builds the runner's default that way: AdamW
with global-norm clipping and a per-round warm-up + cosine schedule.

Example (your own optimizer):
  >>> import jax, jax.numpy as jnp, optax
  >>> from mars_jax.train import Trainer
  >>> trainer = Trainer(reward_fn=lambda p, x: x @ p, optimizer=optax.sgd(0.1))
  >>> state = trainer.init_state(jnp.zeros(3))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mars_jax.errors import MarsError
from mars_jax.losses import LossSettings, pairwise_loss
from mars_jax.margins import pair_margins, response_pair_margins
from mars_jax.parallel import Placement, pad_rows
from mars_jax.settings import setting
from mars_jax.types import PairBatch, PyTree, ResponsePairs, RewardFn, Schedule, tree_take

__all__ = [
    "EvalSums",
    "FitSettings",
    "NonFiniteTrainingError",
    "OptimizerSettings",
    "StepStats",
    "TrainState",
    "Trainer",
    "adamw_direction",
    "learning_rate_at",
]


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with global-norm clipping and a per-round warm-up + cosine schedule."""

    learning_rate: float = setting(1e-3, "peak learning rate", min_exclusive=0)
    warmup_fraction: float = setting(
        0.1, "fraction of each round's steps spent warming up", min=0, max_exclusive=1
    )
    weight_decay: float = setting(1e-4, "decoupled weight decay (AdamW)", min=0)
    grad_clip_norm: float = setting(1.0, "global gradient-norm clip", min_exclusive=0)


@dataclass(frozen=True)
class FitSettings:
    """How long and in what batches a model trains."""

    batch_size: int = setting(64, "pairs per optimisation step", min=1)
    epochs_per_round: int = setting(1, "epochs of training in each refinement round", min=1)
    warmup_epochs: int = setting(
        1,
        "epochs on the base pairs before the first allocation "
        "(0: the first allocation uses the untrained model, as the authors' code)",
        min=0,
    )
    patience: int = setting(
        0,
        "with validation pairs (data.validation_fraction): stop a round after this many "
        "epochs without a better validation loss (0: run every epoch); the round keeps its "
        "best state either way",
        min=0,
    )


class EvalSums(NamedTuple):
    """Weighted sums over a batch: loss, correctly ordered pairs, and total weight."""

    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array


class StepStats(NamedTuple):
    """Per-step training statistics: the loss and the gradient's global norm (pre-clipping)."""

    loss: jax.Array
    grad_norm: jax.Array


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state and the position in the round's schedule.

    Attributes:
      params: parameter pytree.
      opt_state: optax state.
      step: int32 steps taken in the current schedule.
      num_steps: int32 length of the current schedule (steps in this round).
    """

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array
    num_steps: jax.Array


class NonFiniteTrainingError(MarsError):
    """Training produced a NaN or infinite loss or gradient norm; the state is discarded."""


def learning_rate_at(
    step: jax.Array, num_steps: jax.Array, *, peak: float, warmup_fraction: float
) -> jax.Array:
    """Linear warm-up to ``peak`` over ``warmup_fraction`` of the steps, then cosine to 0."""
    step = step.astype(jnp.float32)
    total = jnp.maximum(num_steps.astype(jnp.float32), 1.0)
    warmup = jnp.maximum(jnp.floor(warmup_fraction * total), 1.0)
    rising = peak * (step + 1.0) / warmup
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    falling = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, rising, falling)


def adamw_direction(settings: OptimizerSettings) -> optax.GradientTransformation:
    """AdamW's update direction without the learning rate: clip, Adam, decoupled decay."""
    return optax.chain(
        optax.clip_by_global_norm(settings.grad_clip_norm),
        optax.scale_by_adam(),
        optax.add_decayed_weights(settings.weight_decay),
    )


@dataclass(frozen=True)
class Trainer:
    """Static pieces of training: the reward function, loss and optimizer.

    Attributes:
      reward_fn: ``reward_fn(params, inputs) -> rewards[B]``.
      optimizer: any optax transformation.
      learning_rate: ``rate(step, num_steps)``; None applies the optimizer's updates as
        they are (the optimizer holds its own rate); else the update is
        ``params - rate * direction`` with the optimizer giving the direction.
      loss: the pairwise loss.
      chunk_steps: optimizer steps per compiled chunk of :meth:`fit`.
    """

    reward_fn: RewardFn
    optimizer: optax.GradientTransformation
    learning_rate: Schedule | None = None
    loss: LossSettings = LossSettings()
    chunk_steps: int = 16
    _compiled: dict[str, Callable] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def adamw(
        cls,
        reward_fn: RewardFn,
        *,
        loss: LossSettings = LossSettings(),
        optimizer: OptimizerSettings = OptimizerSettings(),
    ) -> Trainer:
        """The runner's trainer: AdamW with a per-round warm-up + cosine schedule."""
        schedule = functools.partial(
            learning_rate_at,
            peak=optimizer.learning_rate,
            warmup_fraction=optimizer.warmup_fraction,
        )
        return cls(reward_fn, adamw_direction(optimizer), learning_rate=schedule, loss=loss)

    def init_state(self, params: PyTree, num_steps: int = 1) -> TrainState:
        """A fresh state for one model (no member axis)."""
        return TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            num_steps=jnp.asarray(num_steps, jnp.int32),
        )

    def init_members(self, params: PyTree) -> TrainState:
        """A fresh state for member-stacked ``params`` (leading axis ``M``)."""
        return jax.vmap(self.init_state)(params)

    def train_step(self, state: TrainState, batch: PairBatch) -> tuple[TrainState, jax.Array]:
        """One optimizer step on one model. Returns ``(new_state, loss)``."""
        new_state, stats = self.train_step_with_stats(state, batch)
        return new_state, stats.loss

    def train_step_with_stats(
        self, state: TrainState, batch: PairBatch
    ) -> tuple[TrainState, StepStats]:
        """One optimizer step on one model. Returns ``(new_state, stats)``."""
        (loss, _), grads = jax.value_and_grad(
            lambda p: pairwise_loss(p, batch, reward_fn=self.reward_fn, loss=self.loss),
            has_aux=True,
        )(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        if self.learning_rate is None:
            params = optax.apply_updates(state.params, updates)
        else:
            rate = self.learning_rate(state.step, state.num_steps)
            params = jax.tree.map(lambda p, u: p - rate * u, state.params, updates)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, StepStats(loss, optax.tree.norm(grads))

    def train_chunk(
        self,
        state: TrainState,
        pairs: PairBatch,
        rows: jax.Array,
        mask: jax.Array,
        active: jax.Array,
    ) -> tuple[TrainState, StepStats]:
        """Up to ``C`` steps on an ensemble of ``M`` members with ``lax.scan``.

        Batches are gathered from ``pairs`` inside the compiled loop, so the host sends
        only row indices.

        Args:
          state: member-stacked state (leading axis ``M`` on every leaf).
          pairs: the training pairs, leading axis ``n``.
          rows: ``[C, M, b]`` int32 rows of ``pairs`` per step and member.
          mask: ``[C, M, b]`` 0 for padding slots (multiplies the pairs' weights).
          active: ``[C]`` bool; inactive steps leave the state unchanged (they pad the
            last chunk of an epoch, so chunks have one shape and compile once).

        Returns:
          ``(state, stats)``: :class:`StepStats` of ``[C, M]`` arrays, 0 on inactive steps.
        """
        member_step = jax.vmap(self.train_step_with_stats)

        def body(carry: TrainState, step: tuple[jax.Array, jax.Array, jax.Array]):
            step_rows, step_mask, is_active = step
            batch = PairBatch(
                chosen=tree_take(pairs.chosen, step_rows),
                rejected=tree_take(pairs.rejected, step_rows),
                weight=pairs.weight[step_rows] * step_mask,
            )
            return jax.lax.cond(
                is_active,
                member_step,
                lambda s, b: (s, StepStats(*2 * [jnp.zeros(b.weight.shape[:1], jnp.float32)])),
                carry,
                batch,
            )

        return jax.lax.scan(body, state, (rows, mask, active))

    def fit(
        self,
        state: TrainState,
        key: jax.Array,
        pairs: PairBatch,
        *,
        epochs: int,
        batch_size: int,
        num_pairs: int | None = None,
        placement: Placement | None = None,
        stage: str = "training",
        validation: PairBatch | None = None,
        patience: int = 0,
    ) -> tuple[TrainState, float]:
        """``epochs`` shuffled passes over the first ``num_pairs`` rows of ``pairs``.

        Each member of the member-stacked ``state`` gets its own shuffle. The schedule's
        counters restart (``step = 0``, ``num_steps`` = the steps of all epochs).

        With ``validation`` pairs, the loss on them is measured for each member on entry and
        after every epoch, and each member ends in its state of least validation loss (the
        entry state included, so a stage that only overfits changes nothing); with
        ``patience > 0`` training stops once no member improved for ``patience`` epochs.

        Args:
          state: member-stacked state (leading axis ``M``).
          key: PRNG key of the shuffles.
          pairs: training pairs (rows past ``num_pairs`` are padding and never drawn).
          epochs: passes over the data.
          batch_size: pairs per step.
          num_pairs: rows of ``pairs`` to train on (default: all).
          placement: shard the batches over its mesh (None: the default device).
          stage: names the stage in a non-finite error, e.g. "round 3".
          validation: pairs to choose the best epoch on (None: the last epoch's state).
          patience: epochs without improvement before stopping early (0: never).

        Returns:
          ``(state, mean training loss)``.

        Raises:
          NonFiniteTrainingError: a loss or gradient norm was NaN or infinite (checked on
            the host once, after the last chunk).
        """
        if num_pairs is None:
            num_pairs = int(pairs.weight.shape[0])
        num_members = int(state.step.shape[0])
        chunk = self.chunk_steps
        steps_per_epoch = math.ceil(num_pairs / batch_size)
        num_chunks = math.ceil(steps_per_epoch / chunk)
        state = state.replace(
            step=jnp.zeros_like(state.step),
            num_steps=jnp.full_like(state.num_steps, steps_per_epoch * epochs),
        )
        if placement is not None:
            state = placement.put_params(state)
            pairs = placement.put_replicated(pairs)
        run_chunk = self._jit("train_chunk", lambda: jax.jit(self.train_chunk, donate_argnums=0))
        all_finite = self._jit("all_finite", lambda: jax.jit(_all_finite))
        loss_sum = jnp.zeros(())
        finite = jnp.asarray(True)
        chunk_stats = []
        best = None
        if validation is not None:
            if placement is not None:
                validation = placement.put_replicated(validation)
            best = _BestState(self.member_losses(state.params, validation), state)
        epochs_run = 0
        for epoch_key in jax.random.split(key, epochs):
            rows, mask = _epoch_rows(
                epoch_key, num_pairs, num_members, batch_size, num_chunks * chunk
            )
            for index in range(num_chunks):
                steps = slice(index * chunk, (index + 1) * chunk)
                active = np.arange(chunk) < (steps_per_epoch - index * chunk)
                step_rows, step_mask = rows[steps], mask[steps]
                if placement is not None:
                    step_rows, step_mask, active = _place_steps(
                        placement, step_rows, step_mask, active
                    )
                state, stats = run_chunk(state, pairs, step_rows, step_mask, active)
                loss_sum = loss_sum + jnp.sum(stats.loss)
                finite = finite & all_finite(stats)
                chunk_stats.append(stats)
            epochs_run += 1
            if best is not None:
                best = best.update(self.member_losses(state.params, validation), state)
                if patience and best.stale >= patience:
                    break
        if not bool(finite):
            raise _non_finite_error(
                stage,
                chunk_stats,
                chunk=chunk,
                chunks_per_epoch=num_chunks,
                steps_per_epoch=steps_per_epoch,
                total=steps_per_epoch * epochs,
            )
        if best is not None:
            state = best.state(like=state, placement=placement)
        return state, float(loss_sum) / max(steps_per_epoch * epochs_run * num_members, 1)

    def member_losses(self, params: PyTree, pairs: PairBatch) -> np.ndarray:
        """Mean pairwise loss ``[M]`` of every member on ``pairs`` (member-stacked params)."""
        losses = self._jit(
            "member_losses",
            lambda: jax.jit(
                jax.vmap(
                    lambda p, b: pairwise_loss(p, b, reward_fn=self.reward_fn, loss=self.loss)[0],
                    in_axes=(0, None),
                )
            ),
        )
        return np.asarray(losses(params, pairs))

    def eval_step(self, params: PyTree, batch: PairBatch) -> EvalSums:
        """Loss and accuracy of one model on a batch, as weighted sums plus a count.

        Sums over batches add up, so an epoch's mean is ``loss_sum / count`` on the host.
        """
        rewards = pair_margins(self.reward_fn, params, batch.chosen, batch.rejected)
        loss, _ = pairwise_loss(params, batch, reward_fn=self.reward_fn, loss=self.loss)
        count = jnp.sum(batch.weight)
        correct = jnp.sum(jnp.where(rewards.margins > 0, batch.weight, 0.0))
        return EvalSums(loss_sum=loss * count, correct=correct, count=count)

    def member_rewards(self, params: PyTree, inputs: PyTree) -> jax.Array:
        """Rewards ``[M, B]`` of every ensemble member (params stacked on axis ``M``)."""
        return jax.vmap(self.reward_fn, in_axes=(0, None))(params, inputs)

    def mean_reward(self, params: PyTree, inputs: PyTree) -> jax.Array:
        """Rewards ``[B]`` of the model: the mean over its members (params on axis ``M``)."""
        return self.member_rewards(params, inputs).mean(axis=0)

    def member_margins(self, params: PyTree, chosen: PyTree, rejected: PyTree) -> jax.Array:
        """Margins ``[M, B]`` of every member, compiled once per trainer and shape."""
        margins = self._jit(
            "member_margins",
            lambda: jax.jit(
                jax.vmap(
                    lambda p, c, r: pair_margins(self.reward_fn, p, c, r).margins,
                    in_axes=(0, None, None),
                )
            ),
        )
        return margins(params, chosen, rejected)

    def member_response_margins(self, params: PyTree, pairs: ResponsePairs) -> jax.Array:
        """Margins ``[M, B]`` of every member from one reward per distinct response."""
        margins = self._jit(
            "member_response_margins",
            lambda: jax.jit(
                jax.vmap(
                    lambda p, q: response_pair_margins(self.reward_fn, p, q).margins,
                    in_axes=(0, None),
                )
            ),
        )
        return margins(params, pairs)

    def _jit(self, name: str, build: Callable[[], Callable]) -> Callable:
        """The compiled function ``name``, built on first use and kept by this trainer."""
        if name not in self._compiled:
            self._compiled[name] = build()
        return self._compiled[name]


class _BestState:
    """Each member's state of least validation loss so far, kept on the host (the training
    loop donates its state's buffers), and the epochs since any member last improved."""

    def __init__(self, losses: np.ndarray, state: TrainState) -> None:
        self.losses = losses
        self.host = jax.device_get(state)
        self.stale = 0

    def update(self, losses: np.ndarray, state: TrainState) -> _BestState:
        better = losses < self.losses
        if better.any():
            new = jax.device_get(state)
            self.host = jax.tree.map(
                lambda n, o: np.where(better.reshape((-1,) + (1,) * (np.ndim(n) - 1)), n, o),
                new,
                self.host,
            )
            self.losses = np.where(better, losses, self.losses)
            self.stale = 0
        else:
            self.stale += 1
        return self

    def state(self, *, like: TrainState, placement: Placement | None) -> TrainState:
        """The best state as device arrays (laid out like ``like`` under ``placement``)."""
        state = jax.tree.map(lambda h, a: jnp.asarray(h, a.dtype), self.host, like)
        return state if placement is None else placement.put_params(state)


def _all_finite(stats: StepStats) -> jax.Array:
    return jnp.isfinite(stats.loss).all() & jnp.isfinite(stats.grad_norm).all()


def _non_finite_error(
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
                        f"{stage}, step {step} of {total}{member}: "
                        f"training {name} is {values[bad][0]}; stopped before saving this state"
                    )
    return NonFiniteTrainingError(f"{stage}: non-finite training statistics")


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
