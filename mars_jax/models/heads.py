"""Reward heads as Flax NNX modules, split once into a graph definition and parameters.

Everything outside this module sees a :class:`RewardModel`: a pure
``reward_fn(params, inputs) -> rewards[B]`` over a plain parameter pytree, and
``init(key) -> params``. A text encoder plugs into the same contract.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.types import PyTree

__all__ = ["MLPRewardHead", "RewardModel", "init_members", "mlp_reward_model"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


class MLPRewardHead(nnx.Module):
    """A multilayer perceptron mapping features ``[B, D]`` to scalar rewards ``[B]``.

    With no hidden layers it is a linear head ``r = w·x + b``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        *,
        activation: str = "gelu",
        rngs: nnx.Rngs,
    ) -> None:
        widths = [in_features, *hidden_sizes]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.output = nnx.Linear(widths[-1], 1, rngs=rngs)
        self.activation = activation

    def __call__(self, features: jax.Array) -> jax.Array:
        hidden = features
        for layer in self.hidden:
            hidden = ACTIVATIONS[self.activation](layer(hidden))
        return self.output(hidden)[..., 0]


@dataclass(frozen=True)
class RewardModel:
    """A reward model seen as pure functions of a parameter pytree.

    Attributes:
      graphdef: the static structure from ``nnx.split``.
      init: ``init(key) -> params`` draws fresh parameters (a plain nested dict).
    """

    graphdef: nnx.GraphDef
    init: Callable[[jax.Array], PyTree]

    def reward_fn(self, params: PyTree, inputs: PyTree) -> jax.Array:
        """Rewards ``[B]`` of ``inputs`` (leading axis ``B``) under ``params``."""
        return nnx.merge(self.graphdef, params)(inputs)


def mlp_reward_model(
    in_features: int, hidden_sizes: Sequence[int], *, activation: str = "gelu"
) -> RewardModel:
    """An MLP reward head on feature vectors of width ``in_features``."""

    def build(key: jax.Array) -> MLPRewardHead:
        return MLPRewardHead(
            in_features, tuple(hidden_sizes), activation=activation, rngs=nnx.Rngs(params=key)
        )

    graphdef, _ = nnx.split(build(jax.random.key(0)))

    def init(key: jax.Array) -> PyTree:
        return nnx.to_pure_dict(nnx.split(build(key))[1])

    return RewardModel(graphdef=graphdef, init=init)


def init_members(model: RewardModel, key: jax.Array, num_members: int) -> PyTree:
    """Independent parameters for ``num_members`` heads, stacked on a leading axis ``M``."""
    return jax.vmap(model.init)(jax.random.split(key, num_members))
