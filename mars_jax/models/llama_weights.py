"""Llama weights from a GGUF file or a Hugging Face folder, as a params pytree.

* **GGUF** (llama.cpp): ``gguf.GGUFReader`` reads the tensors (parsed once per process with
  the tokenizer: :func:`mars_jax.models.gguf_file.read_gguf`), ``gguf.quants.dequantize``
  turns any quantised type into float32, and the config comes from the ``llama.*`` metadata.
  llama.cpp's converter permutes the rows of the Q and K projections for interleaved-pair
  RoPE; :func:`unpermute_rope` undoes it, so both sources use rotate-half RoPE.
* **Hugging Face folder**: ``config.json`` and ``model.safetensors`` in the
  ``LlamaForCausalLM`` layout, read with ``safetensors.numpy``.

Both give float32 numpy arrays in the layout of :mod:`mars_jax.models.llama` (``[in, out]``,
per-layer weights stacked); :func:`to_device` casts them to a JAX dtype.
:func:`save_hf_folder` writes params back in the Hugging Face layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from mars_jax.errors import MarsError
from mars_jax.models.gguf_file import read_gguf
from mars_jax.models.llama import LlamaConfig

__all__ = [
    "load_gguf",
    "load_hf_folder",
    "load_llama",
    "save_hf_folder",
    "to_device",
    "unpermute_rope",
]

# (our stacked name, Hugging Face name inside model.layers.N, GGUF name inside blk.N)
_LAYER_NAMES = (
    ("attn_norm", "input_layernorm", "attn_norm"),
    ("wq", "self_attn.q_proj", "attn_q"),
    ("wk", "self_attn.k_proj", "attn_k"),
    ("wv", "self_attn.v_proj", "attn_v"),
    ("wo", "self_attn.o_proj", "attn_output"),
    ("mlp_norm", "post_attention_layernorm", "ffn_norm"),
    ("w_gate", "mlp.gate_proj", "ffn_gate"),
    ("w_up", "mlp.up_proj", "ffn_up"),
    ("w_down", "mlp.down_proj", "ffn_down"),
)


def unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation of a ``[heads*Dh, D]`` projection."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _stack_layers(config: LlamaConfig, get, source: int) -> dict[str, np.ndarray]:
    """Per-layer weights stacked on a leading axis; matrices turned ``[out, in] -> [in, out]``.

    ``get(name)`` reads one tensor; ``source`` is 1 for Hugging Face names, 2 for GGUF names.
    """
    templates = ("", "model.layers.{i}.{name}.weight", "blk.{i}.{name}.weight")
    layers = {}
    for names in _LAYER_NAMES:
        stacked = None
        for i in range(config.num_layers):
            array = get(templates[source].format(i=i, name=names[source]))
            array = array.T if array.ndim == 2 else array
            if stacked is None:  # filled in place: no per-layer list, stack or transpose copy
                stacked = np.empty((config.num_layers, *array.shape), np.float32)
            stacked[i] = array
        layers[names[0]] = stacked
    return layers


def load_hf_folder(folder: str | os.PathLike[str]) -> tuple[LlamaConfig, dict[str, Any]]:
    """Config and float32 params from ``folder/config.json`` + ``folder/model.safetensors``.

    Raises:
      MarsError: a file is missing or unreadable, or a tensor or config key is missing.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder).expanduser()
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    try:
        raw = json.loads(config_path.read_text())
        rope = raw.get("rope_parameters") or {}
        heads = int(raw["num_attention_heads"])
        config = LlamaConfig(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads", heads)),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_positions=int(raw.get("max_position_embeddings", 8192)),
        )
    except (OSError, ValueError) as err:
        raise MarsError(f"{config_path}: not a readable Llama config.json ({err})") from None
    except KeyError as err:
        raise MarsError(f"{config_path}: missing key {err}") from None
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as err:
        raise MarsError(f"{weights_path}: not a readable safetensors file ({err})") from None

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise MarsError(f"{weights_path}: missing tensor {name}")
        return np.asarray(tensors[name], np.float32)

    params = {"layers": _stack_layers(config, get, 1)}
    params["embed"] = get("model.embed_tokens.weight")
    params["final_norm"] = get("model.norm.weight")
    if not config.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(get("lm_head.weight").T)
    return config, params


