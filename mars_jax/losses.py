"""Pairwise preference losses, elementwise in the signed margin, and a safe masked mean.

A signed margin is ``m = r(chosen) - r(rejected)`` (shape ``[B]``). Losses here return
one value per pair; reduce them with :func:`masked_mean` (which gives 0, not NaN, for an
all-masked batch), as optax separates losses from reductions. :class:`LossSettings` names
one training loss (Bradley-Terry or hinge, with a target margin, label smoothing and reward
centering); :func:`pairwise_loss` is its weighted mean on a batch of a reward model, and
:func:`loss_second_derivative` its curvature in the margin (used by the Gauss-Newton operator).

Example:
  >>> import jax.numpy as jnp
  >>> from mars_jax.losses import bradley_terry_loss, masked_mean
  >>> float(masked_mean(bradley_terry_loss(jnp.zeros(3))))  # log 2
  0.693...
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mars_jax.margins import pair_margins
from mars_jax.settings import setting
from mars_jax.types import LossFn, PairBatch, PyTree, RewardFn

__all__ = [
    "LOSSES",
    "LossSettings",
    "bradley_terry_loss",
    "hinge_loss",
    "loss_second_derivative",
    "masked_mean",
    "pairwise_loss",
    "pairwise_loss_fn",
    "reward_centering_penalty",
]

LOSSES = ("bradley_terry", "hinge")


@jax.custom_jvp
def _sigmoid(x: jax.Array) -> jax.Array:
    """Logistic function whose derivative ``sigmoid(x) sigmoid(-x)`` keeps full precision."""
    return jax.nn.sigmoid(x)


@_sigmoid.defjvp
def _sigmoid_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (dx,) = primals, tangents
    return jax.nn.sigmoid(x), jax.nn.sigmoid(x) * jax.nn.sigmoid(-x) * dx


@jax.custom_jvp
def _softplus(x: jax.Array) -> jax.Array:
    """``log(1 + e^x)`` with exact first and second derivatives at any ``x``.

    Autodiff of ``jax.nn.softplus`` loses the second derivative where it is tiny (e.g. it
    gives 0 instead of 2e-9 at x = 20 in float32), which matters for curvature estimates.
    """
    return jax.nn.softplus(x)


@_softplus.defjvp
def _softplus_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (dx,) = primals, tangents
    return jax.nn.softplus(x), _sigmoid(x) * dx


def bradley_terry_loss(
    margins: jax.Array, *, target_margin: float = 0.0, label_smoothing: float = 0.0
) -> jax.Array:
    """Bradley-Terry negative log-likelihood ``-log sigmoid(m - gamma)``, per pair.

    Args:
      margins: ``[B]`` signed margins.
      target_margin: ``gamma``; the loss asks for ``m > gamma`` (0 is plain BT).
      label_smoothing: ``eps``; mixes in the loss of the flipped label,
        ``(1 - eps) * softplus(gamma - m) + eps * softplus(m - gamma)``, which bounds the
        pull of a mislabelled pair.

    Returns:
      ``[B]`` losses. At ``m = 0`` (no smoothing, no target) each is ``log 2``; the
      derivative in ``m`` is ``-sigmoid(-m)`` and the second ``sigmoid(m) sigmoid(-m)``.
    """
    shifted = margins - target_margin
    loss = _softplus(-shifted)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * _softplus(shifted)
    return loss


def hinge_loss(margins: jax.Array, *, target_margin: float = 1.0) -> jax.Array:
    """Hinge loss ``max(0, gamma - m)`` per pair (``[B] -> [B]``)."""
    return jax.nn.relu(target_margin - margins)


def reward_centering_penalty(
    chosen_rewards: jax.Array, rejected_rewards: jax.Array, *, coef: float
) -> jax.Array:
    """Reward-centering term ``coef * (r+ + r-)^2`` per pair, keeping rewards near 0.

    Args:
      chosen_rewards: ``[B]`` rewards of the chosen responses.
      rejected_rewards: ``[B]`` rewards of the rejected responses.
      coef: penalty weight ``c``.

    Returns:
      ``[B]`` penalties.
    """
    return coef * jnp.square(chosen_rewards + rejected_rewards)


def masked_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Weighted mean of ``values`` (``[B]``) with ``weights`` (``[B]``, 0 = masked).

    Returns 0 (not NaN) when every weight is 0, and takes no gradient through the
    all-masked case.
    """
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    total = jnp.sum(weights)
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(jnp.where(weights > 0, values * weights, 0.0)), 0.0) / (
        safe_total
    )


@dataclass(frozen=True)
class LossSettings:
    """One pairwise training loss: which loss and its options."""

    kind: str = setting("bradley_terry", "pairwise loss", choices=LOSSES, key="loss")
    target_margin: float = setting(0.0, "margin the loss asks the reward gap to exceed", min=0)
    label_smoothing: float = setting(
        0.0, "probability mass moved to the opposite label", min=0, max_exclusive=0.5
    )
    centering_coef: float = setting(0.0, "penalty on the squared mean reward", min=0)

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"loss kind must be one of {LOSSES}, got {self.kind!r}")


def pairwise_loss(
    params: PyTree, batch: PairBatch, *, reward_fn: RewardFn, loss: LossSettings
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean pairwise loss of a batch and its margins.

    Args:
      params: the reward model's parameters.
      batch: pairs with their ``[B]`` weights (0 = padding).
      reward_fn: ``reward_fn(params, inputs) -> rewards[N]``.
      loss: which loss.

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


def pairwise_loss_fn(reward_fn: RewardFn, *, loss: LossSettings = LossSettings()) -> LossFn:
    """The training loss as ``loss_fn(params, batch) -> scalar`` (:func:`pairwise_loss`)."""

    def loss_fn(params: PyTree, batch: PairBatch) -> jax.Array:
        return pairwise_loss(params, batch, reward_fn=reward_fn, loss=loss)[0]

    return loss_fn


def loss_second_derivative(margins: jax.Array, *, loss: LossSettings = LossSettings()) -> jax.Array:
    """Second derivative ``h_i = l''(m_i)`` of the per-pair loss in its margin, ``[B]``.

    Bradley-Terry: ``sigmoid(m - gamma) sigmoid(gamma - m)``. Label smoothing mixes
    ``softplus(gamma - m)`` and ``softplus(m - gamma)``, which have the same second
    derivative, so it leaves ``h`` unchanged. Hinge: 0 (piecewise linear in the margin).
    The reward-centering penalty is not a function of the margin and is not included.
    """
    if loss.kind == "hinge":
        return jnp.zeros_like(margins)
    shifted = margins - loss.target_margin
    return jax.nn.sigmoid(shifted) * jax.nn.sigmoid(-shifted)
