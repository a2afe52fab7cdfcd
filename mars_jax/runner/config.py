"""Run configuration: a validated schema, TOML files with ``extends``, and CLI overrides.

The schema is a tree of frozen dataclasses whose field defaults are the built-in default
configuration (the synthetic suite), so ``load_config(None)`` returns the defaults. The
sections of the library's settings (``train``, ``refine``, ``eval``, ``curvature``,
``parallel``) are generated from its settings types (:class:`~mars_jax.train.FitSettings`,
:class:`~mars_jax.refine.RefineSettings`, ...), so each default, help text and range is
written once; :func:`mars_jax.settings.settings_from` turns a section back into them. A config
file may name a base file with a top-level ``extends = "base.toml"`` (relative to the file);
its values override the base's key by key. CLI overrides ``section.key=value`` come last; the
value is parsed as a TOML value, or taken as a bare string when it does not parse.

Every value is checked as it is read (known section and key, type, range, choices), so a bad
config fails with one :class:`ConfigError` naming the source (file path, or the override) and
the dotted key, before any work starts. Constraints live in each field's ``metadata`` (see
:mod:`mars_jax.settings`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mars_jax.allocation import METHODS
from mars_jax.augment.builder import AugmentSettings
from mars_jax.augment.paraphrase import ParaphraseSettings
from mars_jax.curvature.report import CurvatureSettings
from mars_jax.data.selection import TextDataSettings
from mars_jax.data.synthetic import REGIMES
from mars_jax.errors import MarsError
from mars_jax.evaluation import EvalSettings
from mars_jax.losses import LossSettings
from mars_jax.parallel import MeshSettings
from mars_jax.refine import RefineSettings
from mars_jax.settings import config_key, setting
from mars_jax.train import FitSettings, OptimizerSettings

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "CurvatureConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OutputConfig",
    "ParallelConfig",
    "RefineConfig",
    "TrainConfig",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "describe_config",
    "load_config",
]


class ConfigError(MarsError):
    """An invalid config file, dictionary or override; the message names the source and key."""


_opt = setting


def _section(name: str, doc: str, *parts: type | tuple[str, type, Any]) -> type:
    """A config section: a frozen dataclass whose keys are the fields of settings types.

    Each part is a settings dataclass (its fields become keys, named by
    :func:`mars_jax.settings.config_key`, with their defaults, docs and constraints) or a
    ``(name, type, field)`` key of the section's own.
    """
    fields: list[tuple[str, type, Any]] = []
    for part in parts:
        if isinstance(part, tuple):
            fields.append(part)
            continue
        hints = typing.get_type_hints(part)
        for item in dataclasses.fields(part):
            if "doc" not in item.metadata:  # a nested settings type: given as its own part
                continue
            spec = field(default=item.default, metadata=item.metadata)
            fields.append((config_key(item), hints[item.name], spec))
    section = dataclasses.make_dataclass(name, fields, frozen=True)
    section.__module__, section.__doc__ = __name__, doc
    return section


DataConfig = _section(
    "DataConfig",
    "The preference data: the built-in synthetic suite, or files of real pairs.",
    (
        "suite",
        str,
        _opt(
            "synthetic",
            "which data: the built-in synthetic suite, or preference files (data.paths)",
            choices=("synthetic", "pairs"),
        ),
    ),
    TextDataSettings,
    ("responses_per_prompt", int, _opt(8, "candidate responses generated per prompt", min=2)),
    ("feature_dim", int, _opt(16, "dimension of the feature vectors", min=1)),
    (
        "nonlinear_weight",
        float,
        _opt(1.0, "weight of the nonlinear part of the true reward", min=0),
    ),
    (
        "reward_scale",
        float,
        _opt(
            3.0,
            "std of the true reward (sets how noisy BT-sampled labels are)",
            min_exclusive=0,
        ),
    ),
    (
        "regime",
        str,
        _opt(
            "informative",
            "synthetic labels: 'informative' (the true preference, kept by the variants; see "
            "data.label_noise and data.hard_fraction) or 'noisy' (Bradley-Terry samples, "
            "inherited by the variants: low-margin pairs are coin flips)",
            choices=REGIMES,
        ),
    ),
    (
        "label_noise",
        float,
        _opt(
            0.0,
            "informative regime only: chance that a base label is flipped, whatever its margin",
            min=0,
            max=0.5,
        ),
    ),
    (
        "hard_fraction",
        float,
        _opt(
            0.2,
            "informative regime only: share of base pairs made hard (small true margin, "
            "correct label)",
            min=0,
            max=1,
        ),
    ),
    (
        "hard_margin",
        float,
        _opt(0.5, "informative regime: hard pairs' true margins lie in [0, this)", min_exclusive=0),
    ),
)


@dataclass(frozen=True)
class ModelConfig:
    """The reward model: an MLP head on the features, or on an encoder trained with it."""

    hidden_sizes: tuple[int, ...] = _opt(
        (64, 64), "widths of the hidden layers (empty: a linear head)", item_min=1
    )
    activation: str = _opt("gelu", "activation function", choices=("gelu", "relu", "tanh"))
    finetune_encoder: bool = _opt(
        False, "train data.encoder with the head (suite 'pairs', a pool directory)"
    )


TrainConfig = _section(
    "TrainConfig",
    "Optimisation and the reward-model loss.",
    ("seed", int, _opt(0, "seed of initialisation and batch order", min=0)),
    FitSettings,
    OptimizerSettings,
    LossSettings,
)
RefineConfig = _section(
    "RefineConfig",
    "Self-refinement: which augmentation methods run, and for how long.",
    (
        "methods",
        tuple[str, ...],
        _opt(
            ("none", "uniform", "uniform_global", "mars"),
            "augmentation methods compared in one run",
            non_empty=True,
            unique=True,
            item_choices=METHODS,
        ),
    ),
    RefineSettings,
)
EvalConfig = _section("EvalConfig", "Evaluation on the held-out pairs.", EvalSettings)
CurvatureConfig = _section(
    "CurvatureConfig",
    "Per-round curvature of the Bradley-Terry loss (off by default: it costs matvecs).",
    ("enabled", bool, _opt(False, "write a curvature report per method and round")),
    (
        "lowest_k",
        int,
        _opt(128, "size of the lowest-|margin| subset of base pairs", min=1),
    ),
    CurvatureSettings,
)


AugmentConfig = _section(
    "AugmentConfig",
    "The paraphrase pool built by ``mars-jax augment`` with a small language model.",
    (
        "generator",
        str,
        _opt("smollm2", "text generator: smollm2 or a folder in HF layout", non_empty=True),
    ),
    (
        "dtype",
        str,
        _opt("float32", "generator weights dtype", choices=("float32", "bfloat16")),
    ),
    ("batch_size", int, _opt(32, "sequences per generation batch", min=1)),
    AugmentSettings,
    ParaphraseSettings,
)


@dataclass(frozen=True)
class OutputConfig:
    """Where and how results are written."""

    dir: str = _opt("runs", "parent folder of run directories", non_empty=True)
    plots: bool = _opt(True, "write plots into the run directory")
    progress: bool = _opt(True, "show progress bars")


ParallelConfig = _section(
    "ParallelConfig",
    "Sharding over a device mesh (see mars_jax.parallel and the README).",
    MeshSettings,
)


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass(frozen=True)
class _Key:
    """Schema of one config key."""

    hint: Any
    meta: Mapping[str, Any]
    default: Any


def _schema() -> dict[str, tuple[type, dict[str, _Key]]]:
    """Section name -> (section dataclass, key name -> schema), in declaration order."""
    sections: dict[str, tuple[type, dict[str, _Key]]] = {}
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        keys = {f.name: _Key(hints[f.name], f.metadata, f.default) for f in dataclasses.fields(cls)}
        sections[section.name] = (cls, keys)
    return sections


_SCHEMA = _schema()

# Raw values read so far: section -> key -> validated value.
_Values = dict[str, dict[str, Any]]


def _literal(value: Any) -> str:
    """A value written as TOML (for messages, the help text and the default config file)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    return repr(value)


