"""Benchmark of the curvature tools: HVP cost, Lanczos compile time, and the PyTorch peers.

Three measurements, all in one process, each ratio measured side by side:

1. **HVP cost.** Jitted gradient against jitted Hessian-vector product
   (:func:`mars_jax.curvature.hessian_vector_product`, forward-over-reverse) and Gauss-Newton
   product (:func:`mars_jax.curvature.gauss_newton_vector_product`) of the Bradley-Terry loss,
   same parameters and batch, repetitions interleaved, medians. Models: the library's MLP
   reward head, and a MiniLM-shaped transformer encoder written here (BERT layout: 6 layers,
   hidden 384, 12 heads, intermediate 1536, vocabulary 30522, sequence 64; mean pooling and a
   linear reward head) with random weights and random token ids: MiniLM's shape and cost,
   not its pretrained weights.
2. **Lanczos compile time against its order.** ``jax.jit(...).lower(...).compile()`` seconds of
   :func:`mars_jax.curvature.lanczos` on the MLP head's Hessian at orders 10, 50 and 100.
3. **Peers.** PyHessian and pytorch-hessian-eigenthings (``hessian-eigenthings`` on PyPI) on the
   same weights exported to torch and the same batch: top eigenvalue by the same number of
   power iterations from one common start vector (PyHessian's own ``torch.randn`` draw, which
   the other tools are given), and trace by Hutchinson with the same number of Rademacher
   probes. mars_jax runs the whole loop inside one ``jit`` (compile reported apart). The
   estimates are compared with each other, with a converged reference (long Lanczos run;
   Hutchinson with many probes) and, for the trace, with mars_jax evaluated on each peer's
   own probes (so that probe noise and operator disagreement are told apart). Peers that are
   not importable are reported as "not installed" and the rest still runs.
4. **Time to accuracy.** The MLP head's top eigenvalue to 1e-3 and trace to 1e-2 relative by
   the tolerance estimators (:func:`mars_jax.curvature.top_eigenvalues`,
   :func:`mars_jax.curvature.trace_to_tolerance`: plain Hutchinson one probe at a time and in
   vmapped blocks, and Krylov-deflated) and, for comparison, power iteration stopped on the same
   relative residual. Per estimator: products spent, compile and run time, the estimate, its
   error estimate and its actual error against a reference that is exact (dense ``eigh`` and
   trace of the materialised Hessian) when the model is small and otherwise Lanczos of order
   150 for the eigenvalue and the trace in closed form (:func:`mlp_exact_trace`, checked
   against the dense trace in the smoke mode). Products and errors over a few keys; times on
   the first key. No PyTorch peers here yet (PyHessian's and hessian-eigenthings' own
   tolerances are relative changes between iterations, not error estimates).

Usage::

    python benchmarks/curvature.py [--smoke] [--skip-peers] [--repeats N] [--json PATH]
        [--sections hvp,lanczos,peers,peers-large,tolerance]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # benchmarks/quiet.py: the quiet-machine protocol

HVP_TARGET = 1.6
SPEEDUP_TARGET = 2.0

MINILM = {
    "layers": 6,
    "hidden": 384,
    "heads": 12,
    "intermediate": 1536,
    "vocab": 30522,
    "positions": 512,
    "seq_len": 64,
}
SMOKE_ENCODER = {
    "layers": 1,
    "hidden": 32,
    "heads": 2,
    "intermediate": 64,
    "vocab": 500,
    "positions": 16,
    "seq_len": 16,
}

TOLERANCE: dict[str, Any] = {
    "eig_rtol": 1e-3,
    "trace_rtol": 1e-2,
    "max_order": 150,  # top_eigenvalues' basis buffer
    "power_max_iters": 3000,
    "max_matvecs": 20_000,  # trace_to_tolerance's budget
    "min_probes": 20,  # trace_to_tolerance's probes before its standard error is trusted
    "max_sketch": 100,  # the deflated trace's basis buffer
    "block": 8,  # the blocked variant's probes per vmapped block
    "seeds": 3,  # keys per estimator: matvec counts and errors (load-independent)
    "repeats": 3,  # timed runs on the first key
    "dense_limit": 3000,  # exact eigh/trace reference up to this many parameters
    "peer_repeats": 5,  # (5) timed rounds, tools interleaved
    "peer_trace_rtol": 1e-2,  # (5) the trace's accuracy
    "peer_max_iters": 4000,  # (5) most power iterations / Lanczos steps a peer is given
}
FULL: dict[str, Any] = {
    "features": 384,
    "hidden": (256,),
    "large_hidden": (1024, 1024),
    "pairs": 512,
    "encoder": MINILM,
    "encoder_pairs": 8,
    "loop_products": {"mlp": 20, "encoder": 5},
    "orders": (10, 50, 100),
    "power_iters": 20,
    "probes": 50,
    "repeats": 5,
    "peer_repeats": 11,
    "large_peer_repeats": 3,
    "compile_repeats": 5,
    "pause_s": quiet.PAUSE_S,
    "reference_order": 150,
    "large_reference_order": 100,
    "reference_probes": 2000,
    "large_reference_probes": 500,
    "tolerance": TOLERANCE,
}
SMOKE: dict[str, Any] = {
    "features": 32,
    "hidden": (32,),
    "large_hidden": None,
    "pairs": 64,
    "encoder": SMOKE_ENCODER,
    "encoder_pairs": 4,
    "loop_products": {"mlp": 5, "encoder": 2},
    "orders": (10, 100),  # compile time against the order: two orders show it
    "power_iters": 20,
    "probes": 50,
    "repeats": 3,
    "peer_repeats": 3,
    "large_peer_repeats": 3,
    "compile_repeats": 1,
    "pause_s": 0.01,
    "reference_order": 150,
    "large_reference_order": 100,
    "reference_probes": 200,
    "large_reference_probes": 200,
    # (5): the smoke model's trace needs ~3,700 probes for 1e-2, so its smoke accuracy is 5e-2
    "tolerance": {
        **TOLERANCE,
        "seeds": 3,
        "repeats": 2,
        "peer_repeats": 2,
        "peer_trace_rtol": 5e-2,
        "peer_max_iters": 1000,
    },
}
ACTIVATION = "tanh"  # same function in torch and JAX (gelu defaults differ: erf vs tanh)


# ----------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` (which must return only once its work is done)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def aot(fn: Callable, *args: Any) -> tuple[Callable, float]:
    """``jax.jit(fn)`` compiled ahead of time for ``args``, and the compile seconds."""
    import jax

    seconds, compiled = timed(lambda: jax.jit(fn).lower(*args).compile())
    return compiled, seconds


def flops(compiled: Any) -> float | None:
    """Floating-point operations of a compiled function by XLA's cost analysis, if known."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return None if value is None else float(value)


def blocking(fn: Callable, *args: Any) -> Callable[[], Any]:
    """A thunk running ``fn(*args)`` to completion."""
    import jax

    return lambda: jax.block_until_ready(fn(*args))


