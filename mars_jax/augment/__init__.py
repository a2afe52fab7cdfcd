"""Paraphrase pools made by a small language model, built resumably on disk.

- :mod:`~mars_jax.augment.generator`: the :class:`TextGenerator` interface and its factory.
- :mod:`~mars_jax.augment.paraphrase`: paraphrase requests, filters, retries.
- :mod:`~mars_jax.augment.semantic`: the v2 semantic pre-step.
- :mod:`~mars_jax.augment.builder`: the resumable pool builder.

The on-disk pool format and its reader are :mod:`mars_jax.data.pool`; the cheap generators on
feature vectors (perturbation, mixup) are :mod:`mars_jax.data.cheap_pools`; the command
``mars-jax augment`` is :mod:`mars_jax.runner.augment`.
"""

from mars_jax.augment.builder import AugmentSettings, BuildReport, build_pool
from mars_jax.augment.generator import TextGenerator, load_text_generator
from mars_jax.augment.paraphrase import ParaphraseSettings, paraphrase_texts
from mars_jax.augment.semantic import response_distances, semantic_refine

__all__ = [
    "AugmentSettings",
    "BuildReport",
    "ParaphraseSettings",
    "TextGenerator",
    "build_pool",
    "load_text_generator",
    "paraphrase_texts",
    "response_distances",
    "semantic_refine",
]
