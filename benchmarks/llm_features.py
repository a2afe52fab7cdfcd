"""Benchmark of the LLM reward backbone's feature extraction against PyTorch ``LlamaModel``.

Both frameworks hold the same float32 weights: SmolLM2-135M-Instruct dequantised from the
packaged GGUF by ``load_llama`` (``--smoke``: a tiny random Llama made here). JAX runs what
:class:`~mars_jax.models.llm_features.LlamaFeatures` runs per batch, the jitted
``last_token_features`` (compiled ahead of time; compile time reported apart); PyTorch runs
``transformers.LlamaModel`` (its default attention, eval mode, ``torch.inference_mode()``)
built from the same tensors, with the attention mask and ``position_ids`` of left padding,
and takes ``last_hidden_state[:, -1]``. Both see the same left-padded batch of random token
ids (lengths drawn between T/2 and T), converted once before timing; their features are
compared (max abs difference).

Calls are interleaved (JAX, torch, JAX, torch, ...) after one warm-up each, with a short
pause before each call; medians and minima of the per-call times are reported, as texts per
second, and the ratio JAX throughput / torch throughput (at least 1.0 meets the issue's
goal). torch uses ``os.cpu_count()`` intra-op threads. The 1-minute load average before and
after and the CPU model are recorded: on a shared machine the numbers move with the load.

Usage::

    python benchmarks/llm_features.py [--smoke] [--repeats N] [--no-torch] [--json PATH]
                                      [--model GGUF_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

PAUSE_S = 0.2
TARGET = 1.0
FULL = {"cases": ((8, 192), (16, 64)), "repeats": 5}  # (batch, T)
SMOKE = {"cases": ((4, 16), (2, 32)), "repeats": 2}
TINY = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 8,
    "rope_theta": 10000.0,
    "max_positions": 128,
}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tiny_model(seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """A tiny random Llama: its config and float32 params (layout of ``mars_jax.models.llama``)."""
    from mars_jax.models.llama import LlamaConfig

    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(seed)
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)

    def norm(*shape: int) -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)

    params = {
        "embed": rng.standard_normal((config.vocab_size, d)).astype(np.float32),
        "final_norm": norm(d),
        "layers": {
            "attn_norm": norm(layers, d),
            "wq": mat(layers, d, q),
            "wk": mat(layers, d, kv),
            "wv": mat(layers, d, kv),
            "wo": mat(layers, q, d),
            "mlp_norm": norm(layers, d),
            "w_gate": mat(layers, d, f),
            "w_up": mat(layers, d, f),
            "w_down": mat(layers, f, d),
        },
    }
    return config, params


def make_batch(vocab: int, batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded random token ids ``[batch, length]`` and each row's padding ``[batch]``."""
    from mars_jax.models.llm_features import left_pad

    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    lengths[0] = length
    rows = [rng.integers(3, vocab, size=n).tolist() for n in lengths]
    return left_pad(rows, length, rows=batch)


