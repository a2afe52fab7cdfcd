"""A trainable LLM reward model: a frozen Llama, LoRA adapters and a linear head.

LoRA adds ``scale * A @ B`` to each adapted projection ``W`` ``[in, out]`` (``A`` ``[in, r]``
drawn at random, ``B`` ``[r, out]`` zero), so at initialisation the model equals the frozen
one. The reward is a linear head on the last token's final hidden state of a left-padded
chat text (:mod:`mars_jax.models.llm_features`), the way TRL's ``RewardTrainer`` puts a scalar
head on a causal LM. Params: ``{"backbone": Llama params, "lora": {name: {"a", "b"}},
"head": {"w": [D], "b": []}}``; the backbone sits behind ``stop_gradient``, and
:func:`trainable_mask` marks what an optimizer should update (``optax.masked``)::

    config, weights = load_llama(smollm2_path())
    model = lora_reward_model(config, to_device(weights), rank=8)
    params = model.init(jax.random.key(0))
    rewards = model.reward_fn(params, {"tokens": tokens, "pad": pad})  # [B]
    optimizer = optax.masked(optax.adamw(1e-4), trainable_mask(params))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mars_jax.models.llama import LlamaConfig
from mars_jax.models.llm_features import last_token_features
from mars_jax.types import PyTree

__all__ = [
    "LORA_TARGETS",
    "LoraRewardModel",
    "init_lora",
    "lora_reward_model",
    "merge_lora",
    "trainable_mask",
]

LORA_TARGETS = ("wq", "wk", "wv", "wo")
"""The attention projections adapted by default (any of the ``layers`` matrices may be)."""


def init_lora(
    key: jax.Array,
    layers: dict[str, jax.Array],
    *,
    rank: int = 8,
    targets: Sequence[str] = LORA_TARGETS,
) -> dict[str, dict[str, jax.Array]]:
    """Adapters for the stacked projections ``layers[name]`` ``[L, in, out]`` in ``targets``:
    ``a`` ``[L, in, r]`` normal with std ``1/sqrt(in)``, ``b`` ``[L, r, out]`` zero."""
    adapters = {}
    for name, subkey in zip(targets, jax.random.split(key, len(targets)), strict=True):
        num_layers, fan_in, fan_out = layers[name].shape
        dtype = layers[name].dtype
        a = jax.random.normal(subkey, (num_layers, fan_in, rank), dtype) * fan_in**-0.5
        adapters[name] = {"a": a, "b": jnp.zeros((num_layers, rank, fan_out), dtype)}
    return adapters


def merge_lora(params: dict[str, Any], lora: dict[str, Any], *, scale: float) -> dict[str, Any]:
    """``params`` with each adapted ``layers[name]`` replaced by ``W + scale * A @ B``."""
    layers = dict(params["layers"])
    for name, adapter in lora.items():
        delta = jnp.einsum("lir,lro->lio", adapter["a"], adapter["b"])
        layers[name] = layers[name] + scale * delta.astype(layers[name].dtype)
    return {**params, "layers": layers}


def trainable_mask(params: PyTree) -> PyTree:
    """``True`` on the adapter and head leaves, ``False`` on the frozen backbone's."""
    return {
        name: jax.tree.map(lambda _, trainable=name != "backbone": trainable, subtree)
        for name, subtree in params.items()
    }


@dataclass(frozen=True)
class LoraRewardModel:
    """A reward model as pure functions (the contract of :class:`~mars_jax.models.RewardModel`).

    Attributes:
      config: the Llama's shapes.
      init: ``init(key) -> params`` (the given backbone, fresh adapters and head).
      scale: the LoRA scale ``alpha / r``.
    """

    config: LlamaConfig
    init: Callable[[jax.Array], PyTree]
    scale: float

    def reward_fn(self, params: PyTree, inputs: PyTree) -> jax.Array:
        """Rewards ``[B]`` of ``{"tokens": [B, T] left-padded, "pad": [B]}``."""
        backbone = jax.lax.stop_gradient(params["backbone"])
        merged = merge_lora(backbone, params["lora"], scale=self.scale)
        hidden = last_token_features(merged, self.config, inputs["tokens"], inputs["pad"])
        return hidden @ params["head"]["w"] + params["head"]["b"]


def lora_reward_model(
    config: LlamaConfig,
    backbone: dict[str, Any],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = LORA_TARGETS,
) -> LoraRewardModel:
    """A LoRA reward model on the Llama ``backbone`` (params of :mod:`mars_jax.models.llama`)."""
    targets = tuple(targets)

    def init(key: jax.Array) -> PyTree:
        lora_key, head_key = jax.random.split(key)
        dim = config.hidden_size
        head = {
            "w": jax.random.normal(head_key, (dim,), jnp.float32) * dim**-0.5,
            "b": jnp.zeros((), jnp.float32),
        }
        lora = init_lora(lora_key, backbone["layers"], rank=rank, targets=targets)
        return {"backbone": backbone, "lora": lora, "head": head}

    return LoraRewardModel(config=config, init=init, scale=alpha / rank)
