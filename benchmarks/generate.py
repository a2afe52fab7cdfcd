"""Benchmark of the JAX Llama generator against transformers' PyTorch ``generate``.

Both frameworks run the same weights: SmolLM2-135M-Instruct's GGUF dequantised to float32 by
``load_gguf`` (JAX), and the same arrays written by ``save_hf_folder`` to a temporary Hugging
Face folder that ``transformers.LlamaForCausalLM.from_pretrained`` loads (PyTorch, eval mode,
``torch.inference_mode()``, its default attention implementation and ``DynamicCache``).

1. **Throughput.** Greedy decoding of ``new_tokens`` tokens for a batch of chat-templated
   paraphrase prompts (batch 1 and batch 32), left-padded to one length bucket ``P``. Both
   generate exactly ``new_tokens`` tokens per row (no end-of-turn stop: JAX gets a stop id
   that never occurs, torch no ``eos_token_id``). Tokens/s = batch × new tokens / wall time;
   the ratio is JAX tokens/s / torch tokens/s (at least 1.0 at batch 32 meets the issue's
   goal). The generated tokens of both are compared row by row. JAX's compile time is an
   ahead-of-time ``lower(...).compile()`` of the same call, timed alone. Then the JAX
   function runs once on a batch of *other* prompt lengths within the same bucket and the
   count of compiled variants is checked to stay the same.
2. **Peak memory.** Each side runs one batch-32 generation in a fresh subprocess (load +
   generate) and reports its peak RSS (``VmHWM`` of ``/proc/self/status``).
3. **Generator.** ``LlamaChatGenerator`` (batch 32) on 32 paraphrase prompts with
   temperature 0.7, top-p 0.9, ``new_tokens`` at most, stopping at ``<|im_end|>``: new tokens
   (without the stop token) per second of wall time, tokenisation and decoding included.

The timed calls are interleaved (JAX, torch, JAX, ...), each after a short pause; medians are
reported with the per-round ratio's range and the ratio of the minima. The quiet-machine
protocol (``benchmarks/quiet.py``) refuses a full run started with a 1-minute load average above
0.5 per core unless ``--allow-loaded``, which marks the tables LOADED. torch uses
``os.cpu_count()`` intra-op threads.

``--smoke`` uses a tiny random Llama (and a byte-level tokenizer) written to a temporary
folder, batch 1 and 4, 16 new tokens; it needs neither the SmolLM2 weights nor torch (without
torch the torch columns read "not installed"; ``--no-torch`` forces that).

Usage::

    python benchmarks/generate.py [--smoke] [--repeats N] [--no-torch] [--json PATH]
        [--allow-loaded]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # benchmarks/quiet.py: the quiet-machine protocol

TARGET = 1.0
BATCHING_TARGET = 2.0
END_SCALE = 6.0
FULL = {
    "batches": (1, 32),
    "new_tokens": 48,
    "repeats": 3,
    "batching_prompts": 64,
    "batching_new": 48,
}
SMOKE = {
    "batches": (1, 4),
    "new_tokens": 16,  # the batching runs' length: the sections share their programs
    "repeats": 2,
    "batching_prompts": 16,
    "batching_new": 16,
}
TINY = {
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 8,
}
SYSTEM_PROMPT = "You rewrite texts. Reply with the rewritten text only."
RESPONSES = [
    "The capital of France is Paris, which is also its largest city.",
    "To boil an egg, place it in boiling water for about nine minutes, then cool it in cold "
    "water before peeling.",
    "I'm sorry, but I can't help with that request. Is there something else I can do for you?",
    "Regular exercise improves your mood, helps you sleep better and lowers the risk of heart "
    "disease.",
    "Photosynthesis is the process by which plants turn sunlight, water and carbon dioxide into "
    "sugar and oxygen.",
    "You could try asking your neighbour politely to keep the music down after ten in the evening.",
    "The movie follows a young girl who travels across the country to find her lost dog.",
    "Saving a little money every month, even a small amount, adds up over the years.",
]


def paraphrase_prompts(count: int, shift: int = 0) -> list[str]:
    """``count`` realistic paraphrase requests (the pool builder's kind of prompt)."""
    return [
        "Rewrite the following answer in different words, keeping its meaning:\n\n"
        + RESPONSES[(i + shift) % len(RESPONSES)]
        for i in range(count)
    ]


def write_smoke_model(folder: Path, seed: int = 0, end_scale: float = END_SCALE) -> Path:
    """A tiny random Llama with a merge-free byte-level tokenizer, in Hugging Face layout.

    The ``<|im_end|>`` embedding row is scaled by ``end_scale`` (the output head is tied), so
    that replies stop after varied numbers of tokens, as a chat model's do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from mars_jax.models.llama import LlamaConfig
    from mars_jax.models.llama_weights import save_hf_folder

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = specials + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    config = LlamaConfig(**{**TINY, "vocab_size": len(symbols)}, tie_embeddings=True)
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)

    layers, d, f = config.num_layers, config.hidden_size, config.intermediate_size
    q_width, kv_width = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    params = {
        "embed": normal(config.vocab_size, d),
        "final_norm": np.ones(d, np.float32),
        "layers": {
            "attn_norm": np.ones((layers, d), np.float32),
            "mlp_norm": np.ones((layers, d), np.float32),
            "wq": normal(layers, d, q_width),
            "wk": normal(layers, d, kv_width),
            "wv": normal(layers, d, kv_width),
            "wo": normal(layers, q_width, d),
            "w_gate": normal(layers, d, f),
            "w_up": normal(layers, d, f),
            "w_down": normal(layers, f, d),
        },
    }
    params["embed"][specials.index("<|im_end|>")] *= end_scale
    save_hf_folder(folder, config, params)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_torch(enabled: bool) -> tuple[Any, str | None]:
    """``(torch, None)`` or ``(None, reason)``; sets torch's thread count to the CPU count."""
    if not enabled:
        return None, "skipped (--no-torch)"
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None, "not installed"
    torch.set_num_threads(os.cpu_count() or 1)
    return torch, None


def padded_batch(tokenizer: Any, prompts: list[str], bucket: int | None = None) -> tuple:
    """Left-padded token ids ``[B, P]``, pad lengths ``[B]`` and the bucket length ``P``."""
    from mars_jax.models.sampling import bucket_length

    ids = [tokenizer.encode_chat(p, SYSTEM_PROMPT) for p in prompts]
    longest = max(len(i) for i in ids)
    bucket = bucket or bucket_length(longest, 512)
    tokens = np.zeros((len(ids), bucket), np.int32)
    pad = np.array([bucket - len(i) for i in ids], np.int32)
    for row, seq in enumerate(ids):
        tokens[row, pad[row] :] = seq
    return tokens, pad, bucket


class JaxSide:
    """Greedy decoding with the library's compiled ``sample_tokens`` (no stop token)."""

    def __init__(self, config: Any, params: Any, new_tokens: int) -> None:
        self.config, self.params, self.new_tokens = config, params, new_tokens

    def _args(self, tokens: np.ndarray, pad: np.ndarray) -> tuple:
        batch = tokens.shape[0]
        return (
            self.params,
            tokens,
            pad,
            np.arange(batch, dtype=np.int32),
            np.ones(batch, bool),
            np.uint32(0),
            np.float32(0.0),
            np.float32(1.0),
            np.int32(-1),
        )

    def lower(self, tokens: np.ndarray, pad: np.ndarray) -> Any:
        """The lowered computation (``.compile()`` it to time compilation alone)."""
        from mars_jax.models.sampling import sample_tokens

        return sample_tokens.lower(
            *self._args(tokens, pad), config=self.config, max_new_tokens=self.new_tokens
        )

    def __call__(self, tokens: np.ndarray, pad: np.ndarray) -> np.ndarray:
        from mars_jax.models.sampling import sample_tokens

        out, _ = sample_tokens(
            *self._args(tokens, pad), config=self.config, max_new_tokens=self.new_tokens
        )
        return np.asarray(out)


class TorchSide:
    """transformers' greedy ``generate`` on the same left-padded batch."""

    def __init__(self, torch: Any, folder: Path, new_tokens: int) -> None:
        from transformers import LlamaForCausalLM

        self.torch, self.new_tokens = torch, new_tokens
        self.model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def __call__(self, tokens: np.ndarray, pad: np.ndarray) -> np.ndarray:
        torch = self.torch
        mask = (np.arange(tokens.shape[1])[None, :] >= pad[:, None]).astype(np.int64)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.from_numpy(tokens.astype(np.int64)),
                attention_mask=torch.from_numpy(mask),
                max_new_tokens=self.new_tokens,
                do_sample=False,
            )
        return out[:, tokens.shape[1] :].numpy()


