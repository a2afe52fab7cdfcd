"""A tiny random Llama with a trained byte-level BPE, written in Hugging Face and GGUF layouts.

Used by the Llama tests and the generation benchmark's smoke mode. The GGUF writer applies
llama.cpp's Q/K row permutation here, independently of the loader's inverse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
)
CORPUS = [
    "The capital of France is Paris. The cat sat on the mat.",
    "Rewrite the answer in other words, keeping its meaning: 12 apples and 345 pears.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "A helpful assistant answers questions clearly and briefly.",
] * 4
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
}


def train_tokenizer() -> Tokenizer:
    """A byte-level BPE (digits split one by one) with about 300 tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def random_hf_weights(vocab: int, seed: int = 0, tied: bool = False) -> dict[str, np.ndarray]:
    """Random float32 tensors named and shaped as in ``LlamaForCausalLM`` (``[out, in]``)."""
    rng = np.random.default_rng(seed)
    d, f = TINY["hidden_size"], TINY["intermediate_size"]
    hd, h, kv = TINY["head_dim"], TINY["num_attention_heads"], TINY["num_key_value_heads"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    weights = {"model.embed_tokens.weight": mat(vocab, d), "model.norm.weight": norm()}
    if not tied:
        weights["lm_head.weight"] = mat(vocab, d)
    for i in range(TINY["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        weights[prefix + "input_layernorm.weight"] = norm()
        weights[prefix + "post_attention_layernorm.weight"] = norm()
        weights[prefix + "self_attn.q_proj.weight"] = mat(h * hd, d)
        weights[prefix + "self_attn.k_proj.weight"] = mat(kv * hd, d)
        weights[prefix + "self_attn.v_proj.weight"] = mat(kv * hd, d)
        weights[prefix + "self_attn.o_proj.weight"] = mat(d, h * hd)
        weights[prefix + "mlp.gate_proj.weight"] = mat(f, d)
        weights[prefix + "mlp.up_proj.weight"] = mat(f, d)
        weights[prefix + "mlp.down_proj.weight"] = mat(d, f)
    return weights


def write_hf(folder: Path, weights: dict[str, np.ndarray], tokenizer: Tokenizer) -> Path:
    """``config.json``, ``model.safetensors`` and ``tokenizer.json`` in ``folder``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vocab = weights["model.embed_tokens.weight"].shape[0]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **TINY,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "model.safetensors"))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (for interleaved RoPE)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(path: Path, weights: dict[str, np.ndarray], tokenizer: Tokenizer) -> Path:
    """The same model as a llama GGUF file: float32 tensors, BPE tokenizer, chat template."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(TINY["num_hidden_layers"])
    writer.add_context_length(TINY["max_position_embeddings"])
    writer.add_embedding_length(TINY["hidden_size"])
    writer.add_feed_forward_length(TINY["intermediate_size"])
    writer.add_head_count(TINY["num_attention_heads"])
    writer.add_head_count_kv(TINY["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(TINY["rms_norm_eps"])
    writer.add_rope_freq_base(TINY["rope_theta"])
    writer.add_rope_dimension_count(TINY["head_dim"])
    state = json.loads(tokenizer.to_str())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in SPECIALS else 1 for token, _ in vocab])
    writer.add_token_merges([" ".join(pair) for pair in state["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    for i in range(TINY["num_hidden_layers"]):
        for hf_name, gguf_name in names.items():
            tensor = weights[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = _permute(tensor, TINY["num_attention_heads"])
            elif gguf_name == "attn_k":
                tensor = _permute(tensor, TINY["num_key_value_heads"])
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_model(root: Path, seed: int = 0, tied: bool = False) -> tuple[Path, Path]:
    """The tiny model as ``root/hf`` (folder) and ``root/tiny.gguf``; returns both paths."""
    tokenizer = train_tokenizer()
    weights = random_hf_weights(tokenizer.get_vocab_size(), seed, tied)
    root.mkdir(parents=True, exist_ok=True)
    return write_hf(root / "hf", weights, tokenizer), write_gguf(
        root / "tiny.gguf", weights, tokenizer
    )