def _field(reader, key: str, path: Path, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise MarsError(f"{path}: missing GGUF metadata {key}")
        return default
    return field.contents()


def load_gguf(path: str | os.PathLike[str]) -> tuple[LlamaConfig, dict[str, Any]]:
    """Config and float32 params (dequantised) from a llama-architecture GGUF file.

    Raises:
      MarsError: the file is missing, not GGUF, not a llama model, or lacks a tensor.
    """
    import gguf

    path = Path(path).expanduser()
    reader = read_gguf(path)
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise MarsError(f"{path}: GGUF architecture is {arch!r}, expected 'llama'")
    tensors = {t.name: t for t in reader.tensors}
    embed_tensor = tensors.get("token_embd.weight")
    if embed_tensor is None:
        raise MarsError(f"{path}: missing tensor token_embd.weight")
    hidden = int(_field(reader, "llama.embedding_length", path))
    heads = int(_field(reader, "llama.attention.head_count", path))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", path, heads))
    config = LlamaConfig(
        vocab_size=int(embed_tensor.shape[1]),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length", path)),
        num_layers=int(_field(reader, "llama.block_count", path)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(_field(reader, "llama.rope.dimension_count", path, hidden // heads)),
        # stored as float32: 1e-5 reads 9.99999974e-06; keep the decimal it was written as
        rms_eps=float(f"{_field(reader, 'llama.attention.layer_norm_rms_epsilon', path):.7g}"),
        rope_theta=float(_field(reader, "llama.rope.freq_base", path, 10000.0)),
        tie_embeddings="output.weight" not in tensors,
        max_positions=int(_field(reader, "llama.context_length", path, 8192)),
    )

    def get(name: str) -> np.ndarray:
        tensor = tensors.get(name)
        if tensor is None:
            raise MarsError(f"{path}: missing tensor {name}")
        shape = tuple(int(n) for n in reversed(tensor.shape))
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        array = np.asarray(array, np.float32)
        if name.endswith("attn_q.weight"):
            return unpermute_rope(array, heads)
        if name.endswith("attn_k.weight"):
            return unpermute_rope(array, kv_heads)
        return array

    params = {"layers": _stack_layers(config, get, 2)}
    params["embed"] = get("token_embd.weight")
    params["final_norm"] = get("output_norm.weight")
    if not config.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(get("output.weight").T)
    return config, params


def load_llama(path: str | os.PathLike[str]) -> tuple[LlamaConfig, dict[str, Any]]:
    """Loads a ``.gguf`` file or a Hugging Face folder (by what the path is).

    Raises:
      MarsError: the path does not exist or is neither a GGUF file nor a model folder.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return load_hf_folder(path)
    if path.is_file():
        return load_gguf(path)
    raise MarsError(f"{path}: no such model file or folder")


def to_device(params: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """The params as JAX arrays of ``dtype`` ("float32" or "bfloat16")."""
    if dtype not in ("float32", "bfloat16"):
        raise MarsError(f"dtype: {dtype!r} is not one of float32, bfloat16")
    target = jnp.dtype(dtype)
    return {
        key: to_device(value, dtype) if isinstance(value, dict) else jnp.asarray(value, target)
        for key, value in params.items()
    }


def save_hf_folder(
    folder: str | os.PathLike[str], config: LlamaConfig, params: dict[str, Any]
) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` (``LlamaForCausalLM`` layout, float32)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "model.embed_tokens.weight": np.asarray(params["embed"], np.float32),
        "model.norm.weight": np.asarray(params["final_norm"], np.float32),
    }
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"]).T)
    for ours, hf_name, _ in _LAYER_NAMES:
        stacked = np.asarray(params["layers"][ours], np.float32)
        for i in range(config.num_layers):
            mat = stacked[i] if stacked.ndim == 2 else stacked[i].T
            tensors[f"model.layers.{i}.{hf_name}.weight"] = np.ascontiguousarray(mat)
    save_file(tensors, str(folder / "model.safetensors"))
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_positions,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    return folder