def bench_throughput(
    jax_side: JaxSide, torch_side: TorchSide | None, tokenizer: Any, batch: int, repeats: int
) -> dict:
    from mars_jax.models.sampling import sample_tokens

    progress(f"throughput at batch {batch}")
    tokens, pad, bucket = padded_batch(tokenizer, paraphrase_prompts(batch))
    new = jax_side.new_tokens
    compile_s = timed(lambda: jax_side.lower(tokens, pad).compile())
    first_s = timed(lambda: jax_side(tokens, pad))
    compiled = sample_tokens._cache_size()
    fns = {"jax": lambda: jax_side(tokens, pad)}
    if torch_side is not None:
        fns["torch"] = lambda: torch_side(tokens, pad)
        torch_side(tokens, pad)  # warm-up
    times = quiet.interleave(fns, repeats)
    other, other_pad, _ = padded_batch(tokenizer, paraphrase_prompts(batch, shift=3), bucket)
    jax_side(other, other_pad)
    jax_s = statistics.median(times["jax"])
    row = {
        "batch": batch,
        "prompt_bucket": bucket,
        "prompt_tokens": [int(bucket - p) for p in (pad.min(), pad.max())][::-1],
        "new_tokens": new,
        "jax_compile_s": compile_s,
        "jax_first_call_s": first_s,
        "jax_s": jax_s,
        "jax_min_s": min(times["jax"]),
        "jax_tokens_per_s": batch * new / jax_s,
        "recompiled_within_bucket": sample_tokens._cache_size() != compiled,
    }
    if torch_side is not None:
        torch_s = statistics.median(times["torch"])
        per_round = [t / j for j, t in zip(times["jax"], times["torch"], strict=True)]
        same = jax_side(tokens, pad) == torch_side(tokens, pad)
        row |= {
            "torch_s": torch_s,
            "torch_min_s": min(times["torch"]),
            "ratio_of_minima": min(times["torch"]) / min(times["jax"]),
            "torch_tokens_per_s": batch * new / torch_s,
            "ratio": torch_s / jax_s,
            "ratio_min": min(per_round),
            "ratio_max": max(per_round),
            "identical_rows": int(same.all(axis=1).sum()),
            "identical_tokens": float(same.mean()),
            "met": torch_s / jax_s >= TARGET,
        }
    return row


