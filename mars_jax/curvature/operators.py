"""Curvature operators of a pairwise reward loss: Hessian and Gauss-Newton vector products.

An operator is built from the model and the loss settings only; the parameters, the data
batch and the vector are arguments (``op(params, batch, vector) -> vector``), so one
compiled estimator serves every batch. Vectors are pytrees shaped like the parameters.

Keep the two matrices apart (as kfac-jax does): the Hessian ``H`` of the loss is exact and
may be indefinite; the generalised Gauss-Newton matrix ``G = J^T diag(h) J`` linearises the
model and keeps only the loss's curvature in the model outputs, so it is positive
semi-definite. They coincide when the rewards are linear in the parameters (a linear head on
fixed features), where :func:`linear_head_hessian` gives both in closed form.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mars_jax.models.heads import mlp_reward_model
  >>> from mars_jax.losses import pairwise_loss_fn
  >>> from mars_jax.types import PairBatch
  >>> model = mlp_reward_model(3, [])
  >>> params = model.init(jax.random.key(0))
  >>> batch = PairBatch(jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.ones(2))
  >>> hvp = hessian_vector_product(pairwise_loss_fn(model.reward_fn))
  >>> jax.tree.map(jnp.shape, hvp(params, batch, params))
  {'output': {'bias': (1,), 'kernel': (3, 1)}}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.losses import LossSettings, loss_second_derivative
from mars_jax.margins import pair_margins
from mars_jax.types import LossFn, Operator, PairBatch, PyTree, RewardFn

__all__ = [
    "gauss_newton_vector_product",
    "hessian_vector_product",
    "linear_head_hessian",
    "mean_weights",
]


def hessian_vector_product(loss_fn: LossFn) -> Operator:
    """Exact Hessian-vector products ``H v`` of ``loss_fn(params, batch) -> scalar``.

    Forward-over-reverse: the directional derivative (``jax.jvp``) of ``jax.grad(loss_fn)``
    at ``params`` along ``vector``; about 1.5 gradients of cost and memory.

    Returns:
      ``hvp(params, batch, vector) -> H vector``, a pytree like ``params`` (``vector`` must
      have the structure and dtypes of ``params``).
    """

    def hvp(params: PyTree, batch: PairBatch, vector: PyTree) -> PyTree:
        def gradient(p: PyTree) -> PyTree:
            return jax.grad(loss_fn)(p, batch)

        return jax.jvp(gradient, (params,), (vector,))[1]

    return hvp


def mean_weights(weight: jax.Array | None, num_pairs: int, dtype: jnp.dtype) -> jax.Array:
    """Per-pair factors ``[B]`` that turn a sum into :func:`mars_jax.losses.masked_mean`.

    ``w_i / sum(w)`` for pairs with ``w_i > 0`` and 0 otherwise; all 0 when the total weight
    is not positive (an all-padding batch has zero loss and zero curvature), ``1 / B``
    when ``weight`` is None.
    """
    if weight is None:
        return jnp.full((num_pairs,), 1.0 / num_pairs, dtype)
    weight = weight.astype(dtype)
    total = jnp.sum(weight)
    positive = (weight > 0) & (total > 0)
    return jnp.where(positive, weight / jnp.where(total > 0, total, 1.0), 0.0)


def gauss_newton_vector_product(
    reward_fn: RewardFn, *, loss: LossSettings = LossSettings()
) -> Operator:
    """Generalised Gauss-Newton products ``G v`` of the weighted mean pairwise loss.

    With ``J`` the Jacobian ``[B, P]`` of the margins, ``h`` the loss's second derivative
    (:func:`mars_jax.losses.loss_second_derivative`) and ``a_i`` from :func:`mean_weights`,
    ``G v = J^T diag(a h) J v``: ``J v`` by ``jax.jvp``,
    ``J^T u`` by ``jax.vjp``, never forming ``J``. With reward centering
    (``loss.centering_coef = c > 0``) the penalty ``c (r+ + r-)^2`` is quadratic in the
    rewards, so its exact Gauss-Newton term ``2 c K^T diag(a) K v`` is added, ``K`` the
    Jacobian of ``r+ + r-``; the sum stays positive semi-definite.

    ``G`` drops the terms ``sum_i a_i l'(m_i) d^2 m_i`` (and the centering analogue) of the
    Hessian, so for rewards linear in the parameters (a linear head ``r = theta . phi + b``)
    ``G`` equals the Hessian of the loss exactly.

    Args:
      reward_fn: ``reward_fn(params, inputs) -> rewards[N]``.
      loss: loss settings, as for training.

    Returns:
      ``ggn(params, batch, vector) -> G vector``, a pytree like ``params``.
    """
    centering = float(loss.centering_coef)

    def ggn(params: PyTree, batch: PairBatch, vector: PyTree) -> PyTree:
        def outputs(p: PyTree) -> tuple[jax.Array, ...]:
            rewards = pair_margins(reward_fn, p, batch.chosen, batch.rejected)
            if centering:
                return rewards.margins, rewards.chosen + rewards.rejected
            return (rewards.margins,)

        primal, tangent = jax.jvp(outputs, (params,), (vector,))
        margins = primal[0]
        weights = mean_weights(batch.weight, margins.shape[0], margins.dtype)
        cotangent = (weights * loss_second_derivative(margins, loss=loss) * tangent[0],)
        if centering:
            cotangent = (*cotangent, 2.0 * centering * weights * tangent[1])
        _, pullback = jax.vjp(outputs, params)
        return pullback(cotangent)[0]

    return ggn


def linear_head_hessian(
    features_chosen: jax.Array,
    features_rejected: jax.Array,
    weights: jax.Array,
    margins: jax.Array,
    *,
    target_margin: float = 0.0,
) -> jax.Array:
    """Closed-form Bradley-Terry Hessian ``[D, D]`` of a linear head, as an oracle.

    For ``r = theta . phi (+ b)`` the bias cancels in the margins and
    ``H = sum_i w_i s(D_i) s(-D_i) d_i d_i^T / sum_i w_i`` with ``d_i = phi+_i - phi-_i``,
    ``D_i = m_i - gamma`` and ``s`` the sigmoid (over pairs with ``w_i > 0``). It is the
    Hessian in ``theta``; rows and columns of the bias are 0.

    Args:
      features_chosen: ``[B, D]`` features of the chosen responses.
      features_rejected: ``[B, D]`` features of the rejected responses.
      weights: ``[B]`` pair weights (0 = padding).
      margins: ``[B]`` margins ``theta . d_i`` at the point of evaluation.
      target_margin: ``gamma`` of the loss.

    Returns:
      ``[D, D]`` symmetric positive semi-definite matrix.
    """
    differences = features_chosen - features_rejected
    shifted = margins - target_margin
    total = jnp.sum(weights)
    scale = jnp.where(weights > 0, weights, 0.0) / jnp.where(total > 0, total, 1.0)
    curvature = scale * jax.nn.sigmoid(shifted) * jax.nn.sigmoid(-shifted)
    return (differences * curvature[:, None]).T @ differences