def num_params(tree: Any) -> int:
    import jax

    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def rel_diff(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return abs(value - reference) / abs(reference)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- models


def mlp_setup(features: int, hidden: tuple[int, ...], pairs: int, seed: int) -> dict:
    """The library's MLP head, its parameters and a batch of random feature pairs."""
    import jax
    import jax.numpy as jnp

    from mars_jax.losses import pairwise_loss_fn
    from mars_jax.models.heads import mlp_reward_model
    from mars_jax.types import PairBatch

    model = mlp_reward_model(features, hidden, activation=ACTIVATION)
    key_params, key_chosen, key_rejected = jax.random.split(jax.random.key(seed), 3)
    params = model.init(key_params)
    batch = PairBatch(
        chosen=jax.random.normal(key_chosen, (pairs, features)),
        rejected=jax.random.normal(key_rejected, (pairs, features)),
        weight=jnp.ones((pairs,)),
    )
    name = f"MLP head {features}→{'→'.join(map(str, hidden))}→1 ({ACTIVATION})"
    return {
        "name": name,
        "params": params,
        "batch": batch,
        "reward_fn": model.reward_fn,
        "loss_fn": pairwise_loss_fn(model.reward_fn),
        "num_params": num_params(params),
        "pairs": pairs,
    }


def init_encoder(key: Any, cfg: dict) -> dict:
    """Random BERT-layout parameters (``N(0, 0.02)`` weights, as BERT's initialiser)."""
    import jax
    import jax.numpy as jnp

    hidden, inner = cfg["hidden"], cfg["intermediate"]
    keys = iter(jax.random.split(key, 4 + 6 * cfg["layers"]))

    def normal(*shape: int) -> Any:
        return 0.02 * jax.random.normal(next(keys), shape)

    def dense(n_in: int, n_out: int) -> dict:
        return {"kernel": normal(n_in, n_out), "bias": jnp.zeros((n_out,))}

    def norm() -> dict:
        return {"scale": jnp.ones((hidden,)), "bias": jnp.zeros((hidden,))}

    return {
        "embeddings": {
            "word": normal(cfg["vocab"], hidden),
            "position": normal(cfg["positions"], hidden),
            "token_type": normal(2, hidden),
            "norm": norm(),
        },
        "layers": [
            {
                "query": dense(hidden, hidden),
                "key": dense(hidden, hidden),
                "value": dense(hidden, hidden),
                "attention_out": dense(hidden, hidden),
                "attention_norm": norm(),
                "ffn_in": dense(hidden, inner),
                "ffn_out": dense(inner, hidden),
                "ffn_norm": norm(),
            }
            for _ in range(cfg["layers"])
        ],
        "head": dense(hidden, 1),
    }


def encoder_reward_fn(cfg: dict) -> Callable[[dict, dict], Any]:
    """``reward_fn(params, {"ids": [N, T], "mask": [N, T]}) -> [N]`` of a BERT encoder."""
    import jax
    import jax.numpy as jnp

    heads = cfg["heads"]

    def layer_norm(x: Any, p: dict) -> Any:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-12) * p["scale"] + p["bias"]

    def dense(x: Any, p: dict) -> Any:
        return x @ p["kernel"] + p["bias"]

    def reward_fn(params: dict, inputs: dict) -> Any:
        ids, mask = inputs["ids"], inputs["mask"]
        n, t = ids.shape
        emb = params["embeddings"]
        x = emb["word"][ids] + emb["position"][:t] + emb["token_type"][0]
        x = layer_norm(x, emb["norm"])
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        for p in params["layers"]:

            def split(y: Any) -> Any:
                return y.reshape(n, t, heads, -1)

            q, k, v = (split(dense(x, p[name])) for name in ("query", "key", "value"))
            scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1]) + bias
            context = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v)
            x = layer_norm(
                x + dense(context.reshape(n, t, -1), p["attention_out"]), p["attention_norm"]
            )
            inner = jax.nn.gelu(dense(x, p["ffn_in"]), approximate=False)
            x = layer_norm(x + dense(inner, p["ffn_out"]), p["ffn_norm"])
        pooled = jnp.sum(x * mask[..., None], axis=1) / jnp.maximum(
            jnp.sum(mask, axis=1, keepdims=True), 1.0
        )
        return dense(pooled, params["head"])[:, 0]

    return reward_fn


def encoder_setup(cfg: dict, pairs: int, seed: int) -> dict:
    """The MiniLM-shaped encoder, random weights, and random token-id pairs with padding."""
    import jax
    import jax.numpy as jnp

    from mars_jax.losses import pairwise_loss_fn
    from mars_jax.types import PairBatch

    params = init_encoder(jax.random.key(seed), cfg)
    rng = np.random.default_rng(seed)
    t = cfg["seq_len"]

    def side() -> dict:
        ids = rng.integers(0, cfg["vocab"], size=(pairs, t), dtype=np.int32)
        lengths = rng.integers(t // 2, t + 1, size=pairs)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
        return {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask)}

    batch = PairBatch(chosen=side(), rejected=side(), weight=jnp.ones((pairs,)))
    reward_fn = encoder_reward_fn(cfg)
    name = (
        f"MiniLM-shaped encoder (random weights; {cfg['layers']} layers, {cfg['hidden']} wide, "
        f"{cfg['heads']} heads, FFN {cfg['intermediate']}, vocab {cfg['vocab']}, T={t})"
    )
    return {
        "name": name,
        "params": params,
        "batch": batch,
        "reward_fn": reward_fn,
        "loss_fn": pairwise_loss_fn(reward_fn),
        "num_params": num_params(params),
        "pairs": pairs,
    }


# ----------------------------------------------------------------------------- (1) HVP cost


def product_loop(product: Callable, products: int) -> Callable:
    """``run(params, batch, vector)``: ``products`` normalised products in one ``fori_loop``.

    What an estimator pays per product: the loop is compiled once and XLA may hoist the
    products' vector-independent (primal) work out of it.
    """
    import jax

    from mars_jax.curvature import tree_norm, tree_scale

    def run(params: Any, batch: Any, vector: Any) -> Any:
        def body(_: Any, v: Any) -> Any:
            out = product(params, batch, v)
            return tree_scale(1.0 / tree_norm(out), out)

        return jax.lax.fori_loop(0, products, body, vector)

    return run


def measure_hvp_cost(setup: dict, cfg: dict, products: int, seed: int) -> dict:
    """Jitted gradient, HVP and GGN-vector product of the BT loss, interleaved medians.

    Besides one product per call (the target's measure), the HVP is also timed inside a jitted
    loop of ``products`` products, per product, with the library's operator and with the
    gradient linearised once (``jax.linearize``) outside the loop.
    """
    import jax

    from mars_jax.curvature import (
        gauss_newton_vector_product,
        hessian_vector_product,
        tree_random_like,
    )

    params, batch, loss_fn = setup["params"], setup["batch"], setup["loss_fn"]
    vector = tree_random_like(jax.random.key(seed + 1), params, kind="normal")
    hvp_op = hessian_vector_product(loss_fn)

    def linearized_loop(params: Any, batch: Any, vector: Any) -> Any:
        _, linear = jax.linearize(lambda p: jax.grad(loss_fn)(p, batch), params)
        return product_loop(lambda _p, _b, v: linear(v), products)(params, batch, vector)

    args = (params, batch, vector)
    grad, grad_compile = aot(jax.grad(loss_fn), params, batch)
    hvp, hvp_compile = aot(hvp_op, *args)
    ggn, ggn_compile = aot(gauss_newton_vector_product(setup["reward_fn"]), *args)
    loop, _ = aot(product_loop(hvp_op, products), *args)
    linear_loop, _ = aot(linearized_loop, *args)
    fns = {
        "grad": blocking(grad, params, batch),
        "hvp": blocking(hvp, *args),
        "ggn": blocking(ggn, *args),
        "hvp_loop": blocking(loop, *args),
        "linearized_loop": blocking(linear_loop, *args),
    }
    for fn in fns.values():  # warm-up
        fn()
    repeats = cfg["repeats"]
    times = quiet.interleave(fns, repeats, cfg["pause_s"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    # per-repetition ratios, so a slow moment of the machine hits both sides of one ratio
    hvp_ratios = [h / g for h, g in zip(times["hvp"], times["grad"], strict=True)]
    ratio = medians["hvp"] / medians["grad"]
    grad_flops, hvp_flops, ggn_flops = flops(grad), flops(hvp), flops(ggn)
    return {
        "model": setup["name"],
        "num_params": setup["num_params"],
        "pairs": setup["pairs"],
        "repeats": repeats,
        "grad_s": medians["grad"],
        "hvp_s": medians["hvp"],
        "ggn_s": medians["ggn"],
        "grad_compile_s": grad_compile,
        "hvp_compile_s": hvp_compile,
        "ggn_compile_s": ggn_compile,
        "hvp_over_grad": ratio,
        "hvp_over_grad_min": min(hvp_ratios),
        "hvp_over_grad_max": max(hvp_ratios),
        "ggn_over_grad": medians["ggn"] / medians["grad"],
        "grad_flops": grad_flops,
        "hvp_flops": hvp_flops,
        "ggn_flops": ggn_flops,
        "hvp_over_grad_flops": hvp_flops / grad_flops if hvp_flops and grad_flops else None,
        "ggn_over_grad_flops": ggn_flops / grad_flops if ggn_flops and grad_flops else None,
        "loop_products": products,
        "loop_hvp_per_product_s": medians["hvp_loop"] / products,
        "loop_hvp_over_grad": medians["hvp_loop"] / products / medians["grad"],
        "linearized_per_product_s": medians["linearized_loop"] / products,
        "linearized_over_grad": medians["linearized_loop"] / products / medians["grad"],
        "target": HVP_TARGET,
        "met": ratio <= HVP_TARGET,
    }


# ----------------------------------------------------------------------------- (2) Lanczos


def measure_lanczos_compile(setup: dict, cfg: dict, seed: int) -> dict:
    """Compile seconds (lower + compile, a fresh ``jit`` each time) of Lanczos per order."""
    import jax

    from mars_jax.curvature import hessian_vector_product, lanczos, tree_random_like

    params, batch = setup["params"], setup["batch"]
    orders, repeats = tuple(cfg["orders"]), cfg["compile_repeats"]
    hvp = hessian_vector_product(setup["loss_fn"])
    init = tree_random_like(jax.random.key(seed + 2), params, kind="normal")

    def make(order: int) -> Callable:
        def run(params: Any, batch: Any, init: Any) -> tuple:
            result = lanczos(lambda v: hvp(params, batch, v), init, order=order)
            return result.alphas, result.betas

        return run

    compile_times: dict[int, list[float]] = {order: [] for order in orders}
    compiled: dict[int, Callable] = {}
    for _ in range(repeats):
        for order in orders:
            compiled[order], seconds = aot(make(order), params, batch, init)
            compile_times[order].append(seconds)
    run_times = quiet.interleave(
        {str(order): blocking(compiled[order], params, batch, init) for order in orders},
        3,
        cfg["pause_s"],
    )
    rows = [
        {
            "order": order,
            "compile_s": statistics.median(compile_times[order]),
            "compile_min_s": min(compile_times[order]),
            "compile_max_s": max(compile_times[order]),
            "run_s": statistics.median(run_times[str(order)]),
        }
        for order in orders
    ]
    return {
        "model": setup["name"],
        "num_params": setup["num_params"],
        "pairs": setup["pairs"],
        "repeats": repeats,
        "rows": rows,
        "compile_ratio": rows[-1]["compile_s"] / rows[0]["compile_s"],
        "compile_ratio_of_minima": rows[-1]["compile_min_s"] / rows[0]["compile_min_s"],
        "ratio_orders": [orders[-1], orders[0]],
    }


# ----------------------------------------------------------------------------- (3) peers


def import_peers(skip: bool) -> dict[str, Any]:
    """``{"torch": module or reason, "pyhessian": ..., "hessian-eigenthings": ...}``."""
    peers: dict[str, Any] = {}
    if skip:
        return dict.fromkeys(("torch", "pyhessian", "hessian-eigenthings"), "skipped")
    for name, module in (
        ("torch", "torch"),
        ("pyhessian", "pyhessian"),
        ("hessian-eigenthings", "hessian_eigenthings"),
    ):
        try:
            peers[name] = importlib.import_module(module)
        except ImportError as error:
            peers[name] = f"not installed ({error})"
    if isinstance(peers["torch"], str):
        peers["pyhessian"] = peers["hessian-eigenthings"] = peers["torch"]
    return peers


def torch_pair_model(torch: Any, params: dict, features: int) -> Any:
    """The MLP head as a torch module mapping stacked pairs ``[2, B, D]`` to margins ``[B]``.

    The same function as ``pair_margins`` of the JAX head: one call of the head on both sides
    concatenated, margins ``chosen - rejected``.
    """
    activations = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
    layers: list[Any] = []
    for index in sorted(params["hidden"]):
        layers += [torch_linear(torch, params["hidden"][index]), activations[ACTIVATION]()]
    layers.append(torch_linear(torch, params["output"]))
    head = torch.nn.Sequential(*layers)

    class PairMargins(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, pairs: Any) -> Any:
            rewards = self.head(pairs.reshape(-1, features)).squeeze(-1)
            chosen, rejected = rewards.reshape(2, -1)
            return chosen - rejected

    return PairMargins()


def torch_linear(torch: Any, layer: dict) -> Any:
    kernel = np.asarray(layer["kernel"])
    linear = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
        linear.bias.copy_(torch.from_numpy(np.asarray(layer["bias"]).copy()))
    return linear


def torch_to_tree(tensors: list[Any], params: dict) -> dict:
    """Per-parameter torch tensors (``named_parameters`` order) as a JAX tree like ``params``."""
    import jax.numpy as jnp

    arrays = [np.asarray(t.detach().numpy(), dtype=np.float32) for t in tensors]
    layers = [params["hidden"][index] for index in sorted(params["hidden"])]
    tree: dict = {"hidden": {}, "output": {}}
    for position, index in enumerate(sorted(params["hidden"])):
        weight, bias = arrays[2 * position], arrays[2 * position + 1]
        tree["hidden"][index] = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}
    weight, bias = arrays[2 * len(layers)], arrays[2 * len(layers) + 1]
    tree["output"] = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}
    return tree


