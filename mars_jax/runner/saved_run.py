"""Analyses of a finished run directory: reload its config, data and saved models.

Used by ``mars-jax curvature``: the run's ``config.json`` rebuilds the data (the synthetic
suite is deterministic in its seed) and the model structure, ``models/METHOD/`` holds the
trained parameters, and a pairs file (``.npz``) may replace the run's own subsets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.checkpoint import load_params, read_model_info
from mars_jax.curvature.report import CurvatureSettings, curvature_report
from mars_jax.errors import MarsError
from mars_jax.models.heads import RewardModel, init_members
from mars_jax.refine import RefineData, lowest_margin_pairs_of
from mars_jax.runner.config import Config, config_from_dict
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_trainer
from mars_jax.settings import settings_from
from mars_jax.train import Trainer
from mars_jax.types import PairBatch, PyTree

__all__ = ["SUBSETS", "SavedRun", "load_run", "read_pairs_file", "saved_model_curvature"]

SUBSETS = ("base", "lowest_margin", "heldout", "pool")


@dataclass(frozen=True)
class SavedRun:
    """A run directory reloaded: its config (with overrides), data, model and trainer."""

    path: Path
    config: Config
    data: RefineData
    model: RewardModel
    trainer: Trainer

    def params(self, method: str) -> PyTree:
        """The final member-stacked parameters of ``method``."""
        folder = self.path / "models" / method
        if not folder.is_dir():
            saved = sorted(p.name for p in (self.path / "models").glob("*") if p.is_dir())
            raise MarsError(
                f"{self.path}: no saved model for method {method!r}; saved: {saved or 'none'}"
            )
        members = int(read_model_info(folder)["num_members"])
        like = jax.eval_shape(lambda: init_members(self.model, jax.random.key(0), members))
        return load_params(folder, like)


def load_run(run_dir: Path, overrides: Sequence[str] = ()) -> SavedRun:
    """Reload ``run_dir``; ``overrides`` (e.g. ``curvature.power_iters=50``) apply on top."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise MarsError(f"{run_dir}: not a directory")
    try:
        resolved = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarsError(f"{run_dir}: not a run directory (no config.json)") from None
    except json.JSONDecodeError as error:
        raise MarsError(f"{config_path}: line {error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(resolved, dict) or "config" not in resolved:
        raise MarsError(f"{config_path}: missing field 'config'")
    config = config_from_dict(resolved["config"], source=str(config_path), overrides=overrides)
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    return SavedRun(path=run_dir, config=config, data=data, model=model, trainer=trainer)


def read_pairs_file(path: Path, *, feature_dim: int) -> PairBatch:
    """Pairs of feature vectors from a ``.npz`` file.

    The file holds ``chosen`` and ``rejected`` (``[B, D]`` floats, ``D = feature_dim``)
    and optionally ``weight`` (``[B]``, non-negative).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            fields = {name: arrays[name] for name in arrays.files}
    except FileNotFoundError:
        raise MarsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MarsError(f"{path}: is a directory, expected a .npz file") from None
    except (ValueError, OSError) as error:
        raise MarsError(f"{path}: not a readable .npz file ({error})") from None
    for name in ("chosen", "rejected"):
        if name not in fields:
            raise MarsError(f"{path}: missing field '{name}' (found: {sorted(fields)})")
        array = fields[name]
        if array.ndim != 2 or array.shape[1] != feature_dim:
            raise MarsError(
                f"{path}: field '{name}': expected shape [pairs, {feature_dim}], "
                f"got {list(array.shape)}"
            )
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
            raise MarsError(f"{path}: field '{name}': expected finite floats")
    if fields["chosen"].shape != fields["rejected"].shape:
        raise MarsError(f"{path}: fields 'chosen' and 'rejected' differ in shape")
    count = fields["chosen"].shape[0]
    weight = fields.get("weight", np.ones(count, np.float32))
    if weight.shape != (count,) or not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise MarsError(f"{path}: field 'weight': expected [{count}] finite values >= 0")
    return PairBatch(
        jnp.asarray(fields["chosen"], jnp.float32),
        jnp.asarray(fields["rejected"], jnp.float32),
        jnp.asarray(weight, jnp.float32),
    )


def saved_model_curvature(
    run: SavedRun, method: str, *, subset: str | None, pairs_file: Path | None
) -> dict[str, Any]:
    """Curvature report of a saved model on one of its run's subsets or on a pairs file."""
    params = run.params(method)
    if pairs_file is not None:
        name = Path(pairs_file).name
        pairs = read_pairs_file(pairs_file, feature_dim=int(run.data.base.chosen.shape[-1]))
    else:
        name = subset or "base"
        pairs = _subset(run, name, params)
    report = curvature_report(
        run.trainer.mean_reward,
        params,
        {name: pairs},
        jax.random.key(run.config.train.seed),
        settings=settings_from(CurvatureSettings, run.config.curvature),
        loss=run.trainer.loss,
    )
    return {"method": method, "run": str(run.path), **report.to_json()}


def _subset(run: SavedRun, name: str, params: PyTree) -> PairBatch:
    data = run.data
    if name == "base":
        return data.base
    if name == "heldout":
        return data.heldout
    if name == "pool":
        pool = data.pool
        return PairBatch(pool.chosen, pool.rejected, jnp.ones(pool.source.shape[0], jnp.float32))
    if name == "lowest_margin":
        base = data.base
        reward = run.trainer.mean_reward
        margins = reward(params, base.chosen) - reward(params, base.rejected)
        return lowest_margin_pairs_of(base, margins, k=run.config.curvature.lowest_k)
    raise MarsError(f"unknown subset {name!r}; expected one of {', '.join(SUBSETS)}")
