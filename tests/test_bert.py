"""The Flax BERT encoder against an independent numpy BERT, on a tiny random model written in
the Hugging Face layout; loading errors; pooling and the attention mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from mars_jax.errors import MarsError
from mars_jax.models.bert import BertConfig, load_bert, masked_attention, pool

TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL_TOKENS + [f"w{i}" for i in range(TINY_CONFIG["vocab_size"] - len(SPECIAL_TOKENS))]


def tiny_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with the names and shapes of a Hugging Face ``BertModel``."""
    rng = np.random.default_rng(seed)
    width, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def linear(name: str, fan_out: int, fan_in: int) -> dict[str, np.ndarray]:
        return {f"{name}.weight": normal(fan_out, fan_in), f"{name}.bias": normal(fan_out)}

    def norm(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": 1 + normal(width, scale=0.1), f"{name}.bias": normal(width)}

    tensors = {
        "embeddings.word_embeddings.weight": normal(config["vocab_size"], width),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], width),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], width),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"])[None],
        **norm("embeddings.LayerNorm"),
        **linear("pooler.dense", width, width),
    }
    for index in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{index}"
        for part in ("query", "key", "value"):
            tensors |= linear(f"{layer}.attention.self.{part}", width, width)
        tensors |= linear(f"{layer}.attention.output.dense", width, width)
        tensors |= norm(f"{layer}.attention.output.LayerNorm")
        tensors |= linear(f"{layer}.intermediate.dense", inner, width)
        tensors |= linear(f"{layer}.output.dense", width, inner)
        tensors |= norm(f"{layer}.output.LayerNorm")
    return tensors