def bt_criterion(torch: Any) -> Callable:
    """PyHessian's ``criterion(outputs, targets)``: mean ``softplus(-margin)``, no targets."""

    def criterion(margins: Any, _targets: Any) -> Any:
        return torch.nn.functional.softplus(-margins).mean()

    return criterion


def measure_peers(setup: dict, cfg: dict, peers: dict, *, large: bool, seed: int) -> dict:
    """Top eigenvalue and Hutchinson trace: mars_jax against the installed peers."""
    import jax

    from mars_jax.curvature import (
        hessian_vector_product,
        hutchinson_trace,
        lanczos_eigenvalues,
        power_iteration,
        tree_dot,
        tree_random_like,
    )

    params, batch, loss_fn = setup["params"], setup["batch"], setup["loss_fn"]
    hvp = hessian_vector_product(loss_fn)
    iters, probes = cfg["power_iters"], cfg["probes"]
    repeats = cfg["large_peer_repeats" if large else "peer_repeats"]
    torch = peers["torch"]
    have_torch = not isinstance(torch, str)

    # common start vector: PyHessian's own draw, [torch.randn(p.size()) for p in params]
    if have_torch:
        torch.manual_seed(seed)
        model = torch_pair_model(torch, params, cfg["features"])
        torch_params = [p for p in model.parameters() if p.requires_grad]
        torch.manual_seed(seed)
        start_list = [torch.randn(p.size()) for p in torch_params]
        init = torch_to_tree(start_list, params)
        pairs_t = torch.from_numpy(np.stack([np.asarray(batch.chosen), np.asarray(batch.rejected)]))
        targets_t = torch.zeros(setup["pairs"])
    else:
        init = tree_random_like(jax.random.key(seed), params, kind="normal")

    # ---- mars_jax, the whole loop in one jit
    def top_eigenvalue(params: Any, batch: Any, init: Any) -> tuple:
        result = power_iteration(lambda v: hvp(params, batch, v), init, num_iters=iters)
        return result.eigenvalue, result.residual

    def make_trace(batched: bool) -> Callable:
        def trace(params: Any, batch: Any, key: Any) -> tuple:
            result = hutchinson_trace(
                lambda v: hvp(params, batch, v), key, params, num_probes=probes, batched=batched
            )
            return result.estimate, result.std_error

        return trace

    key = jax.random.key(seed + 3)
    power_c, power_compile = aot(top_eigenvalue, params, batch, init)
    loop_c, loop_compile = aot(make_trace(False), params, batch, key)
    vmap_c, vmap_compile = aot(make_trace(True), params, batch, key)

    fns: dict[str, Callable[[], Any]] = {
        "power/mars_jax": blocking(power_c, params, batch, init),
        "trace/mars_jax (lax.map)": blocking(loop_c, params, batch, key),
        "trace/mars_jax (vmap)": blocking(vmap_c, params, batch, key),
    }
    estimates: dict[str, Any] = {}

    # ---- peers
    status = {
        name: peers[name] if isinstance(peers[name], str) else "ok"
        for name in ("pyhessian", "hessian-eigenthings")
    }
    if status["pyhessian"] == "ok":
        pyhessian = peers["pyhessian"]

        def pyhessian_top() -> float:
            model.zero_grad(set_to_none=True)
            h = pyhessian.hessian(model, bt_criterion(torch), data=(pairs_t, targets_t), cuda=False)
            torch.manual_seed(seed)  # the common start vector
            values, _ = h.eigenvalues(maxIter=iters, tol=float("-inf"), top_n=1)
            model.zero_grad(set_to_none=True)
            return float(values[0])

        def pyhessian_trace() -> float:
            model.zero_grad(set_to_none=True)
            h = pyhessian.hessian(model, bt_criterion(torch), data=(pairs_t, targets_t), cuda=False)
            torch.manual_seed(seed + 4)
            samples = h.trace(maxIter=probes, tol=float("-inf"))
            model.zero_grad(set_to_none=True)
            return float(np.mean(samples))

        fns["power/pyhessian"] = pyhessian_top
        fns["trace/pyhessian"] = pyhessian_trace

    if status["hessian-eigenthings"] == "ok":
        eigenthings = peers["hessian-eigenthings"]

        def loss_of_model(module: Any, data: Any) -> Any:
            return torch.nn.functional.softplus(-module(data)).mean()

        operator = eigenthings.HessianOperator(model, [pairs_t], loss_of_model)
        start_flat = torch.cat([v.reshape(-1) for v in start_list])

        def eigenthings_top() -> float:
            value, *_ = eigenthings.power_iteration_one(
                operator, max_iter=iters, tol=0.0, init=start_flat
            )
            return float(value)

        def eigenthings_trace() -> float:
            result = eigenthings.hutchinson(
                operator, num_samples=probes, distribution="rademacher", seed=seed + 5
            )
            return float(result.estimate)

        fns["power/hessian-eigenthings"] = eigenthings_top
        fns["trace/hessian-eigenthings"] = eigenthings_trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: backward(create_graph=True) reference cycle
        for name, fn in fns.items():  # warm-up, and the estimates
            out = jax.device_get(fn())
            estimates[name] = out
        times = quiet.interleave(fns, repeats, cfg["pause_s"])

    # ---- references: a long Lanczos run and Hutchinson with many probes
    order = min(cfg["large_reference_order" if large else "reference_order"], setup["num_params"])
    ref_probes = cfg["large_reference_probes" if large else "reference_probes"]

    def reference(params: Any, batch: Any, init: Any, key: Any) -> tuple:
        def matvec(v: Any) -> Any:
            return hvp(params, batch, v)

        ritz = lanczos_eigenvalues(matvec, init, order=order, which="largest")
        trace = hutchinson_trace(matvec, key, params, num_probes=ref_probes)
        return ritz.eigenvalues[0], ritz.residuals[0], trace.estimate, trace.std_error

    ref_key = jax.random.key(seed + 6)
    ref = jax.device_get(jax.jit(reference)(params, batch, init, ref_key))
    ref_eig, ref_residual, ref_trace, ref_trace_se = (float(x) for x in ref)

    # ---- mars_jax on each peer's own probes (the operators agree; the probes differ)
    @jax.jit
    def quadratic_forms(params: Any, batch: Any, stack: Any) -> Any:
        return jax.lax.map(lambda v: tree_dot(v, hvp(params, batch, v)), stack)

    same_probe: dict[str, float] = {}
    if status["pyhessian"] == "ok":
        torch.manual_seed(seed + 4)
        drawn = []
        for _ in range(probes):
            vectors = [torch.randint_like(p, high=2) for p in torch_params]
            for vector in vectors:
                vector[vector == 0] = -1
            drawn.append(torch_to_tree(vectors, params))
        stack = jax.tree.map(lambda *leaves: np.stack(leaves), *drawn)
        same_probe["pyhessian"] = float(np.mean(quadratic_forms(params, batch, stack)))
    if status["hessian-eigenthings"] == "ok":
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed + 5)
        sizes = [p.numel() for p in torch_params]
        drawn = []
        for _ in range(probes):
            bits = torch.randint(0, 2, (sum(sizes),), dtype=torch.int64, generator=generator)
            flat = bits.to(torch.float32) * 2.0 - 1.0
            pieces = [
                piece.reshape(p.shape)
                for piece, p in zip(torch.split(flat, sizes), torch_params, strict=True)
            ]
            drawn.append(torch_to_tree(pieces, params))
        stack = jax.tree.map(lambda *leaves: np.stack(leaves), *drawn)
        same_probe["hessian-eigenthings"] = float(np.mean(quadratic_forms(params, batch, stack)))

    # ---- rows
    def median(name: str) -> float:
        return statistics.median(times[name])

    mars_power = times["power/mars_jax"]
    faster_trace = (
        "lax.map"
        if median("trace/mars_jax (lax.map)") <= median("trace/mars_jax (vmap)")
        else "vmap"
    )
    mars_trace = times[f"trace/mars_jax ({faster_trace})"]
    mars_eig = float(estimates["power/mars_jax"][0])
    mars_trace_value = float(estimates[f"trace/mars_jax ({faster_trace})"][0])

    rows: list[dict] = [
        {
            "task": "top eigenvalue",
            "tool": "mars_jax",
            "status": "ok",
            "compile_s": power_compile,
            "time_s": median("power/mars_jax"),
            "min_s": min(mars_power),
            "estimate": mars_eig,
            "residual": float(estimates["power/mars_jax"][1]),
        },
    ]
    for tool in ("pyhessian", "hessian-eigenthings"):
        rows.append(peer_row("top eigenvalue", tool, status[tool], times, estimates, mars_power))
    rows += [
        {
            "task": "trace",
            "tool": f"mars_jax ({variant})",
            "status": "ok",
            "compile_s": compile_s,
            "time_s": median(f"trace/mars_jax ({variant})"),
            "min_s": min(times[f"trace/mars_jax ({variant})"]),
            "estimate": float(estimates[f"trace/mars_jax ({variant})"][0]),
            "std_error": float(estimates[f"trace/mars_jax ({variant})"][1]),
        }
        for variant, compile_s in (("lax.map", loop_compile), ("vmap", vmap_compile))
    ]
    for tool in ("pyhessian", "hessian-eigenthings"):
        row = peer_row("trace", tool, status[tool], times, estimates, mars_trace)
        if tool in same_probe:
            row["mars_jax_same_probes"] = same_probe[tool]
            row["rel_diff_same_probes"] = rel_diff(row["estimate"], same_probe[tool])
        rows.append(row)
    for row in rows:
        reference_value = ref_eig if row["task"] == "top eigenvalue" else ref_trace
        mars_value = mars_eig if row["task"] == "top eigenvalue" else mars_trace_value
        row["rel_diff_mars_jax"] = rel_diff(row.get("estimate"), mars_value)
        row["rel_diff_reference"] = rel_diff(row.get("estimate"), reference_value)
    return {
        "model": setup["name"],
        "num_params": setup["num_params"],
        "pairs": setup["pairs"],
        "times_s": times,
        "power_iters": iters,
        "probes": probes,
        "repeats": repeats,
        "faster_trace_variant": faster_trace,
        "reference": {
            "lanczos_order": order,
            "top_eigenvalue": ref_eig,
            "ritz_residual": ref_residual,
            "trace_probes": ref_probes,
            "trace": ref_trace,
            "trace_std_error": ref_trace_se,
        },
        "rows": rows,
    }


