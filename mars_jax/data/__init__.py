"""Preference data: readers, the pair table, the synthetic suite, pools of synthetic pairs.

- :mod:`~mars_jax.data.formats`: readers of preference files (TRL, HH-RLHF,
  summarize-from-feedback, ranked records) into a :class:`~mars_jax.data.table.PairTable`.
- :mod:`~mars_jax.data.table`: the pair table; cleaning, splitting by prompt, sampling.
- :mod:`~mars_jax.data.selection`: which pairs a run uses (:class:`TextDataSettings`).
- :mod:`~mars_jax.data.synthetic`: the built-in synthetic preference suite.
- :mod:`~mars_jax.data.pool`: the on-disk format of paraphrase pools and its reader.
- :mod:`~mars_jax.data.cheap_pools`: perturbation and mixup pools on feature vectors.
- :mod:`~mars_jax.data.text`, :mod:`~mars_jax.data.tokens`: real pairs as embedded features or
  token ids (they load a text encoder; import them directly).
"""

from mars_jax.data.cheap_pools import POOL_GENERATORS, make_cheap_pool
from mars_jax.data.formats import FORMATS, ReadResult, detect_format, read_pairs
from mars_jax.data.pool import PoolContents, PoolPair, base_key, pair_indices, read_pool
from mars_jax.data.selection import BaseSelection, TextDataSettings, select_base_pairs
from mars_jax.data.synthetic import SyntheticSuite, make_synthetic_suite, true_reward
from mars_jax.data.table import PairTable, clean_pairs, sample_pairs, split_by_group

__all__ = [
    "FORMATS",
    "POOL_GENERATORS",
    "BaseSelection",
    "PairTable",
    "PoolContents",
    "PoolPair",
    "ReadResult",
    "SyntheticSuite",
    "TextDataSettings",
    "base_key",
    "clean_pairs",
    "detect_format",
    "make_cheap_pool",
    "make_synthetic_suite",
    "pair_indices",
    "read_pairs",
    "read_pool",
    "sample_pairs",
    "select_base_pairs",
    "split_by_group",
    "true_reward",
]
