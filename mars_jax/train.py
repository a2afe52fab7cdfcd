"""Train state, train step and evaluation for pairwise reward models.

The state is an immutable pytree; :meth:`Trainer.train_step` maps a state and a batch
to a new state and is pure, so the caller jits it with ``donate_argnums=0``. A model may
be an ensemble of ``M`` heads: every leaf of a :class:`TrainState` then has a leading
member axis and :meth:`Trainer.train_chunk` vmaps the step over it (``M = 1`` for a
single model). The learning rate follows warm-up plus cosine decay over the steps of one
round and is computed from the state's counters, so rounds of different lengths reuse
one compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mars_jax.losses import bradley_terry_loss, hinge_loss, masked_mean, reward_centering_penalty
from mars_jax.margins import pair_margins
from mars_jax.types import PairBatch, PyTree, tree_take

__all__ = [
    "EvalSums",
    "LossSettings",
    "OptimizerSettings",
    "StepStats",
    "TrainState",
    "Trainer",
    "learning_rate_at",
    "pairwise_loss",
]

RewardFn = Callable[[PyTree, PyTree], jax.Array]


class LossSettings(NamedTuple):
    """Which pairwise loss to train with (see :mod:`mars_jax.losses`)."""

    kind: str = "bradley_terry"
    target_margin: float = 0.0
    label_smoothing: float = 0.0
    centering_coef: float = 0.0


class OptimizerSettings(NamedTuple):
    """AdamW with global-norm clipping and a per-round warm-up + cosine schedule."""

    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0


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


def pairwise_loss(
    params: PyTree, batch: PairBatch, *, reward_fn: RewardFn, loss: LossSettings
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean pairwise loss of a batch and its margins.

    Returns:
      ``(loss, margins[B])``; the loss is 0 for an all-padding batch.
    """
    rewards = pair_margins(reward_fn, params, batch.chosen, batch.rejected)
    if loss.kind == "hinge":
        per_pair = hinge_loss(rewards.margins, target_margin=loss.target_margin or 1.0)
    else:
        per_pair = bradley_terry_loss(
            rewards.margins,
            target_margin=loss.target_margin,
            label_smoothing=loss.label_smoothing,
        )
    if loss.centering_coef:
        per_pair = per_pair + reward_centering_penalty(
            rewards.chosen, rewards.rejected, coef=loss.centering_coef
        )
    return masked_mean(per_pair, batch.weight), rewards.margins


@dataclass(frozen=True)
class Trainer:
    """Static pieces of training: the reward function, loss and optimizer settings."""

    reward_fn: RewardFn
    loss: LossSettings = field(default_factory=LossSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    @property
    def transform(self) -> optax.GradientTransformation:
        """AdamW direction without the learning rate (applied per step from the schedule)."""
        return optax.chain(
            optax.clip_by_global_norm(self.optimizer.grad_clip_norm),
            optax.scale_by_adam(),
            optax.add_decayed_weights(self.optimizer.weight_decay),
        )

    def init_state(self, params: PyTree, num_steps: int = 1) -> TrainState:
        """A fresh state for one model (no member axis)."""
        return TrainState(
            params=params,
            opt_state=self.transform.init(params),
            step=jnp.zeros((), jnp.int32),
            num_steps=jnp.asarray(num_steps, jnp.int32),
        )

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
        updates, opt_state = self.transform.update(grads, state.opt_state, state.params)
        rate = learning_rate_at(
            state.step,
            state.num_steps,
            peak=self.optimizer.learning_rate,
            warmup_fraction=self.optimizer.warmup_fraction,
        )
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
