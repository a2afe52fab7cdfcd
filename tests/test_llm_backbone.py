"""The LLM reward backbone on a tiny random Llama: last-token features (left padding
included) at the last or an earlier block, the embedding cache keyed by backbone and layer,
LoRA, and one-line errors on bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_realtext import tiny_bert, write_length_pairs
from tiny_llama import TINY, random_hf_weights, train_tokenizer, write_tiny_model

from mars_jax.data.text import represent
from mars_jax.errors import MarsError
from mars_jax.models.backbone import open_backbone
from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache
from mars_jax.models.llama import forward, init_cache
from mars_jax.models.llm_features import LlamaFeatures, chat_format, left_pad
from mars_jax.models.lora import lora_reward_model, trainable_mask
from mars_jax.models.pretrained import resolve_backbone
from mars_jax.runner.cli import main

TEXTS = [
    ("What is the capital of France?", "Paris."),
    ("Count the fruit.", "12 apples and 345 pears, " * 6),
    ("Hi", ""),
]


# one compilation per sequence length (eagerly, every op compiles a program of its own)
jitted_forward = jax.jit(forward, static_argnames="config")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random Llama as (HF folder, GGUF file)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def backbone(tiny):
    return LlamaFeatures(tiny[0], max_length=48)


def _alone(backbone: LlamaFeatures, ids: list[int]) -> np.ndarray:
    """A plain forward pass of one unpadded sequence: the final hidden state of its last token."""
    tokens = jnp.asarray([ids], jnp.int32)
    cache = init_cache(backbone.config, 1, len(ids), jnp.float32)
    pad = jnp.zeros(1, jnp.int32)
    hidden, _ = jitted_forward(backbone.params, backbone.config, tokens, cache, 0, pad)
    return np.asarray(hidden[0, -1])


def _cut_after(backbone: LlamaFeatures, block: int, ids: list[int]) -> np.ndarray:
    """A plain forward of one unpadded sequence through the first ``block`` blocks only: the
    final-normed hidden state of its last token."""
    config = dataclasses.replace(backbone.config, num_layers=block)
    params = {
        **backbone.params,
        "layers": jax.tree.map(lambda w: w[:block], backbone.params["layers"]),
    }
    tokens = jnp.asarray([ids], jnp.int32)
    cache = init_cache(config, 1, len(ids), jnp.float32)
    hidden, _ = jitted_forward(params, config, tokens, cache, 0, jnp.zeros(1, jnp.int32))
    return np.asarray(hidden[0, -1])


def test_layer_features_are_a_forward_cut_after_that_block(tiny, backbone):
    texts = [chat_format().joined(p, r) for p, r in TEXTS]
    token_ids = backbone.tokenize(texts)
    first = LlamaFeatures(tiny[0], max_length=48, layer=1)
    assert first.layer == 1 and LlamaFeatures(tiny[0], max_length=48, layer=-2).layer == 1
    found = first.embed_texts(texts, batch_size=4, progress=False)  # left-padded batch
    expected = np.stack([_cut_after(backbone, 1, ids) for ids in token_ids])
    np.testing.assert_allclose(found, expected, atol=2e-5)
    both = backbone.embed_layers(texts, [1, -1], batch_size=2, progress=False)
    assert both.shape == (3, 2, backbone.dim)
    np.testing.assert_allclose(both[:, 0], expected, atol=2e-5)
    np.testing.assert_allclose(both[:, 1], backbone.embed_texts(texts, progress=False), atol=2e-5)
    np.testing.assert_allclose(both[:, 1], [_alone(backbone, ids) for ids in token_ids], atol=2e-5)


def test_layer_is_in_the_cache_key_unless_it_is_the_last(tiny, backbone):
    assert backbone.layer == TINY["num_hidden_layers"] and "layer" not in backbone.identity
    last = LlamaFeatures(tiny[0], max_length=48, layer=TINY["num_hidden_layers"])
    assert last.cache_key == backbone.cache_key == backbone.at_layer(-1).cache_key
    first = LlamaFeatures(tiny[0], max_length=48, layer=1)
    assert first.identity == {**backbone.identity, "layer": 1}
    assert first.cache_key == backbone.at_layer(-2).cache_key != backbone.cache_key
    assert backbone.at_layer(1).params is backbone.params and backbone.layer == 2


@pytest.mark.parametrize("layer", [0, 3, -3])
def test_layer_beyond_the_blocks_is_one_line_error(tiny, layer):
    with pytest.raises(MarsError, match=rf"^data\.layer: {layer} is not a block of this model "):
        open_backbone(str(tiny[0]), layer=layer)


def test_bert_backbone_refuses_a_layer(tmp_path):
    tiny_bert.write_tiny_bert(tmp_path / "bert")
    with pytest.raises(MarsError, match=r"^data\.layer: 1 is for LLM backbones"):
        open_backbone(str(tmp_path / "bert"), layer=1)
    assert open_backbone(str(tmp_path / "bert"), layer=-1).pooling == "mean"


def test_features_are_the_last_token_hidden_state_with_left_padding(backbone):
    texts = [chat_format().joined(p, r) for p, r in TEXTS]
    token_ids = backbone.tokenize(texts)
    assert len({len(ids) for ids in token_ids}) == 3  # the batch is padded
    assert all(ids[-1] == backbone.tokenizer.end_id for ids in token_ids)
    features = backbone.embed_texts(texts, batch_size=4, progress=False)
    expected = np.stack([_alone(backbone, ids) for ids in token_ids])
    np.testing.assert_allclose(features, expected, atol=2e-5)


def test_gguf_and_hf_folder_give_the_same_features(tiny):
    texts = [chat_format().response(r) for _, r in TEXTS]
    from_hf = LlamaFeatures(tiny[0], max_length=32).embed_texts(texts, progress=False)
    from_gguf = open_backbone(str(tiny[1]), max_length=32).embed_texts(texts, progress=False)
    np.testing.assert_allclose(from_hf, from_gguf, atol=2e-5)


def test_long_text_is_cut_from_the_left(backbone):
    text = chat_format().joined("a long prompt " * 40, "the answer")
    ids = backbone.tokenize([text])[0]
    full = backbone.tokenizer.encode(text)
    assert len(ids) == backbone.max_length and ids == full[-backbone.max_length :]


def test_chat_format_and_representations(backbone):
    form = chat_format()
    assert form.joined("P", "R") == (
        "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\nR<|im_end|>"
    )
    seen = []

    def embed(texts):
        seen.extend(texts)
        return backbone.embed_texts(texts, progress=False)

    features = represent("pair", ["P", "P"], ["R", "S"], embed, form)
    assert features.shape == (2, 2 * backbone.dim)
    assert seen == [form.response("R"), form.response("S"), form.prompt("P")]


def test_left_pad_places_rows_at_the_end():
    tokens, pad = left_pad([[5, 6], [7]], 4, rows=3)
    np.testing.assert_array_equal(tokens, [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
    np.testing.assert_array_equal(pad, [2, 3, 3])


def test_cache_is_keyed_by_backbone(tiny, tmp_path, backbone):
    other_root = tmp_path / "other"
    other = LlamaFeatures(write_tiny_model(other_root, seed=1)[0], max_length=48)
    assert other.cache_key != backbone.cache_key
    assert LlamaFeatures(tiny[0], max_length=32).cache_key != backbone.cache_key
    cache = EmbeddingCache(tmp_path / "cache")
    texts = [chat_format().response("Paris.")]
    first, stats = embed_with_cache(backbone, texts, cache, progress=False)
    assert stats.misses == 1
    second, stats = embed_with_cache(other, texts, cache, progress=False)
    assert stats.misses == 1 and not np.allclose(first, second)
    again, stats = embed_with_cache(backbone, texts, EmbeddingCache(cache.folder), progress=False)
    assert stats.hits == 1 and np.array_equal(again, first)
    meta = cache.folder / backbone.cache_key / "meta.json"
    meta.write_text(json.dumps({**backbone.identity, "model": "another"}))
    with pytest.raises(MarsError, match="written by another backbone"):
        embed_with_cache(backbone, texts, EmbeddingCache(cache.folder), progress=False)


def test_interrupted_extraction_resumes_from_the_cache(backbone, tmp_path, monkeypatch):
    texts = [chat_format().response(f"answer number {i}") for i in range(6)]
    forward, calls = backbone._forward, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(backbone, "_forward", interrupted)
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        embed_with_cache(backbone, texts, cache, batch_size=2, save_every=2, progress=False)
    monkeypatch.undo()
    found, stats = embed_with_cache(backbone, texts, EmbeddingCache(tmp_path), progress=False)
    assert stats == (2, 4)
    np.testing.assert_allclose(found, backbone.embed_texts(texts, progress=False), atol=1e-6)


def test_lora_starts_as_the_frozen_model_and_trains_only_adapters_and_head(backbone):
    texts = [chat_format().joined(p, r) for p, r in TEXTS]
    tokens, pad = left_pad(backbone.tokenize(texts), 48, rows=3)
    inputs = {"tokens": jnp.asarray(tokens), "pad": jnp.asarray(pad)}
    model = lora_reward_model(backbone.config, backbone.params, rank=4)
    reward_fn = jax.jit(model.reward_fn)  # as training runs it: one compilation
    params = model.init(jax.random.key(0))
    rewards = reward_fn(params, inputs)
    features = backbone.embed_texts(texts, progress=False)
    expected = features @ np.asarray(params["head"]["w"]) + float(params["head"]["b"])
    np.testing.assert_allclose(rewards, expected, atol=1e-5)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.reward_fn(p, inputs) ** 2)))(params)
    assert all(not np.any(g) for g in jax.tree.leaves(grads["backbone"]))
    assert all(np.any(grads["lora"][name]["b"]) for name in grads["lora"])
    assert np.any(grads["head"]["w"])
    mask = trainable_mask(params)
    assert not any(jax.tree.leaves(mask["backbone"]))
    assert all(jax.tree.leaves(mask["lora"])) and all(jax.tree.leaves(mask["head"]))

    moved = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert not np.allclose(reward_fn(moved, inputs), rewards)


def test_unknown_backbone_name(tmp_path):
    with pytest.raises(MarsError, match="'SmolLM3' is not a known backbone"):
        resolve_backbone("SmolLM3")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(MarsError, match="not a supported model folder"):
        open_backbone(str(tmp_path))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(MarsError, match="not a supported model file"):
        open_backbone(str(text_file))


def test_llm_backbone_refuses_bert_pooling(tiny):
    with pytest.raises(MarsError, match="does not suit an LLM backbone"):
        open_backbone(str(tiny[0]), pooling="mean")
    assert resolve_backbone(str(tiny[0])).kind == "llama"


def test_gguf_without_the_layer_tensors(tmp_path):
    import gguf

    path = tmp_path / "broken.gguf"
    weights = random_hf_weights(train_tokenizer().get_vocab_size())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(TINY["num_hidden_layers"])
    writer.add_embedding_length(TINY["hidden_size"])
    writer.add_feed_forward_length(TINY["intermediate_size"])
    writer.add_head_count(TINY["num_attention_heads"])
    writer.add_layer_norm_rms_eps(TINY["rms_norm_eps"])
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(MarsError, match=r"broken\.gguf: missing tensor blk\.0\.attn_norm\.weight"):
        open_backbone(str(path))


def _run_overrides(root, encoder: str) -> list[str]:
    write_length_pairs(root / "pairs.jsonl")
    return [
        "data.suite=pairs",
        f"data.paths=['{root / 'pairs.jsonl'}']",
        f"data.encoder={encoder}",
        f"data.cache_dir={root / 'cache'}",
        "data.num_base_pairs=40",
        "data.num_heldout_pairs=20",
        "data.heldout_fraction=0.3",
        "data.representation=pair",
        "data.max_length=32",
        "model.hidden_sizes=[]",
        "refine.rounds=1",
        "refine.methods=['none']",
        "eval.num_bootstrap=0",
        "output.progress=false",
        "output.plots=false",
    ]


def test_a_run_with_the_llm_backbone(tiny, tmp_path):
    out = tmp_path / "run"
    assert main(["run", *_run_overrides(tmp_path, str(tiny[1])), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["encoder"]["backbone"] == "llama"
    assert summary["data"]["encoder"]["pooling"] == "last"
    assert summary["data"]["feature_dim"] == 2 * TINY["hidden_size"]


def test_unknown_backbone_is_one_cli_error_line(tmp_path, capsys):
    argv = ["run", *_run_overrides(tmp_path, "SmolLM3"), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'SmolLM3' is not a known backbone" in err[0]


def test_finetuned_bert_refuses_a_layer():
    from mars_jax.runner.config import ConfigError, load_config
    from mars_jax.runner.data import build_data

    overrides = ["data.suite=pairs", "data.paths=['x.jsonl']", "model.finetune_encoder=true"]
    with pytest.raises(ConfigError, match=r"^data\.layer: the fine-tuned BERT encoder"):
        build_data(load_config(None, [*overrides, "data.layer=2"]))
