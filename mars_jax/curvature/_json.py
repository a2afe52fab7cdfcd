"""Conversion of small result arrays to plain Python values for ``json.dumps``."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_builtin"]


def to_builtin(value: Any) -> Any:
    """A scalar array as a Python ``float``/``int``/``bool``, a larger one as nested lists."""
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
