"""Reward models and language models in Flax/JAX, with loaders for local pretrained weights.

- :mod:`~mars_jax.models.heads`: MLP reward heads on feature vectors (:class:`RewardModel`).
- :mod:`~mars_jax.models.bert`, :mod:`~mars_jax.models.encoder`: BERT-family encoders and
  frozen sentence embeddings; :mod:`~mars_jax.models.embedding_cache` keeps them on disk;
  :mod:`~mars_jax.models.tokenize` turns text into bucketed token ids.
- :mod:`~mars_jax.models.finetune`: a reward model that trains the encoder with its head.
- :mod:`~mars_jax.models.llama` (+ ``llama_weights``, ``llama_tokenizer``, ``sampling``,
  ``generator``): a Llama-family language model (SmolLM2) for paraphrase generation.
- :mod:`~mars_jax.models.llm_features`: the LLM as a frozen reward backbone (last-token
  features); :mod:`~mars_jax.models.backbone` opens the backbone ``data.encoder`` names;
  :mod:`~mars_jax.models.lora`: a LoRA reward model on the LLM.
- :mod:`~mars_jax.models.pretrained`: the packaged weights (``mars-jax models install``).

Only the light heads are imported here; the text and language models load transformers and
large weights, so import their modules directly.
"""

from mars_jax.models.heads import MLPRewardHead, RewardModel, init_members, mlp_reward_model

__all__ = ["MLPRewardHead", "RewardModel", "init_members", "mlp_reward_model"]