def write_tiny_bert(
    folder: Path,
    *,
    prefix: str = "",
    seed: int = 0,
    config: dict | None = None,
    tensors: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Writes ``config.json``, ``model.safetensors`` and ``vocab.txt``; returns the tensors
    (names without ``prefix``)."""
    config = TINY_CONFIG if config is None else config
    tensors = tiny_tensors(config, seed) if tensors is None else tensors
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    save_file(
        {prefix + name: array for name, array in tensors.items()}, folder / "model.safetensors"
    )
    return tensors


def numpy_bert(
    tensors: dict[str, np.ndarray], config: dict, input_ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """BERT in float64 numpy, straight from the Hugging Face tensors: hidden ``[B, T, D]``."""

    def weight(name: str) -> np.ndarray:
        return tensors[name].astype(np.float64)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ weight(f"{name}.weight").T + weight(f"{name}.bias")

    def layer_norm(x: np.ndarray, name: str) -> np.ndarray:
        centred = x - x.mean(-1, keepdims=True)
        variance = (centred**2).mean(-1, keepdims=True)
        normed = centred / np.sqrt(variance + config["layer_norm_eps"])
        return normed * weight(f"{name}.weight") + weight(f"{name}.bias")

    erf = np.vectorize(math.erf)
    batch, num_tokens = input_ids.shape
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    hidden = (
        weight("embeddings.word_embeddings.weight")[input_ids]
        + weight("embeddings.position_embeddings.weight")[:num_tokens]
        + weight("embeddings.token_type_embeddings.weight")[0]
    )
    hidden = layer_norm(hidden, "embeddings.LayerNorm")
    for index in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{index}"
        q, k, v = (
            linear(hidden, f"{layer}.attention.self.{part}").reshape(
                batch, num_tokens, heads, head_dim
            )
            for part in ("query", "key", "value")
        )
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = scores - 1e9 * (1 - mask[:, None, None, :])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, num_tokens, -1)
        attended = linear(context, f"{layer}.attention.output.dense")
        hidden = layer_norm(hidden + attended, f"{layer}.attention.output.LayerNorm")
        inner = linear(hidden, f"{layer}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        hidden = layer_norm(
            hidden + linear(inner, f"{layer}.output.dense"), f"{layer}.output.LayerNorm"
        )
    return hidden


def padded_batch(lengths: list[int], num_tokens: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, TINY_CONFIG["vocab_size"], size=(len(lengths), num_tokens))
    mask = (np.arange(num_tokens)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, input_ids, 0).astype(np.int32), mask


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_forward_matches_numpy_bert(tmp_path, prefix):
    tensors = write_tiny_bert(tmp_path, prefix=prefix)
    encoder, config = load_bert(tmp_path)
    assert config == BertConfig.from_dict(TINY_CONFIG)
    input_ids, mask = padded_batch([9, 5, 1], num_tokens=9)
    hidden = np.asarray(encoder(jnp.asarray(input_ids), jnp.asarray(mask)))
    expected = numpy_bert(tensors, TINY_CONFIG, input_ids, mask)
    assert hidden.shape == (3, 9, TINY_CONFIG["hidden_size"])
    np.testing.assert_allclose(hidden, expected, atol=2e-5, rtol=1e-5)


def test_linear_weights_are_transposed(tmp_path):
    tensors = write_tiny_bert(tmp_path)
    encoder, _ = load_bert(tmp_path)
    kernel = np.asarray(encoder.layers[1].intermediate.kernel[...])
    np.testing.assert_array_equal(kernel, tensors["encoder.layer.1.intermediate.dense.weight"].T)


def test_missing_tensor_names_file_and_tensor(tmp_path):
    tensors = tiny_tensors(TINY_CONFIG)
    del tensors["encoder.layer.1.output.dense.bias"]
    write_tiny_bert(tmp_path, prefix="bert.", tensors=tensors)
    with pytest.raises(MarsError, match=r"model\.safetensors.*'bert\.encoder\.layer\.1\.output"):
        load_bert(tmp_path)


def test_wrong_shape_names_file_tensor_and_shapes(tmp_path):
    tensors = tiny_tensors(TINY_CONFIG)
    tensors["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
    write_tiny_bert(tmp_path, tensors=tensors)
    message = r"model\.safetensors.*'encoder\.layer\.0\.attention\.self\.key\.weight'.*\(32, 16\)"
    with pytest.raises(MarsError, match=message):
        load_bert(tmp_path)


def test_missing_or_unreadable_weights_file(tmp_path):
    write_tiny_bert(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MarsError, match=r"model\.safetensors"):
        load_bert(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MarsError, match=r"model\.safetensors: not found"):
        load_bert(tmp_path)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_attention_heads": "four"}, "num_attention_heads"),
        ({"num_attention_heads": 5}, "hidden_size"),
        ({"layer_norm_eps": -1.0}, "layer_norm_eps"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, change, key):
    config = {k: v for k, v in (TINY_CONFIG | change).items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MarsError, match=rf"config\.json.*'{key}'"):
        BertConfig.from_json(tmp_path / "config.json")


def test_invalid_json_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "hidden_size": 32,\n}')
    with pytest.raises(MarsError, match=r"config\.json: line 3"):
        load_bert(tmp_path)


def test_too_many_tokens_names_the_config_key(tmp_path):
    write_tiny_bert(tmp_path, config=TINY_CONFIG | {"max_position_embeddings": 8})
    encoder, _ = load_bert(tmp_path)
    input_ids, mask = padded_batch([9], num_tokens=9)
    with pytest.raises(MarsError, match=r"9 tokens exceed.*'max_position_embeddings'"):
        encoder(jnp.asarray(input_ids), jnp.asarray(mask))


def test_padding_does_not_change_pooled_vectors(tmp_path):
    write_tiny_bert(tmp_path)
    encoder, _ = load_bert(tmp_path)
    input_ids, mask = padded_batch([6], num_tokens=6)
    padded_ids = np.concatenate([input_ids, np.full((1, 10), 42, np.int32)], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((1, 10), np.int32)], axis=1)
    short = encoder(jnp.asarray(input_ids), jnp.asarray(mask))
    long = encoder(jnp.asarray(padded_ids), jnp.asarray(padded_mask))
    for mode in ("mean", "cls"):
        np.testing.assert_allclose(
            pool(long, jnp.asarray(padded_mask), mode=mode),
            pool(short, jnp.asarray(mask), mode=mode),
            atol=1e-5,
        )
    np.testing.assert_allclose(pool(long, jnp.asarray(padded_mask)), short.mean(axis=1), atol=1e-5)
    np.testing.assert_array_equal(pool(long, jnp.asarray(padded_mask), mode="cls"), long[:, 0])
    with pytest.raises(MarsError, match="pooling"):
        pool(long, jnp.asarray(padded_mask), mode="max")


def test_attention_ignores_masked_keys_and_survives_an_empty_row():
    rng = np.random.default_rng(0)
    query, key, value = (jnp.asarray(rng.standard_normal((2, 3, 4, 8))) for _ in range(3))
    mask = jnp.asarray([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = masked_attention(query, key, value, mask)
    kept = masked_attention(query[:1], key[:1, :, :2], value[:1, :, :2], mask[:1, :2])
    np.testing.assert_allclose(out[:1], kept, atol=1e-6)
    np.testing.assert_allclose(
        out[1], jnp.broadcast_to(value[1].mean(1, keepdims=True), (3, 4, 8)), atol=1e-6
    )
