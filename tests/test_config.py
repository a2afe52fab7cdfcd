"""mars_jax.runner.config: loading, extends, overrides, validation messages, round trips."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mars_jax.data.pool import read_pool
from mars_jax.errors import MarsError
from mars_jax.runner.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_dict,
    describe_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: str | Path | None, overrides: list[str] | None = None) -> str:
    """The message of the ConfigError that loading raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    return str(info.value)


# Defaults and the shipped config files.


def test_defaults_load() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.data.suite == "synthetic"
    assert config.model.hidden_sizes == (64, 64)
    assert config.refine.methods == ("none", "uniform", "uniform_global", "mars")
    assert config.train.learning_rate == 1e-3
    assert config.refine.reset_optimizer is True
    assert config.output.dir == "runs"


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.seed = 1  # type: ignore[misc]


def test_synthetic_toml_equals_defaults() -> None:
    assert load_config(CONFIGS / "synthetic.toml") == load_config(None)


def test_synthetic_toml_spells_out_every_key() -> None:
    with (CONFIGS / "synthetic.toml").open("rb") as handle:
        table = tomllib.load(handle)
    defaults = config_to_dict(load_config(None))
    assert {s: set(keys) for s, keys in table.items()} == {
        s: set(keys) for s, keys in defaults.items()
    }


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_file_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "experiments").glob("*.toml")), ids=lambda p: p.name
)
def test_every_experiment_data_set_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (CONFIGS.parent / "pools").iterdir() if p.is_dir()),
    ids=lambda p: p.name,
)
def test_committed_pools_load_complete(path: Path) -> None:
    contents = read_pool(path)
    assert contents.manifest["complete"]
    assert len(contents.done) == 100  # the base pairs named in pools/README.md


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_variants_override_only_what_differs(path: Path) -> None:
    with path.open("rb") as handle:
        table = tomllib.load(handle)
    if "extends" not in table:
        return
    base = config_to_dict(load_config(path.parent / table.pop("extends")))
    for section, keys in table.items():
        for key, value in keys.items():
            assert base[section][key] != value, f"{path.name}: {section}.{key} repeats the base"


def test_tiny_config() -> None:
    config = load_config(CONFIGS / "tiny.toml")
    assert config.data.num_base_pairs == 120
    assert config.data.num_heldout_pairs == 200
    assert config.data.paraphrases == 3
    assert config.data.feature_dim == 8
    assert config.model.hidden_sizes == (16,)
    assert config.train.batch_size == 32
    assert config.refine.rounds == 2
    assert config.refine.budget == 120
    assert config.eval.num_bootstrap == 100
    assert config.output.plots is True
    assert config.output.progress is False
    assert config.train.learning_rate == Config().train.learning_rate


def test_variant_configs() -> None:
    signed = load_config(CONFIGS / "synthetic-signed.toml")
    assert signed.refine.methods == ("none", "uniform", "west_of_n", "mars", "mars_signed")
    assert signed.refine.temperature == 0.5
    assert signed.refine.budget == 5000
    assert load_config(CONFIGS / "synthetic-noisy.toml").data.label_flip_rate == 0.1
    cumulative = load_config(CONFIGS / "synthetic-cumulative.toml")
    assert cumulative.refine.synthetic_set == "cumulative"


# extends and overrides.