def _describe(value: Any) -> str:
    """A found value with its type, for 'expected X, got Y' messages."""
    if isinstance(value, dict):
        return "a table"
    kind = "list" if isinstance(value, list | tuple) else type(value).__name__
    return f"{kind} {_literal(value)}"


def _type_name(hint: Any) -> str:
    """The user-facing name of a schema type."""
    if typing.get_origin(hint) is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    return hint.__name__


def _check_scalar(hint: Any, raw: Any, where: str) -> Any:
    """``raw`` checked against a scalar type (int accepted for float; bool is not an int)."""
    if hint is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {_literal(raw)}")
        return value
    if hint is bool:
        ok = isinstance(raw, bool)
    elif hint is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    else:
        ok = isinstance(raw, hint)
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_describe(raw)}")
    return raw


def _bounds_text(rules: Mapping[str, Any]) -> str:
    """The range in ``rules`` as text, e.g. ``>= 0 and < 1``; empty when unbounded."""
    ops = (("min", ">="), ("min_exclusive", ">"), ("max", "<="), ("max_exclusive", "<"))
    return " and ".join(f"{op} {rules[name]}" for name, op in ops if name in rules)


def _check_rules(rules: Mapping[str, Any], value: Any, where: str) -> None:
    """Range and choice constraints of one scalar value."""
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(_literal(c) for c in choices)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {_literal(close[0])}?" if close else ""
        raise ConfigError(f"{where}: must be one of {allowed}, got {_literal(value)}{hint}")
    below_min = ("min" in rules and value < rules["min"]) or (
        "min_exclusive" in rules and value <= rules["min_exclusive"]
    )
    above_max = ("max" in rules and value > rules["max"]) or (
        "max_exclusive" in rules and value >= rules["max_exclusive"]
    )
    if below_min or above_max:
        raise ConfigError(f"{where}: must be {_bounds_text(rules)}, got {_literal(value)}")


