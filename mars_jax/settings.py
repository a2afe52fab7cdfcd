"""Settings fields that carry their own documentation and constraints.

Every tunable of the library lives in one frozen dataclass next to the code that uses it
(:class:`~mars_jax.losses.LossSettings`, :class:`~mars_jax.train.OptimizerSettings`, ...).
Each field is declared with :func:`setting`: its default, a help string and its constraints.
The runner's config sections are generated from these types, so a default, a help text and a
range are written once. Constraint names (checked by :mod:`mars_jax.runner.config`):

- ``min`` / ``max``: inclusive bounds; ``min_exclusive`` / ``max_exclusive``: strict bounds;
- ``choices``: allowed values;
- ``non_empty``: the string or list must not be empty; ``unique``: list without duplicates;
- ``item_<name>``: constraint ``<name>`` applied to every item of a list;
- ``key``: the config key when it differs from the field's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["config_key", "setting", "settings_from"]


def setting(default: Any, doc: str, **constraints: Any) -> Any:
    """A dataclass field with a default, a help string and range/choice constraints."""
    return dataclasses.field(default=default, metadata={"doc": doc, **constraints})


def settings_from(cls: type, source: Any, **extra: Any) -> Any:
    """An instance of the settings dataclass ``cls`` from the same-named attributes of ``source``.

    ``extra`` gives fields that ``source`` does not have (or overrides them).
    """
    values = {
        f.name: getattr(source, config_key(f))
        for f in dataclasses.fields(cls)
        if f.name not in extra and hasattr(source, config_key(f))
    }
    return cls(**values, **extra)


def config_key(field: dataclasses.Field) -> str:
    """The config key of a settings field: its ``key`` metadata, else its name."""
    return field.metadata.get("key", field.name)
