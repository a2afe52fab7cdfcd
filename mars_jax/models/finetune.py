"""A text reward model that fine-tunes a pretrained BERT encoder together with an MLP head.

Its inputs are token ids (:func:`~mars_jax.models.tokenize.tokenize_pairs`)::

    model = finetune_reward_model(folder)             # params: {"encoder": ..., "head": ...}
    inputs = tokenize_pairs(load_tokenizer(folder), prompts, responses, max_length=128)
    rewards = model.reward_fn(model.init(key), inputs)  # [B]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
from flax import nnx

from mars_jax.errors import MarsError
from mars_jax.models.bert import POOLING_MODES, BertConfig, BertEncoder, load_bert, pool
from mars_jax.models.heads import MLPRewardHead, RewardModel
from mars_jax.types import PyTree

__all__ = ["TextRewardModel", "finetune_reward_model"]


class TextRewardModel(nnx.Module):
    """A BERT encoder, pooling and an MLP head: token ids ``[B, T]`` to rewards ``[B]``."""

    def __init__(
        self,
        config: BertConfig,
        hidden_sizes: Sequence[int],
        *,
        pooling: str,
        activation: str,
        rngs: nnx.Rngs,
    ) -> None:
        self.encoder = BertEncoder(config, rngs=rngs)
        self.head = MLPRewardHead(
            config.hidden_size, hidden_sizes, activation=activation, rngs=rngs
        )
        self.pooling = pooling

    def __call__(self, inputs: Mapping[str, jax.Array]) -> jax.Array:
        """Rewards ``[B]`` of ``{"input_ids": [B, T], "attention_mask": [B, T]}``."""
        mask = inputs["attention_mask"]
        hidden = self.encoder(inputs["input_ids"], mask)
        return self.head(pool(hidden, mask, mode=self.pooling))


def finetune_reward_model(
    folder: str | os.PathLike[str],
    *,
    hidden_sizes: Sequence[int] = (),
    pooling: str = "mean",
    activation: str = "gelu",
) -> RewardModel:
    """A reward model that trains the pretrained encoder in ``folder`` together with a head.

    ``init(key)`` returns ``{"encoder": pretrained weights, "head": fresh head from key}``;
    inputs are those of :func:`~mars_jax.models.tokenize.tokenize_pairs`.
    """
    if pooling not in POOLING_MODES:
        raise MarsError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    encoder, config = load_bert(folder)
    encoder_params = nnx.to_pure_dict(nnx.state(encoder))
    hidden_sizes = tuple(hidden_sizes)

    def build() -> TextRewardModel:
        return TextRewardModel(
            config, hidden_sizes, pooling=pooling, activation=activation, rngs=nnx.Rngs(0)
        )

    graphdef, _ = nnx.split(nnx.eval_shape(build))

    def init(key: jax.Array) -> PyTree:
        head = MLPRewardHead(
            config.hidden_size, hidden_sizes, activation=activation, rngs=nnx.Rngs(params=key)
        )
        return {"encoder": encoder_params, "head": nnx.to_pure_dict(nnx.state(head))}

    return RewardModel(graphdef=graphdef, init=init)