def _item_rules(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``item_*`` constraints of a list field, without the prefix."""
    return {name[len("item_") :]: rule for name, rule in meta.items() if name.startswith("item_")}


def _check_value(key: _Key, raw: Any, where: str) -> Any:
    """``raw`` validated against one key's type and constraints, converted to its field type."""
    if typing.get_origin(key.hint) is not tuple:
        value = _check_scalar(key.hint, raw, where)
        if key.meta.get("non_empty") and value == "":
            raise ConfigError(f"{where}: must not be empty")
        _check_rules(key.meta, value, where)
        return value
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where}: expected {_type_name(key.hint)}, got {_describe(raw)}")
    item_hint = typing.get_args(key.hint)[0]
    items = tuple(_check_scalar(item_hint, item, f"{where}[{i}]") for i, item in enumerate(raw))
    if key.meta.get("non_empty") and not items:
        raise ConfigError(f"{where}: must not be empty")
    if key.meta.get("unique"):
        for i, item in enumerate(items):
            if item in items[:i]:
                raise ConfigError(f"{where}[{i}]: duplicate item {_literal(item)}")
    rules = _item_rules(key.meta)
    for i, item in enumerate(items):
        _check_rules(rules, item, f"{where}[{i}]")
    return items


def _keys_like(name: str) -> list[str]:
    """Dotted keys, in any section, named like ``name`` (the closest key name)."""
    names = sorted({key for _, keys in _SCHEMA.values() for key in keys})
    close = difflib.get_close_matches(name, names, n=1)
    return [f"{section}.{k}" for section, (_, keys) in _SCHEMA.items() for k in close if k in keys]


def _did_you_mean(candidates: Sequence[str]) -> str:
    """``did you mean 'a' or 'b'?``"""
    return "did you mean " + " or ".join(repr(c) for c in candidates) + "?"


def _unknown_section(source: str, name: str, *, table: bool = True) -> ConfigError:
    """Error for a section name not in the schema; ``table=False``: a key outside a section."""
    close = difflib.get_close_matches(name, list(_SCHEMA), n=1)
    if close:
        hint = _did_you_mean(close)
    elif not table and _keys_like(name):
        hint = "keys belong in a section: " + _did_you_mean(_keys_like(name))
    else:
        hint = "valid sections: " + ", ".join(_SCHEMA)
    return ConfigError(f"{source}: unknown section {name!r}; {hint}")


def _unknown_key(source: str, section: str, name: str) -> ConfigError:
    """Error for a key not in its section, with a suggestion."""
    keys = _SCHEMA[section][1]
    close = difflib.get_close_matches(name, list(keys), n=1)
    if close:
        hint = _did_you_mean([f"{section}.{close[0]}"])
    elif _keys_like(name):
        hint = _did_you_mean(_keys_like(name))
    else:
        hint = f"valid keys of [{section}]: " + ", ".join(keys)
    return ConfigError(f"{source}: unknown key '{section}.{name}'; {hint}")


def _set_value(values: _Values, source: str, section: str, name: str, raw: Any) -> None:
    """Validate one value and record it, overriding any earlier value of the key."""
    if section not in _SCHEMA:
        raise _unknown_section(source, section)
    keys = _SCHEMA[section][1]
    if name not in keys:
        raise _unknown_key(source, section, name)
    value = _check_value(keys[name], raw, f"{source}: {section}.{name}")
    values.setdefault(section, {})[name] = value


