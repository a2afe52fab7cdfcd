"""``mars-jax augment`` end to end with a fake generator, and runs that use its pool, or the
mixup generator, on a tiny text fixture (a tiny random BERT)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.augment import generator as generators
from mars_jax.checkpoint import load_params
from mars_jax.data.pool import base_key, read_pool
from mars_jax.data.selection import select_base_pairs
from mars_jax.models.finetune import finetune_reward_model
from mars_jax.models.heads import init_members
from mars_jax.models.tokenize import load_tokenizer, tokenize_pairs
from mars_jax.runner.cli import main
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data, text_settings

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _load("augment_fakes")
text_data = _load("test_text_data")

AUGMENT = [
    "augment.prompt_paraphrases=2",
    "augment.chosen_paraphrases=2",
    "augment.rejected_paraphrases=2",
    "augment.chunk_size=16",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    text_data.tiny_bert.write_tiny_bert(root / "bert")
    text_data.write_pairs(root / "pairs.jsonl")
    overrides = [
        "data.suite=pairs",
        f"data.paths=['{root / 'pairs.jsonl'}']",
        f"data.encoder={root / 'bert'}",
        f"data.cache_dir={root / 'cache'}",
        "data.num_base_pairs=30",
        "data.num_heldout_pairs=20",
        "data.heldout_fraction=0.25",
        "data.paraphrases=2",
        "data.max_length=32",
        "model.hidden_sizes=[8]",
        "train.batch_size=16",
        "refine.budget=40",
        "refine.rounds=1",
        "refine.methods=['none','mars']",
        "eval.num_bootstrap=20",
        "output.progress=false",
        "output.plots=false",
        *AUGMENT,
    ]
    return root, overrides


@pytest.fixture
def fake_generator(monkeypatch):
    made = []

    def load(name_or_path, **options):
        made.append((name_or_path, options))
        return fakes.FakeGenerator()

    monkeypatch.setattr(generators, "load_text_generator", load)
    return made


@pytest.fixture(scope="module")
def pool_dir(setup):
    root, overrides = setup
    out = root / "pool"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generators, "load_text_generator", lambda *a, **k: fakes.FakeGenerator())
        assert main(["augment", *overrides, "--out", str(out), "--quiet"]) == 0
    return out


def test_augment_builds_the_pool_of_the_runs_base_pairs(setup, pool_dir, capsys, fake_generator):
    _root, overrides = setup
    config = load_config(None, overrides)
    base = select_base_pairs(text_settings(config)).base
    pool = read_pool(pool_dir)
    keys = {base_key(*t) for t in zip(base.prompt, base.chosen, base.rejected, strict=True)}
    assert pool.done == keys and len(keys) == 30
    assert pool.manifest["counts"]["pool_pairs"] == 30 * 4
    assert pool.manifest["selection"]["num_base_pairs"] == 30
    assert pool.manifest["sources"][0]["name"] == "pairs.jsonl"
    assert pool.manifest["settings"]["chunk_size"] == 16

    assert main(["augment", *overrides, "--out", str(pool_dir)]) == 0  # resume: nothing to do
    assert "30/30 base pairs (30 done before, 0 now), 120 pool pairs" in capsys.readouterr().out
    options = {"dtype": "float32", "batch_size": 32, "max_prompt_tokens": 600}
    assert fake_generator == [("smollm2", options)]
    assert main(["augment", *overrides, "augment.seed=1", "--out", str(pool_dir)]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and len(err.strip().splitlines()) == 1


def test_augment_pairs_files_and_bad_arguments(setup, tmp_path, capsys, fake_generator):
    root, overrides = setup
    out = tmp_path / "all"
    argv = ["augment", *AUGMENT, "--pairs", str(root / "pairs.jsonl"), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    assert read_pool(out).manifest["counts"]["base_pairs"] == 80  # 82 read, 2 cleaned away
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["augment", *overrides, "--out", str(busy)]) == 2
    assert "not empty and not a pool" in capsys.readouterr().err
    assert main(["augment", "--out", str(tmp_path / "synthetic")]) == 2
    assert "data.suite" in capsys.readouterr().err
    assert not (tmp_path / "synthetic").exists()


def test_augment_with_the_semantic_step_uses_the_runs_encoder(setup, tmp_path, fake_generator):
    _, overrides = setup
    out = tmp_path / "semantic"
    argv = ["augment", *overrides, "augment.semantic=true", "augment.max_source_tokens=200"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    manifest = read_pool(out).manifest
    assert fake_generator[0][1]["max_prompt_tokens"] == 1.25 * (3 * 200 + 96)
    assert 0 < manifest["semantic_threshold"] < 2
    stats = manifest["counts"]["stats"]
    assert 0 < stats["semantic_below_threshold"] < 30
    assert stats["semantic_rewritten"] == stats["semantic_below_threshold"]
    assert stats["semantic_kept"] <= stats["semantic_rewritten"]


def test_run_uses_the_pool_directory(setup, pool_dir):
    root, overrides = setup
    run = root / "run-pool"
    assert main(["run", *overrides, f"data.pool={pool_dir}", "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]
    assert data["pool"] == str(pool_dir) and data["pool_dir"] == str(pool_dir)
    assert data["base_pairs_with_pool_pairs"] == 30 and data["num_pool_pairs"] == 120
    assert data["pool_generator"] == {"name": "fake", "bad": False}
    assert set(summary["methods"]) == {"none", "mars"}


def test_pool_pairs_follow_flipped_labels(setup, pool_dir):
    _, overrides = setup
    clean, _ = build_data(load_config(None, [*overrides, f"data.pool={pool_dir}"]))
    noisy, info = build_data(
        load_config(None, [*overrides, f"data.pool={pool_dir}", "data.label_flip_rate=0.2"])
    )
    assert info["num_flipped"] == 6
    np.testing.assert_array_equal(np.asarray(clean.pool.offsets), np.asarray(noisy.pool.offsets))
    flipped = np.all(
        np.abs(np.asarray(noisy.base.chosen) - np.asarray(clean.base.rejected)) < 1e-4, axis=1
    )
    rows = np.isin(np.asarray(noisy.pool.source), np.flatnonzero(flipped))
    assert flipped.sum() == 6 and rows.sum() == 6 * 4
    # standardisation uses the base pairs of each run: both runs have the same base features
    # up to the swap, so the same mean and std
    swapped = np.asarray(noisy.pool.chosen)[rows] - np.asarray(clean.pool.rejected)[rows]
    kept = np.asarray(noisy.pool.chosen)[~rows] - np.asarray(clean.pool.chosen)[~rows]
    np.testing.assert_allclose(swapped, 0, atol=1e-4)
    np.testing.assert_allclose(kept, 0, atol=1e-4)


def test_pool_for_other_data_or_a_bad_path_fails_before_output(setup, tmp_path, capsys):
    _root, overrides = setup
    other = tmp_path / "other"
    table = fakes.make_table(4)
    from mars_jax.augment.builder import build_pool

    build_pool(table, fakes.FakeGenerator(), other, fakes.SETTINGS, progress=False)
    out = tmp_path / "run"
    assert main(["run", *overrides, f"data.pool={other}", "--out", str(out)]) == 2
    assert "no pool pairs for any of the 30 base pairs" in capsys.readouterr().err
    assert main(["run", *overrides, f"data.pool={tmp_path / 'nope'}", "--out", str(out)]) == 2
    assert "data.pool: " in capsys.readouterr().err
    assert not out.exists()


def test_mixup_pool_in_text_and_synthetic_runs(setup):
    _, overrides = setup
    data, info = build_data(load_config(None, [*overrides, "data.pool=mixup"]))
    assert info["pool"] == "mixup" and data.pool.chosen.shape == (30 * 4, 32)
    perturb, _ = build_data(load_config(None, overrides))
    assert not np.allclose(np.asarray(perturb.pool.chosen), np.asarray(data.pool.chosen))

    synthetic, synthetic_info = build_data(load_config(TINY, ["data.pool=mixup"]))
    assert synthetic_info["pool"] == "mixup" and synthetic.pool.chosen.shape == (120 * 9, 8)
    assert 0 <= synthetic_info["pool_label_disagreement"] <= 1
    _default, default_info = build_data(load_config(TINY))
    assert default_info["pool"] == "perturb"
    assert default_info["pool_label_disagreement"] != synthetic_info["pool_label_disagreement"]


def test_mixup_run_through_the_cli(setup):
    root, overrides = setup
    run = root / "run-mixup"
    assert main(["run", *overrides, "data.pool=mixup", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["data"]["pool"] == "mixup"


def test_synthetic_suite_refuses_a_pool_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", TINY, f"data.pool={tmp_path}", "--out", str(out)]) == 2
    assert "needs data.suite = 'pairs'" in capsys.readouterr().err
    assert not out.exists()


def test_finetune_run_trains_the_encoder_on_the_pool(setup, pool_dir):
    root, overrides = setup
    run = root / "run-finetune"
    argv = [*overrides, f"data.pool={pool_dir}", "model.finetune_encoder=true"]
    assert main(["run", *argv, "train.learning_rate=1e-2", "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["encoder"]["trained"] and summary["data"]["num_pool_pairs"] == 120
    model = finetune_reward_model(root / "bert", hidden_sizes=(8,))
    start = init_members(model, jax.random.key(0), 1)
    trained = load_params(run / "models" / "mars", start)
    data, _ = build_data(load_config(None, argv))

    @jax.jit
    def pair_margins(params, pairs):
        return model.reward_fn(params, pairs.chosen) - model.reward_fn(params, pairs.rejected)

    # The reported held-out accuracy is that of the saved model (numpy on its margins; a
    # pair within 1e-5 of a tie may round either way).
    trained_one = jax.tree.map(lambda leaf: leaf[0], trained)
    margins = np.asarray(pair_margins(trained_one, data.heldout))
    slack = (np.sum(np.abs(margins) < 1e-5) + 1e-9) / margins.size + 1e-6
    final = summary["methods"]["mars"]["final"]
    assert final["accuracy"] == pytest.approx(np.mean(margins > 0), abs=slack)
    # Every encoder leaf that the reward depends on (a non-zero gradient on the base pairs)
    # must have moved; Adam moves each such weight by about the learning rate per step.
    first = jax.tree.map(lambda leaf: leaf[0], start)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(pair_margins(p, data.base))))(first)
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree.leaves_with_path(start["encoder"])]
    # Relative to the largest: an attention key bias gets only rounding noise (softmax is
    # invariant to a shift that is the same for every key).
    sizes = [float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["encoder"])]
    reached = [size > 1e-4 * max(sizes) for size in sizes]
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(start["encoder"]), jax.tree.leaves(trained["encoder"]), strict=True
        )
    ]
    assert sum(reached) >= len(reached) // 2  # the gradient reaches the encoder's layers
    still = [name for name, r, m in zip(names, reached, moved, strict=True) if r and m < 1e-6]
    assert still == [], f"encoder leaves with a gradient that did not move: {still}"


def test_token_data_matches_the_tokenizer_and_follows_flipped_labels(setup, pool_dir):
    root, overrides = setup
    argv = [*overrides, f"data.pool={pool_dir}", "model.finetune_encoder=true"]
    clean, info = build_data(load_config(None, argv))
    noisy, _ = build_data(load_config(None, [*argv, "data.label_flip_rate=0.2"]))
    assert clean.base.chosen["input_ids"].shape == (30, 32)
    assert clean.pool.chosen["attention_mask"].shape == (120, 32)
    assert clean.heldout.rejected["input_ids"].shape == (20, 32)
    assert info["base_pairs_with_pool_pairs"] == 30
    base = select_base_pairs(text_settings(load_config(None, argv))).base
    expected = tokenize_pairs(
        load_tokenizer(root / "bert"), base.prompt[:3], base.chosen[:3], max_length=32
    )
    width = expected["input_ids"].shape[1]
    np.testing.assert_array_equal(clean.base.chosen["input_ids"][:3, :width], expected["input_ids"])
    assert not np.asarray(clean.base.chosen["attention_mask"][:3, width:]).any()
    flipped = np.all(clean.base.chosen["input_ids"] == noisy.base.rejected["input_ids"], axis=1)
    rows = np.isin(np.asarray(noisy.pool.source), np.flatnonzero(flipped))
    assert flipped.sum() == 6 and rows.sum() == 6 * 4
    np.testing.assert_array_equal(
        noisy.pool.chosen["input_ids"][rows], clean.pool.rejected["input_ids"][rows]
    )


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        (None, [], "data.pool: 'perturb' works on frozen features"),
        (TINY, None, "model.finetune_encoder: needs data.suite = 'pairs'"),
    ],
)
def test_finetune_needs_text_and_a_pool_directory(setup, tmp_path, capsys, config, extra, message):
    _, overrides = setup
    argv = [*(overrides if extra is not None else [config]), "model.finetune_encoder=true"]
    assert main(["run", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