def test_extends_chain_and_precedence(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", "[train]\nseed = 1\nbatch_size = 8\nlearning_rate = 0.5\n")
    write(tmp_path / "sub/mid.toml", 'extends = "../base.toml"\n[train]\nbatch_size = 16\n')
    top = write(
        tmp_path / "sub/top.toml",
        'extends = "mid.toml"\n[train]\nlearning_rate = 0.25\n[refine]\nrounds = 3\n',
    )
    config = load_config(top)
    assert config.train.seed == 1
    assert config.train.batch_size == 16
    assert config.train.learning_rate == 0.25
    assert config.refine.rounds == 3
    assert config.refine.budget == Config().refine.budget

    config = load_config(top, ["train.seed=7", "refine.rounds=4", "refine.rounds=9"])
    assert config.train.seed == 7
    assert config.refine.rounds == 9
    assert config.train.batch_size == 16


def test_extends_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    message = error_of(a)
    assert "cycle" in message
    assert "a.toml" in message
    assert "b.toml" in message


def test_extends_self_cycle(tmp_path: Path) -> None:
    path = write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    assert "cycle" in error_of(path)


def test_extends_missing_base(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", 'extends = "nope.toml"\n')
    message = error_of(path)
    assert "not found" in message
    assert "nope.toml" in message


def test_extends_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "extends = 3\n")
    message = error_of(path)
    assert str(path) in message
    assert "extends" in message


def test_override_values_parse_as_toml() -> None:
    config = load_config(
        None,
        [
            "refine.budget=500",
            'refine.methods=["none","mars"]',
            "train.learning_rate=3e-4",
            "refine.synthetic_set=cumulative",
            "model.hidden_sizes=[]",
            "output.plots=false",
            "output.dir = out/runs",
        ],
    )
    assert config.refine.budget == 500
    assert config.refine.methods == ("none", "mars")
    assert config.train.learning_rate == 3e-4
    assert config.refine.synthetic_set == "cumulative"
    assert config.model.hidden_sizes == ()
    assert config.output.plots is False
    assert config.output.dir == "out/runs"


def test_override_int_for_float_is_converted() -> None:
    config = load_config(None, ["train.grad_clip_norm=2"])
    assert config.train.grad_clip_norm == 2.0
    assert isinstance(config.train.grad_clip_norm, float)


def test_override_without_equals() -> None:
    message = error_of(None, ["refine.budget"])
    assert "override 'refine.budget'" in message
    assert "section.key=value" in message


def test_override_without_section() -> None:
    message = error_of(None, ["budget=3"])
    assert "section.key=value" in message
    assert "refine.budget" in message


def test_override_unknown_key() -> None:
    message = error_of(None, ["refine.budgte=3"])
    assert "override 'refine.budgte=3'" in message
    assert "unknown key 'refine.budgte'" in message
    assert "did you mean 'refine.budget'" in message


def test_override_unknown_section() -> None:
    message = error_of(None, ["trian.seed=3"])
    assert "unknown section 'trian'" in message
    assert "did you mean 'train'" in message


def test_override_key_in_wrong_section() -> None:
    message = error_of(None, ["train.budget=3"])
    assert "did you mean 'refine.budget'" in message


# Validation messages.


def test_unknown_key_in_file_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[train]\nlearning_rat = 0.1\n")
    message = error_of(path)
    assert str(path) in message
    assert "unknown key 'train.learning_rat'" in message
    assert "did you mean 'train.learning_rate'" in message


def test_unknown_key_without_suggestion_lists_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[eval]\nxyzzy = 1\n")
    message = error_of(path)
    assert "unknown key 'eval.xyzzy'" in message
    assert "num_bootstrap" in message


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[optimiser]\nseed = 1\n")
    message = error_of(path)
    assert "unknown section 'optimiser'" in message
    assert "train" in message


def test_top_level_key_outside_section(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "rounds = 3\n")
    message = error_of(path)
    assert str(path) in message
    assert "refine.rounds" in message


@pytest.mark.parametrize(
    ("override", "key", "expected", "got"),
    [
        ('train.batch_size="64"', "train.batch_size", "expected int", 'str "64"'),
        ("train.batch_size=true", "train.batch_size", "expected int", "bool true"),
        ("train.batch_size=64.0", "train.batch_size", "expected int", "float 64.0"),
        ("train.learning_rate=true", "train.learning_rate", "expected float", "bool true"),
        ("output.plots=1", "output.plots", "expected bool", "int 1"),
        ("model.activation=1", "model.activation", "expected str", "int 1"),
        ("model.hidden_sizes=16", "model.hidden_sizes", "expected list of int", "int 16"),
        ("model.hidden_sizes=[16, 1.5]", "model.hidden_sizes[1]", "expected int", "float 1.5"),
        ('refine.methods=["none", 3]', "refine.methods[1]", "expected str", "int 3"),
    ],
)
def test_wrong_type(override: str, key: str, expected: str, got: str) -> None:
    message = error_of(None, [override])
    assert message.startswith(f"override {override!r}: {key}: ")
    assert expected in message
    assert got in message


def test_wrong_type_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[data]\nseed = "zero"\n')
    message = error_of(path)
    assert message.startswith(f"{path}: data.seed: ")
    assert 'expected int, got str "zero"' in message


def test_non_finite_float() -> None:
    message = error_of(None, ["train.learning_rate=nan"])
    assert "train.learning_rate" in message
    assert "finite" in message


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("data.num_base_pairs=0", "data.num_base_pairs", ">= 1"),
        ("data.responses_per_prompt=1", "data.responses_per_prompt", ">= 2"),
        ("data.reward_scale=0", "data.reward_scale", "> 0"),
        ("data.label_flip_rate=0.6", "data.label_flip_rate", ">= 0 and <= 0.5"),
        ("train.warmup_fraction=1", "train.warmup_fraction", ">= 0 and < 1"),
        ("train.label_smoothing=0.5", "train.label_smoothing", ">= 0 and < 0.5"),
        ("train.learning_rate=-1e-3", "train.learning_rate", "> 0"),
        ("refine.budget=-1", "refine.budget", ">= 0"),
        ("refine.ensemble_size=1", "refine.ensemble_size", ">= 2"),
        ("model.hidden_sizes=[16, 0]", "model.hidden_sizes[1]", ">= 1"),
    ],
)
def test_out_of_range(override: str, key: str, allowed: str) -> None:
    message = error_of(None, [override])
    assert f"{key}: must be {allowed}, got " in message
    assert f"override {override!r}" in message


def test_bad_choice_lists_allowed_values() -> None:
    message = error_of(None, ["model.activation=swish"])
    assert "model.activation" in message
    assert 'must be one of "gelu", "relu", "tanh", got "swish"' in message