def peer_row(
    task: str, tool: str, status: str, times: dict, estimates: dict, mars: list[float]
) -> dict:
    """A peer's row: its median time, estimate, and its time over mars_jax's.

    ``mars`` are mars_jax's times for the same task (for the trace, the faster variant's).
    The speed-up is the ratio of the medians; that of the minima (each side's least disturbed
    repetition) is kept too, as a check on a loaded machine.
    """
    key = f"{'power' if task == 'top eigenvalue' else 'trace'}/{tool}"
    if status != "ok":
        return {"task": task, "tool": tool, "status": status}
    seconds = statistics.median(times[key])
    speedup = seconds / statistics.median(mars)
    return {
        "task": task,
        "tool": tool,
        "status": "ok",
        "time_s": seconds,
        "min_s": min(times[key]),
        "estimate": float(estimates[key]),
        "speedup_of_mars_jax": speedup,
        "speedup_of_minima": min(times[key]) / min(mars),
        "met": speedup >= SPEEDUP_TARGET,
        "met_of_minima": min(times[key]) / min(mars) >= SPEEDUP_TARGET,
    }


# ----------------------------------------------------------------------------- (4) tolerance


def mlp_exact_trace(params: dict, batch: Any) -> float:
    """Exact ``tr(H)`` of the Bradley-Terry loss of a one-hidden-layer tanh MLP head.

    With pre-activations ``h_a = W x_a + b`` of the chosen and rejected sides
    (``a in {c, r}``), margin ``m = v . (tanh h_c - tanh h_r)``, per-pair weights ``c_n``
    (:func:`mars_jax.curvature.mean_weights`) and ``l(m) = softplus(-m)``, the diagonal of the
    Hessian summed over each parameter block is, per pair,
    ``l''(m) sum_j [sum_ab (x_a . x_b) g_aj g_bj + (g_cj + g_rj)^2 + (s_cj - s_rj)^2]
    + l'(m) sum_j sum_a (|x_a|^2 + 1) q_aj`` for ``W``, ``b`` and ``v`` (the output bias has no
    curvature), where ``g = dm/dh``, ``q = d^2 m / dh^2`` (diagonal) and ``s = tanh h``.
    Float64 on the host.
    """
    from mars_jax.curvature import mean_weights

    (layer,) = (params["hidden"][index] for index in sorted(params["hidden"]))
    w = np.asarray(layer["kernel"], np.float64)
    b = np.asarray(layer["bias"], np.float64)
    v = np.asarray(params["output"]["kernel"], np.float64)[:, 0]
    xc = np.asarray(batch.chosen, np.float64)
    xr = np.asarray(batch.rejected, np.float64)
    weight = np.asarray(mean_weights(batch.weight, xc.shape[0], np.float32), np.float64)
    sc, sr = np.tanh(xc @ w + b), np.tanh(xr @ w + b)
    margin = (sc - sr) @ v
    first = -1.0 / (1.0 + np.exp(margin))  # l'(m) = -sigmoid(-m)
    second = 1.0 / ((1.0 + np.exp(margin)) * (1.0 + np.exp(-margin)))  # sigmoid(m) sigmoid(-m)
    gc, gr = v * (1 - sc**2), -v * (1 - sr**2)
    qc, qr = v * (-2 * sc * (1 - sc**2)), -v * (-2 * sr * (1 - sr**2))
    nc, nr = np.sum(xc**2, axis=1)[:, None], np.sum(xr**2, axis=1)[:, None]
    ncr = np.sum(xc * xr, axis=1)[:, None]
    gauss_newton = nc * gc**2 + nr * gr**2 + 2 * ncr * gc * gr + (gc + gr) ** 2 + (sc - sr) ** 2
    residual = (nc + 1) * qc + (nr + 1) * qr
    per_pair = second * gauss_newton.sum(axis=1) + first * residual.sum(axis=1)
    return float(np.sum(weight * per_pair))


