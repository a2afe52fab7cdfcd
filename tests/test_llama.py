"""The JAX Llama model, its loaders and tokenizer, against a numpy reference and each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny_llama import write_tiny_model

from mars_jax.errors import MarsError
from mars_jax.models.llama import forward, forward_logits, init_cache, output_logits
from mars_jax.models.llama_tokenizer import DEFAULT_SYSTEM_PROMPT, ChatTokenizer, chat_text
from mars_jax.models.llama_weights import (
    load_gguf,
    load_hf_folder,
    load_llama,
    save_hf_folder,
    to_device,
)

# one compilation per call shape (eagerly, every op, and the scan at every constant start,
# compiles a program of its own)
jitted_forward = jax.jit(forward, static_argnames="config")
jitted_logits = jax.jit(forward_logits, static_argnames="config")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(hf folder, gguf path) of the tiny random model."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def reference_logits(weights: dict[str, np.ndarray], config: dict, ids: list[int]) -> np.ndarray:
    """float64 numpy Llama forward of one unpadded sequence, from Hugging Face tensors."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    heads, kv, hd = config["heads"], config["kv"], config["hd"]
    eps, steps = config["eps"], len(ids)
    angles = np.outer(np.arange(steps), 1.0 / config["theta"] ** (np.arange(0, hd, 2) / hd))
    cos, sin = np.cos(np.tile(angles, 2)), np.sin(np.tile(angles, 2))

    def rope(z):
        return z * cos + np.concatenate([-z[..., hd // 2 :], z[..., : hd // 2]], -1) * sin

    def norm(x, gain):
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * gain

    x = w["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((steps, steps), -np.inf), 1)
    for i in range(config["layers"]):
        p = {k.split(f"layers.{i}.")[1][:-7]: v for k, v in w.items() if f"layers.{i}." in k}
        h = norm(x, p["input_layernorm"])
        q = rope((h @ p["self_attn.q_proj"].T).reshape(steps, heads, hd).transpose(1, 0, 2))
        k = rope((h @ p["self_attn.k_proj"].T).reshape(steps, kv, hd).transpose(1, 0, 2))
        v = (h @ p["self_attn.v_proj"].T).reshape(steps, kv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, heads // kv, 0), np.repeat(v, heads // kv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        o = (s / s.sum(-1, keepdims=True)) @ v
        x = x + o.transpose(1, 0, 2).reshape(steps, heads * hd) @ p["self_attn.o_proj"].T
        h = norm(x, p["post_attention_layernorm"])
        g = h @ p["mlp.gate_proj"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ p["mlp.up_proj"].T)) @ p["mlp.down_proj"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return norm(x, w["model.norm.weight"]) @ head.T


def _ref_config(config) -> dict:
    return {
        "heads": config.num_heads,
        "kv": config.num_kv_heads,
        "hd": config.head_dim,
        "eps": config.rms_eps,
        "theta": config.rope_theta,
        "layers": config.num_layers,
    }


def test_gguf_and_hf_loaders_agree(tiny):
    hf, gguf_path = tiny
    hf_config, hf_params = load_hf_folder(hf)
    gguf_config, gguf_params = load_gguf(gguf_path)
    assert gguf_config == hf_config
    assert not hf_config.tie_embeddings and hf_config.num_kv_heads == 2
    assert jax.tree.structure(hf_params) == jax.tree.structure(gguf_params)
    for a, b in zip(jax.tree.leaves(hf_params), jax.tree.leaves(gguf_params), strict=True):
        np.testing.assert_array_equal(a, b)
    tokens = jnp.array([[1, 5, 9, 40, 2, 7]])
    np.testing.assert_allclose(
        jitted_logits(to_device(hf_params), hf_config, tokens),
        jitted_logits(to_device(gguf_params), gguf_config, tokens),
        atol=1e-5,
    )


def test_forward_matches_numpy_reference_with_left_padding(tiny):
    hf, _ = tiny
    config, params = load_llama(hf)
    weights = load_file(str(hf / "model.safetensors"))
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, config.vocab_size, n).tolist() for n in (9, 5, 1)]
    width = 9
    tokens = np.zeros((3, width), np.int32)
    pad = np.array([width - len(s) for s in seqs], np.int32)
    for row, seq in enumerate(seqs):
        tokens[row, pad[row] :] = seq
    logits = np.asarray(jitted_logits(to_device(params), config, tokens, jnp.asarray(pad)))
    for row, seq in enumerate(seqs):
        expected = reference_logits(weights, _ref_config(config), seq)
        np.testing.assert_allclose(logits[row, pad[row] :], expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_forward_is_close_to_float32(tiny):
    config, params = load_llama(tiny[0])
    tokens = jnp.array([[1, 5, 9, 40, 2, 7, 11, 13]])
    full = jitted_logits(to_device(params), config, tokens)
    half = jitted_logits(to_device(params, "bfloat16"), config, tokens)
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(half, full, atol=0.1 * float(jnp.abs(full).max()))
    assert jnp.mean(jnp.argmax(half, -1) == jnp.argmax(full, -1)) >= 0.75


def test_forward_matches_transformers_pytorch(tiny):
    reason = "the PyTorch cross-check needs torch (pip install -e '.[bench]')"
    torch = pytest.importorskip("torch", reason=reason)
    transformers = pytest.importorskip("transformers", reason=reason)
    hf, _ = tiny
    config, params = load_llama(hf)
    ids = [[3, 17, 99, 120, 5, 42, 7]]
    model = transformers.LlamaForCausalLM.from_pretrained(str(hf)).eval()
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.numpy()
    actual = jitted_logits(to_device(params), config, jnp.array(ids))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_cached_decoding_matches_full_forward(tiny):
    hf, _ = tiny
    config, params = load_llama(hf)
    params = to_device(params)
    tokens = jnp.array([[0, 0, 4, 8, 15], [16, 23, 42, 4, 8]], jnp.int32)
    pad = jnp.array([2, 0], jnp.int32)
    cache = init_cache(config, 2, 9, jnp.float32)
    hidden, cache = jitted_forward(params, config, tokens, cache, 0, pad)
    step_logits = [output_logits(params, config, hidden[:, -1])]
    sequence = tokens
    for step in range(4):
        nxt = jnp.argmax(step_logits[-1], -1).astype(jnp.int32)
        sequence = jnp.concatenate([sequence, nxt[:, None]], axis=1)
        hidden, cache = jitted_forward(params, config, nxt[:, None], cache, 5 + step, pad)
        step_logits.append(output_logits(params, config, hidden[:, 0]))
    full = jitted_logits(params, config, sequence, pad)
    np.testing.assert_allclose(jnp.stack(step_logits, 1), full[:, 4:], atol=1e-5)


def test_save_hf_folder_round_trips(tiny, tmp_path):
    _, gguf_path = tiny
    config, params = load_gguf(gguf_path)
    again_config, again = load_hf_folder(save_hf_folder(tmp_path / "copy", config, params))
    assert again_config == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tokenizers_from_gguf_and_json_agree_and_round_trip(tiny):
    hf, gguf_path = tiny
    from_json, from_gguf = ChatTokenizer.load(hf), ChatTokenizer.load(gguf_path)
    assert from_json.end_id == from_gguf.end_id == 2
    for text in [chat_text("What is 1234 the capital?"), "  spaces\n\ttabs é ü 99", "Paris."]:
        ids = from_gguf.encode(text)
        assert ids == from_json.encode(text)
        assert from_gguf.tokenizer.decode(ids, skip_special_tokens=False) == text
    digits = from_gguf.encode("2026")
    assert [from_gguf.tokenizer.id_to_token(i) for i in digits] == ["2", "0", "2", "6"]


def test_chat_template_text():
    assert chat_text("Hi?", "Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chat_text("Hi?").startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>")


def test_long_prompts_lose_their_start(tiny):
    tokenizer = ChatTokenizer.load(tiny[0])
    prompt = "The cat sat on the mat. " * 20 + "Rewrite this."
    full = tokenizer.encode_chat(prompt, "S")
    cut = tokenizer.encode_chat(prompt, "S", max_tokens=45)
    assert len(full) > 45 and len(cut) == 45
    head = tokenizer.encode(chat_text("", "S").split("<|im_end|>\n<|im_start|>assistant")[0])
    assert cut[: len(head)] == head
    assert cut[-12:] == full[-12:]
    assert tokenizer.decode(cut).rstrip().endswith("Rewrite this.\nassistant")
    with pytest.raises(MarsError, match="max_prompt_tokens"):
        tokenizer.encode_chat(prompt, "S", max_tokens=5)


def test_loader_errors_name_the_path(tmp_path, tiny):
    with pytest.raises(MarsError, match="nowhere"):
        load_llama(tmp_path / "nowhere")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(MarsError, match=r"junk\.gguf"):
        load_llama(junk)
    with pytest.raises(MarsError, match=r"junk\.gguf"):
        ChatTokenizer.load(junk)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text((tiny[0] / "config.json").read_text())
    with pytest.raises(MarsError, match=r"model\.safetensors"):
        load_llama(folder)
    with pytest.raises(MarsError, match=r"tokenizer\.json"):
        ChatTokenizer.load(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(MarsError, match=r"config\.json: missing key"):
        load_llama(folder)