def bench_generator(source: str, prompts: list[str], new_tokens: int, batch: int) -> dict:
    """``LlamaChatGenerator`` throughput with sampling and end-of-turn stops."""
    from mars_jax.models.generator import LlamaChatGenerator
    from mars_jax.models.sampling import generate_ids

    progress("LlamaChatGenerator")
    generator = LlamaChatGenerator.load(source, batch_size=batch)
    options = {"max_new_tokens": new_tokens, "temperature": 0.7, "top_p": 0.9}
    compile_s = timed(lambda: generator.generate(prompts, seed=0, **options))
    counts: list[int] = []

    def run() -> None:
        ids = [generator.tokenizer.encode_chat(p, SYSTEM_PROMPT, 512) for p in prompts]
        replies = generate_ids(
            generator.params,
            generator.config,
            ids,
            batch_size=batch,
            max_prompt_tokens=512,
            seed=1,
            stop_id=generator.tokenizer.end_id,
            **options,
        )
        [generator.tokenizer.decode(r).strip() for r in replies]
        counts.append(sum(len(r) for r in replies))

    wall = timed(run)
    return {
        "prompts": len(prompts),
        "batch": batch,
        "max_new_tokens": new_tokens,
        "first_call_s": compile_s,
        "wall_s": wall,
        "new_tokens": counts[0],
        "tokens_per_s": counts[0] / wall,
        "sample_reply": generator.generate(prompts[:1], seed=0, **options)[0],
    }


