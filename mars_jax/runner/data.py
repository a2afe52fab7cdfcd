"""The run's data under a config: the synthetic suite, or real pairs read, embedded, augmented.

The runner's only bridge from the ``[data]`` section to :mod:`mars_jax.data`, whose builders
take settings objects (:class:`~mars_jax.data.selection.TextDataSettings`) or plain arguments.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.data.cheap_pools import make_cheap_pool
from mars_jax.data.floor_report import probe_floor_info
from mars_jax.data.selection import TextDataSettings
from mars_jax.data.synthetic import SyntheticSuite, make_synthetic_suite, true_reward
from mars_jax.refine import RefineData
from mars_jax.runner.config import Config, ConfigError
from mars_jax.settings import settings_from
from mars_jax.types import PairBatch, Pool

__all__ = ["build_data", "text_settings"]


def text_settings(config: Config) -> TextDataSettings:
    """The real-data settings of ``config.data``."""
    return settings_from(TextDataSettings, config.data)


def build_data(config: Config) -> tuple[RefineData, dict[str, Any]]:
    """The run's base pairs, pool and held-out pairs, and a description of them."""
    if config.data.suite == "pairs" and config.model.finetune_encoder:
        from mars_jax.data.tokens import build_token_data

        if config.data.layer != -1:
            raise ConfigError("data.layer: the fine-tuned BERT encoder reads its last layer (-1)")

        return build_token_data(text_settings(config))
    if config.data.suite == "pairs":
        from mars_jax.data.text import build_text_data

        return build_text_data(text_settings(config), progress=config.output.progress)
    if config.model.finetune_encoder:
        raise ConfigError("model.finetune_encoder: needs data.suite = 'pairs' (text to encode)")
    if config.data.validation_fraction:
        raise ConfigError("data.validation_fraction: needs data.suite = 'pairs' (split by prompt)")
    data = config.data
    suite = make_synthetic_suite(
        seed=data.seed,
        num_base_pairs=data.num_base_pairs,
        num_heldout_pairs=data.num_heldout_pairs,
        responses_per_prompt=data.responses_per_prompt,
        feature_dim=data.feature_dim,
        paraphrases=data.paraphrases,
        perturbation_scale=data.perturbation_scale,
        prompt_shift_scale=data.prompt_shift_scale,
        nonlinear_weight=data.nonlinear_weight,
        reward_scale=data.reward_scale,
        label_flip_rate=data.label_flip_rate,
        regime=data.regime,
        **_regime_options(data),
    )

    def pairs(chosen: jax.Array, rejected: jax.Array) -> PairBatch:
        return PairBatch(chosen, rejected, jnp.ones(chosen.shape[0], jnp.float32))

    pool, info = _synthetic_pool(config, suite)
    refine_data = RefineData(
        base=pairs(suite.base.chosen, suite.base.rejected),
        pool=pool,
        heldout=pairs(suite.heldout.chosen, suite.heldout.rejected),
    )
    floors = {
        "linear_probe": probe_floor_info(
            *(np.asarray(a) for a in (*refine_data.base[:2], *refine_data.heldout[:2]))
        )
    }
    return refine_data, {"suite": data.suite, "pool": data.pool, **_plain(info), "floors": floors}


def _synthetic_pool(config: Config, suite: SyntheticSuite) -> tuple[Pool, dict[str, Any]]:
    """The suite's own pool ("perturb"), or a "mixup" pool with its true-label statistics."""
    data = config.data
    if data.pool == "perturb":
        return suite.pool, suite.info
    if data.pool != "mixup":
        raise ConfigError(f"data.pool: {data.pool!r} needs data.suite = 'pairs'")
    pool = make_cheap_pool(
        "mixup",
        data.seed,
        suite.base.chosen,
        suite.base.rejected,
        paraphrases=data.paraphrases,
        perturbation_scale=data.perturbation_scale,
        prompt_shift_scale=data.prompt_shift_scale,
        mixup_scale=data.mixup_scale,
    )
    margin = true_reward(suite.reward_params, pool.chosen) - true_reward(
        suite.reward_params, pool.rejected
    )
    wrong = np.asarray(margin) < 0
    base_wrong = np.asarray(suite.base.true_margin)[np.asarray(pool.source)] < 0
    info = {
        **suite.info,
        "num_pool_pairs": int(wrong.size),
        "pool_label_disagreement": float(wrong.mean()),
        "pool_drift_fraction": float(np.mean(wrong != base_wrong)),
    }
    return pool, info


def _regime_options(data: Any) -> dict[str, float]:
    """The informative regime's options (the noisy regime has none)."""
    if data.regime != "informative":
        return {}
    return {
        "label_noise": data.label_noise,
        "hard_fraction": data.hard_fraction,
        "hard_margin": data.hard_margin,
    }


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a dict that may hold numpy or jax scalars."""
    return {key: np.asarray(value).tolist() for key, value in info.items()}
