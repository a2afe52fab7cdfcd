"""Cheap pool generators on feature vectors, behind one registry the runner picks from by name.

Each generator maps the base pairs' features to a :class:`~mars_jax.types.Pool` in the
paraphrase scheme of method.md §2 (``p`` variants each of prompt, chosen and rejected;
pair ``(c, r)`` uses prompt variant ``(c + r) mod p``; ``p²`` pairs per base pair, the
original not included):

- ``"perturb"``: Gaussian perturbations of the features
  (:func:`mars_jax.data.synthetic.make_pool_variations`; the synthetic suite's own pool is
  this generator run on the suite's features).
- ``"mixup"``: convex mixes with *other* base pairs. Chosen variant ``c`` of pair ``i`` is
  ``x⁺ᵢ + λ (x⁺ₘ - x⁺ᵢ)`` with a random other pair ``m`` and ``λ ~ U(0, mixup_scale)``
  (likewise rejected variants from other pairs' rejected features), and prompt variant
  ``k`` shifts both responses by ``λ (x̄ₘ - x̄ᵢ)``, where ``x̄`` is a pair's midpoint
  ``(x⁺ + x⁻) / 2``. With ``mixup_scale < 0.5`` a variant stays closer to its own pair than
  to the partner, so inheriting the base pair's label is plausible.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.data.synthetic import make_pool_variations
from mars_jax.errors import MarsError
from mars_jax.types import Pool

__all__ = ["POOL_GENERATORS", "make_cheap_pool", "mixup_pool", "perturb_pool"]


def perturb_pool(
    rng: int | np.random.Generator,
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    paraphrases: int,
    perturbation_scale: float,
    prompt_shift_scale: float,
    mixup_scale: float,
) -> Pool:
    """Gaussian perturbations of ``[N, D]`` features (``mixup_scale`` is unused)."""
    del mixup_scale
    return make_pool_variations(
        rng,
        chosen,
        rejected,
        paraphrases=paraphrases,
        perturbation_scale=perturbation_scale,
        prompt_shift_scale=prompt_shift_scale,
    )


def _partners(gen: np.random.Generator, num_pairs: int, shape: tuple[int, int]) -> np.ndarray:
    """Random indices of *other* base pairs, ``shape`` = ``[N, p]`` (self when ``N == 1``)."""
    if num_pairs == 1:
        return np.zeros(shape, np.int64)
    draws = gen.integers(0, num_pairs - 1, size=shape)
    return draws + (draws >= np.arange(num_pairs)[:, None])


def mixup_pool(
    rng: int | np.random.Generator,
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    paraphrases: int,
    perturbation_scale: float,
    prompt_shift_scale: float,
    mixup_scale: float,
) -> Pool:
    """Convex mixes of ``[N, D]`` features with other base pairs (see the module docstring).

    ``perturbation_scale`` and ``prompt_shift_scale`` are unused.

    Returns:
      ``Pool`` with ``chosen, rejected [N p², D]`` float32, ``source``, ``offsets``.
    """
    del perturbation_scale, prompt_shift_scale
    chosen_np = np.asarray(chosen, np.float64)
    rejected_np = np.asarray(rejected, np.float64)
    if chosen_np.ndim != 2 or chosen_np.shape != rejected_np.shape:
        raise MarsError(
            f"chosen and rejected must both be [N, D]; got {chosen_np.shape} and "
            f"{rejected_np.shape}"
        )
    if paraphrases < 1 or not 0.0 <= mixup_scale <= 1.0:
        raise MarsError(
            f"need paraphrases >= 1 and mixup_scale in [0, 1]; got {paraphrases}, {mixup_scale}"
        )
    gen = np.random.default_rng(rng)
    num_pairs, feature_dim = chosen_np.shape
    shape = (num_pairs, paraphrases)
    middle = (chosen_np + rejected_np) / 2

    def mix(features: np.ndarray, partner: np.ndarray) -> np.ndarray:
        weight = mixup_scale * gen.random(shape)[..., None]
        return weight * (features[partner] - features[:, None, :])

    chosen_var = chosen_np[:, None, :] + mix(chosen_np, _partners(gen, num_pairs, shape))
    rejected_var = rejected_np[:, None, :] + mix(rejected_np, _partners(gen, num_pairs, shape))
    shifts = mix(middle, _partners(gen, num_pairs, shape))
    index = np.arange(paraphrases)
    shift = shifts[:, (index[:, None] + index[None, :]) % paraphrases]
    per_pair = paraphrases * paraphrases
    return Pool(
        chosen=jnp.asarray((chosen_var[:, :, None, :] + shift).reshape(-1, feature_dim), "float32"),
        rejected=jnp.asarray(
            (rejected_var[:, None, :, :] + shift).reshape(-1, feature_dim), "float32"
        ),
        source=jnp.asarray(np.repeat(np.arange(num_pairs), per_pair), jnp.int32),
        offsets=jnp.asarray(np.arange(num_pairs + 1) * per_pair, jnp.int32),
    )


PoolGenerator = Callable[..., Pool]
POOL_GENERATORS: dict[str, PoolGenerator] = {"perturb": perturb_pool, "mixup": mixup_pool}
"""Name -> generator ``(rng, chosen [N, D], rejected [N, D], **scales) -> Pool``."""


def make_cheap_pool(
    name: str,
    rng: int | np.random.Generator,
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    paraphrases: int,
    perturbation_scale: float,
    prompt_shift_scale: float,
    mixup_scale: float,
) -> Pool:
    """The pool of the registered generator ``name`` on base features ``[N, D]``."""
    if name not in POOL_GENERATORS:
        raise MarsError(f"unknown pool generator {name!r}; expected one of {list(POOL_GENERATORS)}")
    return POOL_GENERATORS[name](
        rng,
        chosen,
        rejected,
        paraphrases=paraphrases,
        perturbation_scale=perturbation_scale,
        prompt_shift_scale=prompt_shift_scale,
        mixup_scale=mixup_scale,
    )