def bench_batching(
    source: str, prompts: list[str], new_tokens: int, batch: int, max_prompt_tokens: int
) -> dict:
    """Static against continuous batching on the same prompts, seed and sampling options.

    Each mode is warmed up (compiled) on the first ``batch`` prompts, then timed once on all
    of them, static first; tokenisation is outside the timing. The full mode cuts prompts
    to 64 tokens (two of the eight are 65 and 66), so they share one bucket and the warm-up
    compiles every shape the timed run uses: the comparison is of batching alone. Kept
    tokens are the replies' tokens without the stop; decoded slots are the row-steps
    computed (a static batch runs all its rows until its slowest row stops; a continuous
    batch refills a row at once and adds one slot per prefill); occupancy = kept / decoded.
    """
    from mars_jax.models import sampling
    from mars_jax.models.generator import LlamaChatGenerator

    progress(f"static vs continuous batching, {len(prompts)} prompts at batch {batch}")
    generator = LlamaChatGenerator.load(source, batch_size=batch)
    ids = [generator.tokenizer.encode_chat(p, SYSTEM_PROMPT, max_prompt_tokens) for p in prompts]
    options = {
        "batch_size": batch,
        "max_prompt_tokens": max_prompt_tokens,
        "max_new_tokens": new_tokens,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 0,
        "stop_id": generator.tokenizer.end_id,
    }
    runs = {"static": sampling.generate_ids, "continuous": sampling.generate_ids_continuous}
    compiled = (sampling.sample_tokens, sampling.admit, sampling.decode)
    row: dict[str, Any] = {
        "prompts": len(prompts),
        "batch": batch,
        "max_new_tokens": new_tokens,
        "max_prompt_tokens": max_prompt_tokens,
    }
    load_start = os.getloadavg()[0]
    replies = {}
    for mode, run in runs.items():
        run(generator.params, generator.config, ids[:batch], **options)  # compile
        before = [fn._cache_size() for fn in compiled]
        counts: dict[str, int] = {}
        wall = timed(
            lambda run=run, counts=counts, mode=mode: replies.__setitem__(
                mode, run(generator.params, generator.config, ids, counts=counts, **options)
            )
        )
        row[mode] = {
            "wall_s": wall,
            "kept_tokens": counts["kept_tokens"],
            "decoded_slots": counts["decoded_slots"],
            "occupancy": counts["kept_tokens"] / counts["decoded_slots"],
            "kept_tokens_per_s": counts["kept_tokens"] / wall,
            "calls": counts["calls"],
            "compiled_while_timed": sum(fn._cache_size() for fn in compiled) - sum(before),
        }
    row["identical"] = replies["static"] == replies["continuous"]
    row["ratio"] = row["continuous"]["kept_tokens_per_s"] / row["static"]["kept_tokens_per_s"]
    row["met"] = row["ratio"] >= BATCHING_TARGET
    row["load_average"] = [load_start, os.getloadavg()[0]]  # 1-minute, at start and end
    return row