def _apply_table(values: _Values, source: str, table: Mapping[str, Any]) -> None:
    """Validate and record every value of a ``{section: {key: value}}`` table."""
    for section, entries in table.items():
        if section not in _SCHEMA:
            raise _unknown_section(source, section, table=isinstance(entries, Mapping))
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table, got {_describe(entries)}")
        for name, raw in entries.items():
            _set_value(values, source, section, name, raw)


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; every failure is a ConfigError naming the path."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a file: {path}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc


def _load_file(values: _Values, path: Path, chain: tuple[Path, ...]) -> None:
    """Apply ``path``'s values over its ``extends`` base (recursively) into ``values``."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: 'extends' cycle: {cycle}")
    table = _read_toml(path)
    base = table.pop("extends", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: extends: expected a file path, got {_describe(base)}")
        _load_file(values, path.parent / base, (*chain, resolved))
    _apply_table(values, str(path), table)


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); value is TOML or else a bare string."""
    source = f"override {text!r}"
    dotted, sep, raw = text.partition("=")
    parts = dotted.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        expected = f"{source}: expected section.key=value"
        named = _keys_like(dotted.strip()) if sep else []
        raise ConfigError(f"{expected}; {_did_you_mean(named)}" if named else expected)
    raw = raw.strip()
    try:
        document = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        document = {}
    value = document["value"] if len(document) == 1 else raw
    return parts[0], parts[1], value


def _build(values: _Values) -> Config:
    """The Config holding ``values``, defaults elsewhere, after the cross-key checks."""
    config = Config(**{name: cls(**values.get(name, {})) for name, (cls, _) in _SCHEMA.items()})
    if config.data.suite == "pairs" and not config.data.paths:
        raise ConfigError("data.paths: suite 'pairs' needs at least one preference file")
    return config


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """The validated config from ``path`` (``None``: the defaults) with ``overrides`` on top.

    Args:
      path: a TOML config file, possibly ``extends``-ing another one.
      overrides: ``section.key=value`` strings, applied in order after the file.

    Raises:
      ConfigError: naming the file (and line, for TOML syntax) or override, and the key.
    """
    values: _Values = {}
    if path is not None:
        _load_file(values, Path(path), ())
    _apply_overrides(values, overrides)
    return _build(values)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """A JSON-serialisable ``{section: {key: value}}`` dict (lists for tuples)."""
    return {
        name: {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(getattr(config, name)).items()
        }
        for name in _SCHEMA
    }


def config_from_dict(d: Mapping[str, Any], *, source: str, overrides: Sequence[str] = ()) -> Config:
    """The validated config from a ``config_to_dict``-style dict; missing keys take defaults.

    ``source`` names where ``d`` came from (e.g. a file path) in error messages;
    ``overrides`` (``section.key=value``) apply on top, as in :func:`load_config`.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a table of sections, got {_describe(d)}")
    values: _Values = {}
    _apply_table(values, source, d)
    _apply_overrides(values, overrides)
    return _build(values)


def _apply_overrides(values: _Values, overrides: Sequence[str]) -> None:
    for text in overrides:
        section, name, value = _parse_override(text)
        _set_value(values, f"override {text!r}", section, name, value)


def config_hash(config: Config) -> str:
    """The first 16 hex digits of the sha256 of the config's canonical JSON."""
    canonical = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _constraint_text(meta: Mapping[str, Any]) -> str:
    """The constraints of one key as text, e.g. ``>= 0; no duplicates``."""
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(_literal(c) for c in meta["choices"]))
    if _bounds_text(meta):
        parts.append(_bounds_text(meta))
    if meta.get("non_empty"):
        parts.append("non-empty")
    if meta.get("unique"):
        parts.append("no duplicates")
    items = _item_rules(meta)
    if "choices" in items:
        parts.append("items one of " + ", ".join(_literal(c) for c in items["choices"]))
    if _bounds_text(items):
        parts.append(f"items {_bounds_text(items)}")
    return "; ".join(parts)


def describe_config() -> str:
    """Every key with its type, default, constraints and help string, section by section."""
    lines: list[str] = []
    for name, (cls, keys) in _SCHEMA.items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]  {(cls.__doc__ or '').strip()}")
        for key_name, key in keys.items():
            constraints = _constraint_text(key.meta)
            kind = _type_name(key.hint) + (f"; {constraints}" if constraints else "")
            lines.append(f"  {key_name} = {_literal(key.default)}  ({kind})")
            lines.append(f"      {key.meta['doc']}")
    return "\n".join(lines)