def torch_model(config: Any, params: dict[str, Any]) -> Any:
    """``transformers.LlamaModel`` holding ``params`` (weights turned back to ``[out, in]``)."""
    import torch
    import transformers

    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=config.tie_embeddings,
    )
    model = transformers.LlamaModel(hf_config).eval()
    names = {
        "attn_norm": "input_layernorm",
        "wq": "self_attn.q_proj",
        "wk": "self_attn.k_proj",
        "wv": "self_attn.v_proj",
        "wo": "self_attn.o_proj",
        "mlp_norm": "post_attention_layernorm",
        "w_gate": "mlp.gate_proj",
        "w_up": "mlp.up_proj",
        "w_down": "mlp.down_proj",
    }
    state = {
        "embed_tokens.weight": params["embed"],
        "norm.weight": params["final_norm"],
    }
    for ours, theirs in names.items():
        for i, array in enumerate(np.asarray(params["layers"][ours])):
            state[f"layers.{i}.{theirs}.weight"] = array.T if array.ndim == 2 else array
    tensors = {name: torch.from_numpy(np.array(a, np.float32)) for name, a in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [name for name in missing if "rotary" not in name]:
        raise RuntimeError(f"torch weights: missing {missing}, unexpected {unexpected}")
    return model


def _timed(call) -> float:
    time.sleep(PAUSE_S)
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run_case(config, jax_params, torch_state, batch: int, length: int, repeats: int) -> dict:
    """One (batch, T) case: compile, warm up, interleaved timed calls, agreement."""
    import jax

    from mars_jax.models.llm_features import last_token_features

    tokens, pad = make_batch(config.vocab_size, batch, length, seed=batch * 1000 + length)
    forward = jax.jit(last_token_features, static_argnums=1)
    start = time.perf_counter()
    compiled = forward.lower(jax_params, config, tokens, pad).compile()
    row: dict[str, Any] = {
        "batch": batch,
        "tokens": length,
        "real_tokens": int((length - pad).sum()),
    }
    row["jax_compile_s"] = time.perf_counter() - start

    def jax_call() -> np.ndarray:
        return np.asarray(jax.block_until_ready(compiled(jax_params, tokens, pad)))

    jax_features = jax_call()
    calls = {"jax": jax_call}
    if torch_state is not None:
        import torch

        model = torch_state
        mask = (np.arange(length)[None, :] >= pad[:, None]).astype(np.int64)
        inputs = {
            "input_ids": torch.from_numpy(tokens.astype(np.int64)),
            "attention_mask": torch.from_numpy(mask),
            "position_ids": torch.from_numpy(np.maximum(np.cumsum(mask, axis=1) - 1, 0)),
        }

        def torch_call() -> np.ndarray:
            with torch.inference_mode():
                return model(**inputs).last_hidden_state[:, -1].numpy()

        row["max_abs_diff"] = float(np.abs(torch_call() - jax_features).max())
        row["feature_scale"] = float(np.abs(jax_features).max())
        calls["torch"] = torch_call
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(_timed(call))
    for name, found in times.items():
        row[f"{name}_median_s"] = statistics.median(found)
        row[f"{name}_min_s"] = min(found)
        row[f"{name}_texts_per_s"] = batch / statistics.median(found)
    if "torch" in times:
        row["ratio_median"] = row["jax_texts_per_s"] / row["torch_texts_per_s"]
        row["ratio_best"] = row["torch_min_s"] / row["jax_min_s"]
    return row


def _torch_or_reason(no_torch: bool) -> tuple[Any, str]:
    if no_torch:
        return None, "skipped (--no-torch)"
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        return None, f"not installed ({err.name})"
    return torch, "ok"


def print_report(report: dict) -> None:
    """A Markdown table of the cases."""
    print(
        f"model: {report['model']} | CPU: {report['cpu']} x {report['cpu_count']} | "
        f"load average (1 min) {report['load_average'][0]:.2f} -> {report['load_average'][1]:.2f}"
        f" | torch: {report['torch_status']}"
    )
    print(
        "| batch | T | JAX texts/s (median) | torch texts/s (median) | ratio median | ratio best |"
        " max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in report["cases"]:
        torch_cells = (
            f"{row['torch_texts_per_s']:.2f} | {row['ratio_median']:.2f}x | "
            f"{row['ratio_best']:.2f}x | {row['max_abs_diff']:.2e}"
            if "torch_median_s" in row
            else f"{report['torch_status']} | - | - | -"
        )
        print(
            f"| {row['batch']} | {row['tokens']} | {row['jax_texts_per_s']:.2f} | {torch_cells} |"
        )


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns (and with ``--json`` writes) the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random Llama, seconds")
    parser.add_argument("--repeats", type=int, help="timed calls per framework and case")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument(
        "--model", type=Path, help="a Llama GGUF file or HF folder (default: packaged SmolLM2)"
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    repeats = args.repeats or sizes["repeats"]
    torch, torch_status = _torch_or_reason(args.no_torch)
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)

    from mars_jax.models.llama_weights import load_llama, to_device
    from mars_jax.models.pretrained import smollm2_path

    if args.smoke:
        config, params, model_name = (*tiny_model(), "tiny random Llama")
    else:
        path = args.model or smollm2_path()
        config, params = load_llama(path)
        model_name = f"{path.name} (dequantised to float32)"
    params.pop("lm_head", None)
    torch_state = torch_model(config, params) if torch is not None else None
    jax_params = to_device(params)
    load_start = os.getloadavg()[0]
    cases = [
        run_case(config, jax_params, torch_state, batch, length, repeats)
        for batch, length in sizes["cases"]
    ]
    report = {
        "mode": "smoke" if args.smoke else "full",
        "model": model_name,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": [load_start, os.getloadavg()[0]],
        "torch_status": torch_status,
        "repeats": repeats,
        "target_ratio": TARGET,
        "cases": cases,
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