def tolerance_reference(setup: dict, tol: dict, seed: int) -> dict:
    """Top eigenvalue and trace of the Hessian: exact when small, else Lanczos + closed form."""
    import jax

    from mars_jax.curvature import (
        hessian_vector_product,
        lanczos_eigenvalues,
        materialize,
        tree_random_like,
    )

    params, batch = setup["params"], setup["batch"]
    hvp = hessian_vector_product(setup["loss_fn"])
    # the closed form is for one hidden layer; deeper heads get no trace reference
    closed_form = mlp_exact_trace(params, batch) if len(params["hidden"]) == 1 else None
    if setup["num_params"] <= tol["dense_limit"]:
        matrix = jax.jit(lambda p, b: materialize(lambda v: hvp(p, b, v), p))(params, batch)
        matrix = np.asarray(matrix, np.float64)
        matrix = (matrix + matrix.T) / 2
        dense_trace = float(np.trace(matrix))
        return {
            "kind": "dense eigh and trace of the materialised Hessian",
            "top_eigenvalue": float(np.linalg.eigvalsh(matrix)[-1]),
            "trace": dense_trace,
            "closed_form_trace": closed_form,
            "closed_form_rel_diff": rel_diff(closed_form, dense_trace),
        }
    order = min(tol["max_order"], setup["num_params"])

    def ritz(params: Any, batch: Any, init: Any) -> Any:
        return lanczos_eigenvalues(lambda v: hvp(params, batch, v), init, order=order)

    init = tree_random_like(jax.random.key(seed + 7), params, kind="normal")
    result = jax.device_get(jax.jit(ritz)(params, batch, init))
    return {
        "kind": f"Lanczos order {order} (top eigenvalue), closed form (trace)"
        if closed_form is not None
        else f"Lanczos order {order} (top eigenvalue); no exact trace for this depth",
        "top_eigenvalue": float(result.eigenvalues[0]),
        "ritz_residual": float(result.residuals[0]),
        "trace": closed_form,
        "closed_form_trace": closed_form,
    }


