"""Pairwise preference losses, elementwise in the signed margin, and a safe masked mean.

A signed margin is ``m = r(chosen) - r(rejected)`` (shape ``[B]``). Losses here return
one value per pair; reduce them with :func:`masked_mean` (which gives 0, not NaN, for an
all-masked batch), as optax separates losses from reductions.

Example:
  >>> import jax.numpy as jnp
  >>> from mars_jax.losses import bradley_terry_loss, masked_mean
  >>> float(masked_mean(bradley_terry_loss(jnp.zeros(3))))  # log 2
  0.693...
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "bradley_terry_loss",
    "hinge_loss",
    "masked_mean",
    "reward_centering_penalty",
]


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
