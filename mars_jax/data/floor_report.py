"""The accuracy floors of a run's held-out pairs, as the run summary records them.

A thin layer over the kernels of :mod:`mars_jax.floors`: which pairs, which lengths and which
features each floor sees. Protocol (the same for every data set):

- ``length``: "the longer response wins" on the held-out pairs, lengths in characters of the
  response text (ties count half). Real text only.
- ``linear_probe``: an L2-regularised logistic regression on the feature differences the
  reward model sees, fit on the base (training) pairs, its L2 strength chosen by a 3-fold
  cross-validation over the base pairs grouped by prompt, and scored once on the held-out
  pairs: the same train/test split as the reward model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mars_jax.floors import length_floor, linear_probe_floor

__all__ = ["PROBE_PROTOCOL", "beaten_floors", "probe_floor_info", "text_floors"]

PROBE_PROTOCOL = (
    "logistic regression on feature differences, fit on the base pairs (L2 by 3-fold CV "
    "grouped by prompt), scored on the held-out pairs"
)


def probe_floor_info(
    base_chosen: np.ndarray,
    base_rejected: np.ndarray,
    held_chosen: np.ndarray,
    held_rejected: np.ndarray,
    base_groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """The linear-probe floor: fit on the base pairs ``[N, D]``, scored on held-out ``[H, D]``."""
    num_base, num_held = len(base_chosen), len(held_chosen)
    groups = np.arange(num_base) if base_groups is None else np.asarray(base_groups)
    # Held-out pairs get group ids of their own; they never enter the inner CV.
    all_groups = np.concatenate([groups, groups.max(initial=0) + 1 + np.arange(num_held)])
    result = linear_probe_floor(
        np.concatenate([np.asarray(base_chosen), np.asarray(held_chosen)]),
        np.concatenate([np.asarray(base_rejected), np.asarray(held_rejected)]),
        groups=all_groups,
        train_mask=np.arange(num_base + num_held) < num_base,
    )
    return {**result.to_json(), "protocol": PROBE_PROTOCOL}


def text_floors(
    held_chosen_texts: Sequence[str],
    held_rejected_texts: Sequence[str],
    features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    base_groups: np.ndarray,
) -> dict[str, Any]:
    """Length and linear-probe floors of real text pairs.

    Args:
      held_chosen_texts: ``[H]`` held-out chosen responses (without the prompt).
      held_rejected_texts: ``[H]`` held-out rejected responses.
      features: base chosen, base rejected, held chosen, held rejected model inputs
        (``[N, D]``, ``[N, D]``, ``[H, D]``, ``[H, D]``).
      base_groups: ``[N]`` prompt (group) id of each base pair.
    """
    length = length_floor(
        [len(text) for text in held_chosen_texts], [len(text) for text in held_rejected_texts]
    )
    return {
        "length": {**length.to_json(), "protocol": "longer response (characters) wins, held-out"},
        "linear_probe": probe_floor_info(*features, base_groups=base_groups),
    }


def beaten_floors(floors: dict[str, Any], methods: dict[str, float]) -> dict[str, Any]:
    """Which methods beat every floor, and a one-line warning when none does.

    Args:
      floors: floor name -> a dict with ``accuracy``.
      methods: method -> final held-out accuracy.
    """
    best_floor = max(floors, key=lambda name: floors[name]["accuracy"])
    best = floors[best_floor]["accuracy"]
    above = [method for method, accuracy in methods.items() if accuracy > best]
    report: dict[str, Any] = {"highest_floor": best_floor, "methods_above_all_floors": above}
    if not above:
        report["warning"] = (
            f"no method beats the {best_floor} floor ({best:.4f}): compare methods with care"
        )
    return report
