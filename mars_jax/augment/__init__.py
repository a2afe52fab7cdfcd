"""Augmentation pools: paraphrases by a small language model, and cheap feature generators.

- :mod:`~mars_jax.augment.generator`: the :class:`TextGenerator` interface and its factory.
- :mod:`~mars_jax.augment.paraphrase`: paraphrase requests, filters, retries.
- :mod:`~mars_jax.augment.semantic`: the v2 semantic pre-step.
- :mod:`~mars_jax.augment.pool`: the on-disk pool format and its reader.
- :mod:`~mars_jax.augment.builder`: the resumable pool builder.
- :mod:`~mars_jax.augment.cheap`: perturbation and mixup pools on feature vectors.
- :mod:`~mars_jax.augment.command`: ``mars-jax augment`` (imported on demand).
"""

from mars_jax.augment.builder import AugmentSettings, BuildReport, build_pool
from mars_jax.augment.cheap import POOL_GENERATORS, make_cheap_pool, mixup_pool, perturb_pool
from mars_jax.augment.generator import TextGenerator, load_text_generator
from mars_jax.augment.paraphrase import ParaphraseSettings, paraphrase_texts
from mars_jax.augment.pool import PoolContents, PoolPair, base_key, pair_indices, read_pool
from mars_jax.augment.semantic import response_distances, semantic_refine

__all__ = [
    "POOL_GENERATORS",
    "AugmentSettings",
    "BuildReport",
    "ParaphraseSettings",
    "PoolContents",
    "PoolPair",
    "TextGenerator",
    "base_key",
    "build_pool",
    "load_text_generator",
    "make_cheap_pool",
    "mixup_pool",
    "pair_indices",
    "paraphrase_texts",
    "perturb_pool",
    "read_pool",
    "response_distances",
    "semantic_refine",
]