def measure_tolerance(setup: dict, cfg: dict, seed: int) -> dict:
    """Products, time and actual error of the tolerance estimators on one model."""
    import jax

    from mars_jax.curvature import (
        hessian_vector_product,
        power_iteration,
        top_eigenvalues,
        trace_to_tolerance,
        tree_random_like,
    )

    tol = cfg["tolerance"]
    params, batch = setup["params"], setup["batch"]
    hvp = hessian_vector_product(setup["loss_fn"])
    eig_rtol, trace_rtol = tol["eig_rtol"], tol["trace_rtol"]
    reference = tolerance_reference(setup, tol, seed)

    def eigen(params: Any, batch: Any, key: Any) -> dict:
        result = top_eigenvalues(
            lambda v: hvp(params, batch, v), key, params, rtol=eig_rtol, max_order=tol["max_order"]
        )
        return {
            "estimate": result.eigenvalues[0],
            "error_bound": result.errors[0],
            "num_matvecs": result.num_matvecs,
            "converged": result.converged,
        }

    def power(params: Any, batch: Any, key: Any) -> dict:
        init = tree_random_like(key, params, kind="normal")
        result = power_iteration(
            lambda v: hvp(params, batch, v), init, num_iters=tol["power_max_iters"], tol=eig_rtol
        )
        return {
            "estimate": result.eigenvalue,
            "error_bound": result.residual,
            "num_matvecs": result.num_iters,
            "converged": result.residual < eig_rtol,
        }

    def make_trace(method: str, block: int) -> Callable:
        def trace(params: Any, batch: Any, key: Any) -> dict:
            result = trace_to_tolerance(
                lambda v: hvp(params, batch, v),
                key,
                params,
                rtol=trace_rtol,
                max_matvecs=tol["max_matvecs"],
                method=method,
                max_sketch=tol["max_sketch"],
                block=block,
            )
            return {
                "estimate": result.estimate,
                "error_bound": result.std_error / abs(result.estimate),
                "num_matvecs": result.num_matvecs,
                "sketch_size": result.sketch_size,
                "converged": result.converged,
            }

        return trace

    estimators = {
        "top_eigenvalues": ("top eigenvalue", eig_rtol, eigen),
        "power_iteration": ("top eigenvalue", eig_rtol, power),
        "trace_to_tolerance (hutchinson, block 1)": (
            "trace",
            trace_rtol,
            make_trace("hutchinson", 1),
        ),
        f"trace_to_tolerance (hutchinson, block {tol['block']})": (
            "trace",
            trace_rtol,
            make_trace("hutchinson", tol["block"]),
        ),
        f"trace_to_tolerance (deflated, max_sketch {tol['max_sketch']})": (
            "trace",
            trace_rtol,
            make_trace("deflated", 1),
        ),
    }
    keys = [jax.random.key(seed + 100 + index) for index in range(tol["seeds"])]
    compiled: dict[str, Callable] = {}
    rows = []
    for name, (task, rtol, fn) in estimators.items():
        compiled[name], compile_s = aot(fn, params, batch, keys[0])
        runs = [jax.device_get(compiled[name](params, batch, key)) for key in keys]
        exact = reference["top_eigenvalue" if task == "top eigenvalue" else "trace"]
        errors = [rel_diff(float(run["estimate"]), exact) for run in runs]
        counts = [int(run["num_matvecs"]) for run in runs]
        first = runs[0]
        rows.append(
            {
                "task": task,
                "estimator": name,
                "rtol": rtol,
                "compile_s": compile_s,
                "estimate": float(first["estimate"]),
                "error_bound": float(first["error_bound"]),
                "rel_error": errors[0],
                "num_matvecs": counts[0],
                "sketch_size": int(first.get("sketch_size", 0)),
                "converged": bool(first["converged"]),
                "seeds": len(keys),
                "num_matvecs_all": counts,
                "rel_error_all": errors,
                "converged_all": [bool(run["converged"]) for run in runs],
            }
        )
    times = quiet.interleave(
        {name: blocking(fn, params, batch, keys[0]) for name, fn in compiled.items()},
        tol["repeats"],
        cfg["pause_s"],
    )
    for row in rows:
        seconds = times[row["estimator"]]
        row["time_s"] = statistics.median(seconds)
        row["min_s"] = min(seconds)
        row["per_matvec_s"] = row["time_s"] / row["num_matvecs"]
    return {
        "model": setup["name"],
        "num_params": setup["num_params"],
        "pairs": setup["pairs"],
        "repeats": tol["repeats"],
        "reference": reference,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- (5) accuracy


def note(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def smallest_count(
    run: Callable[[int], float], accurate: Callable[[float], bool], *, start: int, limit: int
) -> dict:
    """Smallest iteration count ``n`` with ``accurate(run(n))``: doubling, then bisection.

    The bisection stops once the bracket is within 5% (or 1) of its upper end. Returns
    ``{"count": n or None (not reached by limit), "tried": {n: estimate}}``.
    """
    tried: dict[int, float] = {}
    low, count = 0, start
    while True:
        tried[count] = run(count)
        note(f"  {count} iterations: {tried[count]:.7g}")
        if accurate(tried[count]):
            break
        if count >= limit:
            return {"count": None, "tried": tried}
        low, count = count, min(2 * count, limit)
    high = count
    while high - low > max(1, high // 20):
        middle = (low + high) // 2
        tried[middle] = run(middle)
        note(f"  {middle} iterations: {tried[middle]:.7g}")
        low, high = (low, middle) if accurate(tried[middle]) else (middle, high)
    return {"count": high, "tried": tried}


def sequential_stop(samples: np.ndarray, rtol: float, min_probes: int) -> int | None:
    """Probes after which a running Hutchinson mean first has ``std_error <= rtol |mean|``.

    The rule of :func:`mars_jax.curvature.trace_to_tolerance` (``ddof = 1``, at least
    ``min_probes``), checked after every probe; None when ``samples`` never meet it.
    """
    count = np.arange(1, samples.size + 1)
    mean = np.cumsum(samples) / count
    squares = np.cumsum(samples**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = (squares - count * mean**2) / (count - 1)
        error = np.sqrt(np.maximum(variance, 0.0) / count)
    met = (count >= min_probes) & (error <= rtol * np.abs(mean))
    return int(np.argmax(met)) + 1 if met.any() else None


def pyhessian_products(pyhessian_module: Any, fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the Hessian-vector products PyHessian spent in it (counted by a wrapper)."""
    module = importlib.import_module(f"{pyhessian_module.__name__}.hessian")
    original = module.hessian_vector_product
    count = 0

    def counting(*args: Any) -> Any:
        nonlocal count
        count += 1
        return original(*args)

    module.hessian_vector_product = counting
    try:
        return fn(), count
    finally:
        module.hessian_vector_product = original


def measure_accuracy(
    setup: dict, cfg: dict, peers: dict, *, tasks: tuple[str, ...], seed: int
) -> dict:
    """Time to a measured accuracy: mars_jax's tolerance estimators against each peer's best.

    mars_jax stops on its own error estimate (:func:`mars_jax.curvature.top_eigenvalues`,
    :func:`mars_jax.curvature.trace_to_tolerance`). Each peer method is given the smallest
    iteration count that reaches the accuracy against the reference (found by
    :func:`smallest_count` for the top eigenvalue, by the same sequential standard-error rule
    on the peer's own probes for the trace), which a user could not know in advance; it is
    then timed at that count, interleaved with mars_jax. Each peer's call with its default
    tolerance is timed too, with its actual error.
    """
    import jax

    from mars_jax.curvature import hessian_vector_product, top_eigenvalues, trace_to_tolerance

    tol = cfg["tolerance"]
    eig_rtol, trace_rtol, min_probes = tol["eig_rtol"], tol["peer_trace_rtol"], tol["min_probes"]
    params, batch = setup["params"], setup["batch"]
    hvp = hessian_vector_product(setup["loss_fn"])
    reference = tolerance_reference(setup, tol, seed)
    eig = "eigenvalue" in tasks
    trace = "trace" in tasks and reference["trace"] is not None
    ref_eig, ref_trace = reference["top_eigenvalue"], reference["trace"]
    key = jax.random.key(seed + 100)

    def eigen(params: Any, batch: Any, key: Any) -> tuple:
        result = top_eigenvalues(
            lambda v: hvp(params, batch, v), key, params, rtol=eig_rtol, max_order=tol["max_order"]
        )
        return result.eigenvalues[0], result.num_matvecs

    def trace_fn(params: Any, batch: Any, key: Any) -> tuple:
        result = trace_to_tolerance(
            lambda v: hvp(params, batch, v),
            key,
            params,
            rtol=trace_rtol,
            max_matvecs=tol["max_matvecs"],
            min_probes=min_probes,
        )
        return result.estimate, result.num_matvecs

    # each entry: (task, tool, method, thunk returning an estimate, products, stopping rule)
    entries: list[dict] = []

    def add_mars(task: str, fn: Callable, method: str) -> None:
        compiled, compile_s = aot(fn, params, batch, key)
        value, count = jax.device_get(compiled(params, batch, key))
        entries.append(
            {
                "task": task,
                "tool": "mars_jax",
                "method": method,
                "stop": "own error estimate",
                "fn": blocking(compiled, params, batch, key),
                "products": int(count),
                "estimate": float(value),
                "compile_s": compile_s,
            }
        )

    if eig:
        add_mars("top eigenvalue", eigen, f"top_eigenvalues (Lanczos, rtol {eig_rtol:g})")
    if trace:
        add_mars("trace", trace_fn, f"trace_to_tolerance (Hutchinson, rtol {trace_rtol:g})")

    torch = peers["torch"]
    status = {
        name: peers[name] if isinstance(peers[name], str) else "ok"
        for name in ("pyhessian", "hessian-eigenthings")
    }
    if status["pyhessian"] == "ok" or status["hessian-eigenthings"] == "ok":
        entries += peer_accuracy_entries(setup, cfg, peers, status, reference, eig, trace, seed)

    fns = {str(index): e["fn"] for index, e in enumerate(entries) if e["fn"] is not None}
    note(f"timing {len(fns)} methods, {tol['peer_repeats']} interleaved rounds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: backward(create_graph=True) reference cycle
        for fn in fns.values():  # warm-up
            fn()
        times = quiet.interleave(fns, tol["peer_repeats"], cfg["pause_s"])
    rows = []
    for index, entry in enumerate(entries):
        exact = ref_eig if entry["task"] == "top eigenvalue" else ref_trace
        row = {k: v for k, v in entry.items() if k != "fn"}
        row["rel_error"] = rel_diff(entry["estimate"], exact)
        if str(index) in times:
            row.update(quiet.summary(times[str(index)]))
            row["times_s"] = times[str(index)]
        rows.append(row)
    for row in rows:
        mars = next(r for r in rows if r["task"] == row["task"] and r["tool"] == "mars_jax")
        if row is not mars and "median_s" in row:
            row["ratio_of_medians"] = row["median_s"] / mars["median_s"]
            row["ratio_of_minima"] = row["min_s"] / mars["min_s"]
    return {
        "model": setup["name"],
        "num_params": setup["num_params"],
        "pairs": setup["pairs"],
        "repeats": tol["peer_repeats"],
        "eig_rtol": eig_rtol,
        "trace_rtol": trace_rtol,
        "min_probes": min_probes,
        "reference": reference,
        "peers_status": status,
        "torch_threads": None if isinstance(torch, str) else torch.get_num_threads(),
        "rows": rows,
    }


def peer_accuracy_entries(
    setup: dict,
    cfg: dict,
    peers: dict,
    status: dict,
    reference: dict,
    eig: bool,
    trace: bool,
    seed: int,
) -> list[dict]:
    """The peers' timed entries for :func:`measure_accuracy` (see there)."""
    torch = peers["torch"]
    tol = cfg["tolerance"]
    eig_rtol, trace_rtol, min_probes = tol["eig_rtol"], tol["peer_trace_rtol"], tol["min_probes"]
    ref_eig = reference["top_eigenvalue"]
    limit_eig, limit_trace = tol["peer_max_iters"], tol["max_matvecs"]
    params = setup["params"]
    torch.manual_seed(seed)
    model = torch_pair_model(torch, params, cfg["features"])
    torch_params = [p for p in model.parameters() if p.requires_grad]
    batch = setup["batch"]
    pairs_t = torch.from_numpy(np.stack([np.asarray(batch.chosen), np.asarray(batch.rejected)]))
    targets_t = torch.zeros(setup["pairs"])

    def eig_ok(value: float) -> bool:
        return abs(value - ref_eig) <= eig_rtol * abs(ref_eig)

    entries: list[dict] = []

    def add(task: str, tool: str, method: str, stop: str, fn: Callable, products: int) -> None:
        entries.append(
            {
                "task": task,
                "tool": tool,
                "method": method,
                "stop": stop,
                "fn": fn,
                "products": products,
                "estimate": float(fn()),
            }
        )

    def not_reached(task: str, tool: str, method: str, limit: int) -> None:
        entries.append(
            {
                "task": task,
                "tool": tool,
                "method": method,
                "stop": f"accuracy not reached within {limit:,} products",
                "fn": None,
                "products": limit,
                "estimate": None,
            }
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if status["pyhessian"] == "ok":
            pyhessian = peers["pyhessian"]

            def hessian() -> Any:
                model.zero_grad(set_to_none=True)
                return pyhessian.hessian(
                    model, bt_criterion(torch), data=(pairs_t, targets_t), cuda=False
                )

            def pyhessian_power(iters: int, tol_: float = float("-inf")) -> float:
                h = hessian()
                torch.manual_seed(seed)
                values, _ = h.eigenvalues(maxIter=iters, tol=tol_, top_n=1)
                model.zero_grad(set_to_none=True)
                return float(values[0])

            if eig:
                note("pyhessian: power iteration, smallest count reaching the accuracy")
                found = smallest_count(pyhessian_power, eig_ok, start=8, limit=limit_eig)
                if found["count"] is None:
                    not_reached("top eigenvalue", "pyhessian", "power iteration", limit_eig)
                else:
                    n = found["count"]
                    add(
                        "top eigenvalue",
                        "pyhessian",
                        "power iteration",
                        "smallest count reaching the accuracy",
                        lambda n=n: pyhessian_power(n),
                        n,
                    )
                _, used = pyhessian_products(pyhessian, lambda: pyhessian_power(100, 1e-3))
                add(
                    "top eigenvalue",
                    "pyhessian",
                    "power iteration",
                    "its default (maxIter=100, tol=1e-3)",
                    lambda: pyhessian_power(100, 1e-3),
                    used,
                )
            if trace:

                def pyhessian_trace(probes: int, tol_: float = float("-inf")) -> list[float]:
                    h = hessian()
                    torch.manual_seed(seed + 4)
                    samples = h.trace(maxIter=probes, tol=tol_)
                    model.zero_grad(set_to_none=True)
                    return samples

                # one stream of probes in chunks (PyHessian draws them from torch's global
                # generator), until the rule is met: the first n equal trace(maxIter=n)
                note("pyhessian: Hutchinson probes its standard error needs")
                h, samples, n = hessian(), [], None
                torch.manual_seed(seed + 4)
                while n is None and len(samples) < limit_trace:
                    samples += h.trace(maxIter=256, tol=float("-inf"))
                    n = sequential_stop(np.asarray(samples, np.float64), trace_rtol, min_probes)
                model.zero_grad(set_to_none=True)
                if n is None:
                    not_reached("trace", "pyhessian", "Hutchinson", limit_trace)
                else:
                    add(
                        "trace",
                        "pyhessian",
                        "Hutchinson",
                        "probes its standard error needs",
                        lambda n=n: float(np.mean(pyhessian_trace(n))),
                        n,
                    )
                default = pyhessian_trace(100, 1e-3)
                add(
                    "trace",
                    "pyhessian",
                    "Hutchinson",
                    "its default (maxIter=100, tol=1e-3)",
                    lambda: float(np.mean(pyhessian_trace(100, 1e-3))),
                    len(default),
                )

        if status["hessian-eigenthings"] == "ok":
            eigenthings = peers["hessian-eigenthings"]

            def loss_of_model(module: Any, data: Any) -> Any:
                return torch.nn.functional.softplus(-module(data)).mean()

            operator = eigenthings.HessianOperator(model, [pairs_t], loss_of_model)
            torch.manual_seed(seed)
            start = torch.cat([torch.randn(p.size()).reshape(-1) for p in torch_params])

            def power(iters: int | None) -> tuple[float, int]:
                kwargs = {} if iters is None else {"max_iter": iters, "tol": 0.0}
                value, _, _, used, _ = eigenthings.power_iteration_one(
                    operator, init=start, **kwargs
                )
                return float(value), used

            def lanczos(steps: int | None) -> tuple[float, int]:
                kwargs = {} if steps is None else {"k": 1, "max_iter": steps}
                if steps is not None:
                    kwargs["reorthogonalize"] = True
                result = eigenthings.lanczos(operator, which="LA", seed=seed, **kwargs)
                return float(result.eigenvalues[0]), result.iterations

            methods = (
                ("power iteration", power, "its default (max_iter=100, tol=1e-4)"),
                ("Lanczos (full reorth.)", lanczos, "its default (k=10, max_iter=20)"),
            )
            for method, fn, default_stop in methods if eig else ():
                note(f"hessian-eigenthings: {method}, smallest count reaching the accuracy")
                found = smallest_count(lambda n, fn=fn: fn(n)[0], eig_ok, start=8, limit=limit_eig)
                if found["count"] is None:
                    not_reached("top eigenvalue", "hessian-eigenthings", method, limit_eig)
                else:
                    n = found["count"]
                    add(
                        "top eigenvalue",
                        "hessian-eigenthings",
                        method,
                        "smallest count reaching the accuracy",
                        lambda fn=fn, n=n: fn(n)[0],
                        n,
                    )
                add(
                    "top eigenvalue",
                    "hessian-eigenthings",
                    method,
                    default_stop,
                    lambda fn=fn: fn(None)[0],
                    fn(None)[1],
                )
            if trace:

                def hutchinson(probes: int | None) -> Any:
                    kwargs = {} if probes is None else {"num_samples": probes}
                    return eigenthings.hutchinson(
                        operator, distribution="rademacher", seed=seed + 5, **kwargs
                    )

                note("hessian-eigenthings: Hutchinson probes its standard error needs")
                n = None
                probes = 1280  # the full model's trace needs about 1,100-1,200
                while n is None and probes <= limit_trace:
                    samples = hutchinson(probes).samples.double().numpy()
                    n = sequential_stop(samples, trace_rtol, min_probes)
                    probes *= 2
                if n is None:
                    not_reached("trace", "hessian-eigenthings", "Hutchinson", limit_trace)
                else:
                    add(
                        "trace",
                        "hessian-eigenthings",
                        "Hutchinson",
                        "probes its standard error needs",
                        lambda n=n: hutchinson(n).estimate,
                        n,
                    )
                add(
                    "trace",
                    "hessian-eigenthings",
                    "Hutchinson",
                    "its default (num_samples=100)",
                    lambda: hutchinson(None).estimate,
                    100,
                )
    return entries


# ----------------------------------------------------------------------------- output


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def hvp_table(rows: list[dict]) -> str:
    lines = [
        "| model | params | pairs | grad (ms) | HVP (ms) | GGN-vp (ms) | HVP / grad [min–max] "
        f"| GGN-vp / grad | HVP ≤ {HVP_TARGET}× grad | FLOPs HVP / grad (GGN-vp / grad) "
        "| products in loop | HVP in loop / grad | linearised HVP in loop / grad |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['num_params']:,} | {row['pairs']} "
            f"| {row['grad_s'] * 1e3:.1f} | {row['hvp_s'] * 1e3:.1f} | {row['ggn_s'] * 1e3:.1f} "
            f"| {row['hvp_over_grad']:.2f} [{row['hvp_over_grad_min']:.2f}–"
            f"{row['hvp_over_grad_max']:.2f}] | {row['ggn_over_grad']:.2f} "
            f"| {'PASS' if row['met'] else 'FAIL'} "
            f"| {fmt(row['hvp_over_grad_flops'], '.2f')} "
            f"({fmt(row['ggn_over_grad_flops'], '.2f')}) "
            f"| {row['loop_products']} "
            f"| {row['loop_hvp_over_grad']:.2f} | {row['linearized_over_grad']:.2f} |"
        )
    return "\n".join(lines)


def lanczos_table(report: dict) -> str:
    lines = [
        "| Lanczos order | compile (s) median [min–max] | run (ms) |",
        "|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['order']} | {row['compile_s']:.2f} [{row['compile_min_s']:.2f}–"
            f"{row['compile_max_s']:.2f}] | {row['run_s'] * 1e3:.1f} |"
        )
    high, low = report["ratio_orders"]
    lines.append(
        f"\ncompile({high}) / compile({low}) = {report['compile_ratio']:.2f} (medians), "
        f"{report['compile_ratio_of_minima']:.2f} (minima); {report['model']}, "
        f"{report['num_params']:,} params, {report['pairs']} pairs, {report['repeats']} compiles "
        "per order, orders interleaved"
    )
    return "\n".join(lines)


def peers_table(report: dict) -> str:
    ref = report["reference"]
    lines = [
        f"{report['model']}, {report['num_params']:,} params, {report['pairs']} pairs; "
        f"{report['power_iters']} power iterations, {report['probes']} Hutchinson probes; "
        f"median of {report['repeats']}. Reference: top eigenvalue {ref['top_eigenvalue']:.6g} "
        f"(Lanczos order {ref['lanczos_order']}, "
        f"Ritz residual estimate {ref['ritz_residual']:.1e}), "
        f"trace {ref['trace']:.6g} ± {ref['trace_std_error']:.2g} "
        f"(Hutchinson, {ref['trace_probes']} probes).\n",
        "| task | tool | compile (s) | time (ms) median [min] | peer / mars_jax (of minima) "
        "| estimate "
        "| rel. diff vs mars_jax | rel. diff vs reference | mars_jax on the peer's probes "
        f"| mars_jax ≥ {SPEEDUP_TARGET:g}× faster (of minima) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['task']} | {row['tool']} | {row['status']} |||||||| - |")
            continue
        estimate = fmt(row["estimate"], ".6g")
        if "std_error" in row:
            estimate += f" ± {row['std_error']:.2g}"
        same = "-"
        if "rel_diff_same_probes" in row:
            same = f"{row['mars_jax_same_probes']:.6g} (diff {row['rel_diff_same_probes']:.1e})"
        met = "-"
        if "met" in row:
            met = (
                f"{'PASS' if row['met'] else 'FAIL'} ({'PASS' if row['met_of_minima'] else 'FAIL'})"
            )
        speedup = "-"
        if "speedup_of_mars_jax" in row:
            speedup = f"{row['speedup_of_mars_jax']:.2f} ({row['speedup_of_minima']:.2f})"
        lines.append(
            f"| {row['task']} | {row['tool']} | {fmt(row.get('compile_s'), '.2f')} "
            f"| {row['time_s'] * 1e3:.1f} [{row['min_s'] * 1e3:.1f}] | {speedup} "
            f"| {estimate} | {fmt(row['rel_diff_mars_jax'], '.1e')} "
            f"| {fmt(row['rel_diff_reference'], '.1e')} | {same} | {met} |"
        )
    return "\n".join(lines)


def tolerance_table(report: dict) -> str:
    ref = report["reference"]
    extra = ""
    if "ritz_residual" in ref:
        extra = f", Ritz residual estimate {ref['ritz_residual']:.1e}"
    if ref.get("closed_form_rel_diff") is not None:
        extra += f"; closed-form trace vs dense: rel. diff {ref['closed_form_rel_diff']:.1e}"
    lines = [
        f"{report['model']}, {report['num_params']:,} params, {report['pairs']} pairs. "
        f"Reference ({ref['kind']}): top eigenvalue {ref['top_eigenvalue']:.7g}, trace "
        f"{ref['trace']:.7g}{extra}. Products and errors on the first key [min–max over "
        f"{report['rows'][0]['seeds']} keys]; times on the first key, median of "
        f"{report['repeats']} [min].\n",
        "| task | estimator | rtol | products [min–max] | compile (s) | time (ms) median [min] "
        "| per product (ms) | estimate | error estimate (rel.) | actual rel. error [max] "
        "| converged (all keys) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        counts = row["num_matvecs_all"]
        products = f"{row['num_matvecs']:,} [{min(counts):,}–{max(counts):,}]"
        if row["sketch_size"]:
            products += f" (sketch {row['sketch_size']})"
        lines.append(
            f"| {row['task']} | {row['estimator']} | {row['rtol']:g} | {products} "
            f"| {row['compile_s']:.2f} | {row['time_s'] * 1e3:.0f} [{row['min_s'] * 1e3:.0f}] "
            f"| {row['per_matvec_s'] * 1e3:.2f} | {row['estimate']:.7g} "
            f"| {row['error_bound']:.1e} | {fmt(row['rel_error'], '.1e')} "
            f"[{max(row['rel_error_all']):.1e}] "
            f"| {'yes' if row['converged'] else 'no'} "
            f"({sum(row['converged_all'])}/{row['seeds']}) |"
        )
    return "\n".join(lines)


def accuracy_table(report: dict) -> str:
    ref = report["reference"]
    trace = "" if ref["trace"] is None else f", trace {ref['trace']:.7g}"
    lines = [
        f"{report['model']}, {report['num_params']:,} params, {report['pairs']} pairs; "
        f"accuracy: top eigenvalue within {report['eig_rtol']:g}, trace within "
        f"{report['trace_rtol']:g} (relative) of the reference ({ref['kind']}: top eigenvalue "
        f"{ref['top_eigenvalue']:.7g}{trace}); times: median [min] of {report['repeats']} "
        "rounds, tools interleaved; ratio = peer time / mars_jax time (medians; minima).\n",
        "| task | tool | method | stopped by | products | time (ms) median [min] "
        "| peer / mars_jax (minima) | estimate | actual rel. error | within accuracy |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        rtol = report["eig_rtol"] if row["task"] == "top eigenvalue" else report["trace_rtol"]
        timing, ratio = "-", "-"
        if "median_s" in row:
            timing = f"{row['median_s'] * 1e3:.0f} [{row['min_s'] * 1e3:.0f}]"
        if "ratio_of_medians" in row:
            ratio = f"{row['ratio_of_medians']:.2f} ({row['ratio_of_minima']:.2f})"
        error = row["rel_error"]
        within = "-" if error is None else "yes" if error <= rtol else "no"
        lines.append(
            f"| {row['task']} | {row['tool']} | {row['method']} | {row['stop']} "
            f"| {row['products']:,} | {timing} | {ratio} | {fmt(row['estimate'], '.7g')} "
            f"| {fmt(error, '.1e')} | {within} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


SECTIONS = ("hvp", "lanczos", "peers", "peers-large", "tolerance", "accuracy", "accuracy-large")
PEER_SECTIONS = {"peers", "peers-large", "accuracy", "accuracy-large"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--skip-peers", action="store_true", help="do not import torch or peers")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all; the smoke mode "
        "has no large model)",
    )
    parser.add_argument("--repeats", type=int, help="timed repetitions, median reported")
    parser.add_argument(
        "--accuracy-tasks",
        default="eigenvalue,trace",
        help="(5): comma-separated subset of eigenvalue,trace (accuracy-large: eigenvalue only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    quiet.add_argument(parser)
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    args.accuracy_tasks = tuple(name.strip() for name in args.accuracy_tasks.split(","))
    if not set(args.accuracy_tasks) <= {"eigenvalue", "trace"}:
        parser.error(f"--accuracy-tasks: choose from eigenvalue,trace, got {args.accuracy_tasks}")
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print markdown tables; return (and optionally save) the numbers.

    Refuses to start on a loaded machine unless ``--allow-loaded`` (or ``--smoke``, whose
    numbers are not measurements); see ``benchmarks/quiet.py``.
    """
    args = parse_args(argv)
    machine = quiet.QuietRun(allow_loaded=args.allow_loaded or args.smoke)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.repeats:
        cfg["repeats"] = cfg["peer_repeats"] = cfg["large_peer_repeats"] = args.repeats
        cfg["tolerance"] = {**cfg["tolerance"], "peer_repeats": args.repeats}
    sections = set(args.sections)
    if not cfg["large_hidden"]:
        sections -= {"peers-large", "accuracy-large"}
    wants_peers = not args.skip_peers and bool(sections & PEER_SECTIONS)
    peers = import_peers(not wants_peers)  # torch before jax; either order works

    import jax

    load = {"start": os.getloadavg()[0]}
    mlp = mlp_setup(cfg["features"], cfg["hidden"], cfg["pairs"], args.seed)
    large = None
    if sections & {"peers-large", "accuracy-large"}:
        large = mlp_setup(cfg["features"], cfg["large_hidden"], cfg["pairs"], args.seed)
    hvp_rows: list[dict] = []
    if "hvp" in sections:
        encoder = encoder_setup(cfg["encoder"], cfg["encoder_pairs"], args.seed)
        hvp_rows = [
            measure_hvp_cost(setup, cfg, cfg["loop_products"][kind], args.seed)
            for kind, setup in (("mlp", mlp), ("encoder", encoder))
        ]
        load["after_hvp"] = os.getloadavg()[0]
    lanczos_report = None
    if "lanczos" in sections:
        lanczos_report = measure_lanczos_compile(mlp, cfg, args.seed)
        load["after_lanczos"] = os.getloadavg()[0]
    peer_reports = []
    if "peers" in sections:
        peer_reports.append(measure_peers(mlp, cfg, peers, large=False, seed=args.seed))
        load["after_peers"] = os.getloadavg()[0]
    if "peers-large" in sections:
        peer_reports.append(measure_peers(large, cfg, peers, large=True, seed=args.seed))
        load["after_peers_large"] = os.getloadavg()[0]
    tolerance_report = None
    if "tolerance" in sections:
        tolerance_report = measure_tolerance(mlp, cfg, args.seed)
        load["after_tolerance"] = os.getloadavg()[0]
    accuracy_reports = []
    if "accuracy" in sections:
        accuracy_reports.append(
            measure_accuracy(mlp, cfg, peers, tasks=args.accuracy_tasks, seed=args.seed)
        )
        load["after_accuracy"] = os.getloadavg()[0]
    if "accuracy-large" in sections:
        accuracy_reports.append(
            measure_accuracy(large, cfg, peers, tasks=("eigenvalue",), seed=args.seed)
        )
        load["after_accuracy_large"] = os.getloadavg()[0]
    torch = peers["torch"]
    report = {
        "mode": "smoke" if args.smoke else "full",
        "seed": args.seed,
        "sections": [name for name in SECTIONS if name in sections],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "versions": {
            name: package_version(name)
            for name in ("jax", "jaxlib", "flax", "torch", "pyhessian", "hessian-eigenthings")
        },
        "torch_threads": None if isinstance(torch, str) else torch.get_num_threads(),
        "load_average_1min": load,
        "peers_status": {
            name: value if isinstance(value, str) else "ok" for name, value in peers.items()
        },
        "hvp": hvp_rows,
        "lanczos_compile": lanczos_report,
        "peers": peer_reports,
        "tolerance": tolerance_report,
        "accuracy": accuracy_reports,
    }
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    print(
        f"curvature benchmark ({report['mode']}), {report['backend']} ({report['device']}), "
        f"{versions}; torch threads {report['torch_threads']}; {machine.describe()}; "
        "1-minute load average " + ", ".join(f"{k} {v:.2f}" for k, v in load.items()) + "\n"
    )
    if hvp_rows:
        print("### (1) HVP cost against a gradient\n")
        print(machine.mark(hvp_table(hvp_rows)) + "\n")
    if lanczos_report:
        print("### (2) Lanczos compile time against its order\n")
        print(machine.mark(lanczos_table(lanczos_report)) + "\n")
    if peer_reports:
        print("### (3) Against PyHessian and hessian-eigenthings\n")
        for peer_report in peer_reports:
            print(machine.mark(peers_table(peer_report)) + "\n")
    if tolerance_report:
        print("### (4) Time to accuracy\n")
        print(machine.mark(tolerance_table(tolerance_report)) + "\n")
    if accuracy_reports:
        print("### (5) Time to a measured accuracy against the peers\n")
        for accuracy_report in accuracy_reports:
            print(machine.mark(accuracy_table(accuracy_report)) + "\n")
    report["machine"] = machine.finish()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