def test_bad_choice_suggests_close_value() -> None:
    message = error_of(None, ["refine.stop_distance=wasserstien"])
    assert 'did you mean "wasserstein"' in message


def test_bad_list_item_choice() -> None:
    message = error_of(None, ['refine.methods=["none", "west-of-n"]'])
    assert "refine.methods[1]" in message
    assert '"mars_signed"' in message
    assert 'did you mean "west_of_n"' in message


def test_empty_and_duplicate_methods() -> None:
    assert "refine.methods: must not be empty" in error_of(None, ["refine.methods=[]"])
    message = error_of(None, ['refine.methods=["mars", "none", "mars"]'])
    assert 'refine.methods[2]: duplicate item "mars"' in message


def test_empty_output_dir() -> None:
    assert "output.dir: must not be empty" in error_of(None, ['output.dir=""'])


def test_section_not_a_table() -> None:
    message = error_of(None, ["data=1"])
    assert "section.key=value" in message
    d = config_to_dict(Config())
    d["data"] = 1
    with pytest.raises(ConfigError, match=r"src\.json: \[data\] must be a table"):
        config_from_dict(d, source="src.json")


# File errors.


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[train]\nseed = 1\nbatch_size = = 3\n")
    message = error_of(path)
    assert str(path) in message
    assert "line 3" in message


def test_toml_syntax_error_in_base_names_base(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", "[train\n")
    top = write(tmp_path / "top.toml", 'extends = "base.toml"\n')
    message = error_of(top)
    assert "base.toml" in message
    assert "line 1" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = error_of(path)
    assert "not found" in message
    assert str(path) in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = error_of(tmp_path)
    assert "directory" in message
    assert str(tmp_path) in message


def test_config_error_is_mars_error() -> None:
    assert issubclass(ConfigError, MarsError)


# Round trips and hashing.


def test_dict_round_trip_is_exact() -> None:
    for path in [None, *sorted(CONFIGS.glob("*.toml"))]:
        config = load_config(path, ["train.learning_rate=3e-4", "model.hidden_sizes=[]"])
        d = config_to_dict(config)
        assert config_from_dict(d, source="dict") == config
        restored = config_from_dict(json.loads(json.dumps(d)), source="config.json")
        assert restored == config
        assert config_to_dict(restored) == d
        assert config_hash(restored) == config_hash(config)


def test_from_dict_missing_keys_take_defaults() -> None:
    assert config_from_dict({"train": {"seed": 3}}, source="x").train.seed == 3
    assert config_from_dict({}, source="x") == Config()


def test_from_dict_validates_with_source() -> None:
    d = config_to_dict(Config())
    d["refine"]["rounds"] = 0
    with pytest.raises(ConfigError, match=r"^run/config\.json: refine\.rounds: must be >= 1"):
        config_from_dict(d, source="run/config.json")
    with pytest.raises(ConfigError, match=r"^run/config\.json: expected a table"):
        config_from_dict([], source="run/config.json")  # type: ignore[arg-type]


def other_value(key: str, value: Any, meta: dict[str, Any]) -> Any:
    """A valid value for ``key`` that differs from ``value``."""
    if key == "data.suite":
        return None
    if key == "data.paths":
        return [*value, "more-pairs.jsonl"]
    if "choices" in meta:
        return next(c for c in meta["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25 if value + 0.25 <= meta.get("max", value + 0.25) else value - 0.25
    if isinstance(value, str):
        return value + "-other"
    if "item_choices" in meta:
        return [c for c in meta["item_choices"] if c not in value][:1] or value[:-1]
    return value[:-1] if value else [1]


def test_hash_stable_and_sensitive_to_every_key() -> None:
    base = load_config(None)
    digest = config_hash(base)
    assert len(digest) == 16
    assert set(digest) <= set("0123456789abcdef")
    assert config_hash(load_config(CONFIGS / "synthetic.toml")) == digest
    assert config_hash(load_config(None, ["train.grad_clip_norm=1"])) == digest

    d = config_to_dict(base)
    seen = {digest}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(base, section.name)):
            dotted = f"{section.name}.{f.name}"
            new = other_value(dotted, d[section.name][f.name], dict(f.metadata))
            if new is None:
                continue
            changed = json.loads(json.dumps(d))
            changed[section.name][f.name] = new
            variant_hash = config_hash(config_from_dict(changed, source="test"))
            assert variant_hash not in seen, dotted
            seen.add(variant_hash)


def test_pairs_suite_needs_files() -> None:
    with pytest.raises(ConfigError, match=r"data\.paths"):
        load_config(None, ["data.suite=pairs"])
    config = load_config(None, ["data.suite=pairs", "data.paths=['a.jsonl']"])
    assert config.data.paths == ("a.jsonl",)


def test_describe_config_lists_every_key() -> None:
    text = describe_config()
    for section, keys in config_to_dict(Config()).items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"  {key} = " in text
    assert "learning_rate = 0.001  (float; > 0)" in text
    assert '"mars_signed"' in text
    assert "heads in the ensemble-disagreement baseline" in text