def peak_rss_mib(side: str, source: str, hf_folder: Path, batch: int, new_tokens: int) -> float:
    """Peak RSS of a fresh process that loads the model and generates one batch."""
    command = [
        sys.executable,
        __file__,
        "--memory-worker",
        side,
        source,
        str(hf_folder),
        str(batch),
        str(new_tokens),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def memory_worker(side: str, source: str, hf_folder: str, batch: int, new_tokens: int) -> None:
    """Loads one side, generates once, prints its peak RSS in MiB."""
    from mars_jax.models.llama_tokenizer import ChatTokenizer
    from mars_jax.models.llama_weights import load_llama, to_device

    tokenizer = ChatTokenizer.load(source)
    tokens, pad, _ = padded_batch(tokenizer, paraphrase_prompts(batch))
    if side == "jax":
        config, params = load_llama(source)
        JaxSide(config, to_device(params), new_tokens)(tokens, pad)
    else:
        torch, _ = load_torch(True)
        TorchSide(torch, Path(hf_folder), new_tokens)(tokens, pad)
    print(peak_rss_self_mib())


def peak_rss_self_mib() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(row: dict, key: str, spec: str, absent: str) -> str:
    return format(row[key], spec) if key in row else absent


def format_tables(report: dict) -> str:
    return "\n\n".join(
        ([format_throughput(report)] if report["throughput"] else [])
        + [format_batching(report["batching"])]
    )


def format_throughput(report: dict) -> str:
    absent = report["torch_status"]
    lines = [
        "| batch | prompt tokens (bucket) | new tokens | JAX compile (s) | JAX tok/s "
        "| torch tok/s | JAX / torch tok/s [per-round range] (of minima) | ≥ 1.0 | identical rows "
        "| recompiled in bucket |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in report["throughput"]:
        has_torch = "torch_s" in row
        ratio = (
            f"{row['ratio']:.2f} [{row['ratio_min']:.2f}–{row['ratio_max']:.2f}] "
            f"({row['ratio_of_minima']:.2f})"
            if has_torch
            else absent
        )
        identical = f"{row['identical_rows']}/{row['batch']}" if has_torch else absent
        lines.append(
            f"| {row['batch']} | {row['prompt_tokens'][0]}–{row['prompt_tokens'][1]} "
            f"({row['prompt_bucket']}) | {row['new_tokens']} | {row['jax_compile_s']:.2f} "
            f"| {row['jax_tokens_per_s']:.1f} | {fmt(row, 'torch_tokens_per_s', '.1f', absent)} "
            f"| {ratio} | {('PASS' if row['met'] else 'FAIL') if has_torch else '-'} "
            f"| {identical} "
            f"| {'yes' if row['recompiled_within_bucket'] else 'no'} |"
        )
    memory = report["peak_rss_mib"]
    gen = report["generator"]
    lines += [
        "",
        f"Peak RSS, load + one batch-{memory['batch']} generation in a fresh process: "
        f"JAX {memory['jax']:.0f} MiB, torch "
        + (f"{memory['torch']:.0f} MiB" if "torch" in memory else absent),
        "",
        f"LlamaChatGenerator, {gen['prompts']} paraphrase prompts, batch {gen['batch']}, "
        f"≤ {gen['max_new_tokens']} new tokens, temperature 0.7, top-p 0.9: "
        f"{gen['new_tokens']} tokens in {gen['wall_s']:.2f} s = {gen['tokens_per_s']:.1f} "
        f"tokens/s (first call with compilation {gen['first_call_s']:.2f} s)",
    ]
    return "\n".join(lines)


def format_batching(cb: dict) -> str:
    lines = [
        f"Static vs continuous batching, {cb['prompts']} paraphrase prompts, batch "
        f"{cb['batch']}, ≤ {cb['max_new_tokens']} new tokens, temperature 0.7, top-p 0.9 "
        f"(1-min load average {cb['load_average'][0]:.2f} at start, "
        f"{cb['load_average'][1]:.2f} at end):",
        "",
        "| batching | kept tokens | decoded slots | occupancy | wall (s) | kept tok/s "
        "| compiled while timed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("static", "continuous"):
        m = cb[mode]
        lines.append(
            f"| {mode} | {m['kept_tokens']} | {m['decoded_slots']} | {m['occupancy']:.0%} "
            f"| {m['wall_s']:.2f} | {m['kept_tokens_per_s']:.1f} | {m['compiled_while_timed']} |"
        )
    lines += [
        "",
        f"continuous / static kept tok/s: {cb['ratio']:.2f} "
        f"(≥ {BATCHING_TARGET:.1f}: {'PASS' if cb['met'] else 'FAIL'}); "
        f"identical replies: {'yes' if cb['identical'] else 'NO'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random Llama, seconds")
    parser.add_argument("--repeats", type=int, help="timed rounds per batch size")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 32)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--batching-prompts", type=int, help="prompts for static vs continuous batching"
    )
    parser.add_argument(
        "--only-batching", action="store_true", help="skip throughput, memory and generator"
    )
    quiet.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables and return the numbers."""
    args = parse_args(argv)
    machine = quiet.QuietRun(allow_loaded=args.allow_loaded or args.smoke)
    sizes = SMOKE if args.smoke else FULL
    torch, reason = load_torch(not args.no_torch)
    repeats = args.repeats or sizes["repeats"]
    new = sizes["new_tokens"]
    batches = args.batches or sizes["batches"]

    from mars_jax.errors import MarsError
    from mars_jax.models.llama_tokenizer import ChatTokenizer
    from mars_jax.models.llama_weights import load_llama, save_hf_folder, to_device
    from mars_jax.models.pretrained import smollm2_path

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            source = str(write_smoke_model(Path(tmp) / "tiny"))
            hf_folder, model_name = Path(source), "tiny random Llama"
        else:
            try:
                source, model_name = str(smollm2_path()), "SmolLM2-135M-Instruct (Q4_1 GGUF)"
            except MarsError as err:
                raise SystemExit(
                    f"benchmarks/generate.py: the full mode needs the SmolLM2 weights ({err}). "
                    "Use --smoke for a tiny random model."
                ) from None
            hf_folder = Path(tmp) / "smollm2-hf"
        config, params = load_llama(source)
        if not args.smoke and torch is not None:
            save_hf_folder(hf_folder, config, params)
        tokenizer = ChatTokenizer.load(source)
        jax_side = JaxSide(config, to_device(params), new)
        torch_side = TorchSide(torch, hf_folder, new) if torch is not None else None
        big = batches[-1]
        throughput, memory, generator = [], {}, {}
        if not args.only_batching:
            throughput = [
                bench_throughput(jax_side, torch_side, tokenizer, batch, repeats)
                for batch in batches
            ]
            memory = {"batch": big}
            for side in ("jax", "torch") if torch is not None else ("jax",):
                progress(f"peak memory of {side}")
                memory[side] = peak_rss_mib(side, source, hf_folder, big, new)
            generator = bench_generator(source, paraphrase_prompts(big), new, big)
        count = args.batching_prompts or sizes["batching_prompts"]
        batching = bench_batching(
            source,
            paraphrase_prompts(count),
            sizes["batching_new"],
            big,
            64 if not args.smoke else 512,
        )
    report = {
        "mode": "smoke" if args.smoke else "full",
        "model": model_name,
        "torch_status": "ok" if torch is not None else reason,
        "target": TARGET,
        "cpus": os.cpu_count(),
        "throughput": throughput,
        "peak_rss_mib": memory,
        "generator": generator,
        "batching": batching,
    }
    print(machine.describe() + "\n")
    print(machine.mark(format_tables(report)))
    report["machine"] = machine.finish()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
        memory_worker(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
