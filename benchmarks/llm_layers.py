"""Layer sweep of a frozen LLM backbone (issue 13): which block's last-token state to read.

For a config's data (built as the runner builds it: split, base, held-out and validation
pairs), runs the LLM once per text not yet cached, keeping the last token's state after every
chosen block, and files each layer's vectors in the embedding cache under the key
``data.layer=L`` uses (so ``mars-jax run ... data.layer=L`` finds them). Then trains the
config's head per layer (method ``none``, ``--seeds``) and writes one JSON line per (layer,
seed) to ``--out``: validation and held-out accuracy and the run's floors. The layer is chosen
on the validation accuracy only; held-out is reported beside it, never tuned on.

  python benchmarks/llm_layers.py configs/tldr.toml data.encoder=SmolLM2-135M-Instruct \\
      data.max_length=192 data.representation=response --out benchmarks/results/realtext/x.jsonl
  python benchmarks/llm_layers.py --table benchmarks/results/realtext/x.jsonl
  python benchmarks/llm_layers.py --smoke     # a tiny random Llama (used by a test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np

from mars_jax.data.selection import flip_labels, select_base_pairs
from mars_jax.data.text import prompts_and_responses, represent
from mars_jax.models.backbone import open_backbone
from mars_jax.models.embedding_cache import EmbeddingCache, text_key
from mars_jax.models.llm_features import LlamaFeatures, resolve_layer
from mars_jax.models.tokenize import TextFormat
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data, text_settings
from mars_jax.runner.experiment import run_experiment


def run_texts(config_path: str | None, overrides: list[str], text_format: TextFormat) -> list[str]:
    """The distinct texts a run embeds (base, held-out and validation pairs), as the backbone
    writes them (``text_format``), in first-use order."""
    data = text_settings(load_config(config_path, overrides))
    selection = select_base_pairs(data)
    base, _ = flip_labels(selection.base, rate=data.label_flip_rate, seed=data.seed)
    parts = [base, selection.held] + (
        [] if selection.validation is None else [selection.validation]
    )
    prompts, responses = prompts_and_responses(parts)
    recorded: list[str] = []

    def record(texts: list[str]) -> np.ndarray:
        recorded.extend(texts)
        return np.ones((len(texts), 1), np.float32)

    represent(data.representation, prompts, responses, record, text_format)
    return list(dict.fromkeys(recorded))


def extract_layers(
    backbone: LlamaFeatures,
    texts: Sequence[str],
    layers: Sequence[int],
    cache: EmbeddingCache,
    *,
    batch_size: int,
    save_every: int = 256,
) -> dict[str, float | None]:
    """Files the last-token state of ``texts`` after each of ``layers`` in ``cache``, under
    each layer's own key, in one forward pass per batch of the texts some layer lacks."""
    views = [backbone.at_layer(layer) for layer in layers]
    keys = [text_key(text) for text in texts]
    cached = []
    for view in views:
        cache.check_meta(view.cache_key, view.identity)
        cached.append(set(cache.get(view.cache_key, keys)))
    missing = [i for i, key in enumerate(keys) if any(key not in found for found in cached)]
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def save() -> None:
        rows = np.concatenate([rows for rows, _ in pending])
        vectors = np.concatenate([vectors for _, vectors in pending])  # [b, K, D]
        for k, (view, found) in enumerate(zip(views, cached, strict=True)):
            new = [j for j, row in enumerate(rows) if keys[missing[row]] not in found]
            if new:
                new_keys = [keys[missing[rows[j]]] for j in new]
                cache.add(view.cache_key, new_keys, vectors[new, k], meta=view.identity)
                found.update(new_keys)
        pending.clear()

    def on_batch(rows: np.ndarray, vectors: np.ndarray) -> None:
        pending.append((np.asarray(rows), np.array(vectors, np.float32)))
        if sum(len(rows) for rows, _ in pending) >= save_every:
            save()

    started = time.perf_counter()
    if missing:
        backbone.embed_layers(
            [texts[i] for i in missing], layers, batch_size=batch_size, on_batch=on_batch
        )
        if pending:
            save()
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "extracted": len(missing),
        "seconds": seconds,
        "texts_per_second": len(missing) / seconds if missing else None,
    }


def sweep(config_path: str | None, base: list[str], args: argparse.Namespace) -> list[dict]:
    """Extracts every layer in one pass, then trains per layer and seed; returns the records."""
    data = text_settings(load_config(config_path, base))
    backbone = open_backbone(data.encoder, pooling=data.pooling, max_length=data.max_length)
    if not isinstance(backbone, LlamaFeatures):
        raise SystemExit(f"{data.encoder}: the layer sweep needs an LLM backbone")
    num_layers = backbone.config.num_layers
    layers = [resolve_layer(layer, num_layers) for layer in args.layers or range(1, num_layers + 1)]
    texts = run_texts(config_path, base, backbone.text_format)
    cache = EmbeddingCache(Path(data.cache_dir).expanduser())
    extraction = extract_layers(backbone, texts, layers, cache, batch_size=data.embed_batch_size)
    print(json.dumps({"extraction": extraction, "layers": layers}), flush=True)
    records = []
    for layer in layers:
        layer_overrides = [*base, f"data.layer={layer}"]
        # The run's own data builder, handed this backbone at the layer (the weights loaded and
        # fingerprinted once) instead of reopening data.encoder for every layer.
        at_layer = backbone.at_layer(layer)
        with mock.patch("mars_jax.data.text.open_backbone", return_value=at_layer):
            built = build_data(load_config(config_path, layer_overrides))
        for seed in args.seeds:
            overrides = [
                *layer_overrides,
                f"train.seed={seed}",
                'refine.methods=["none"]',
                "output.plots=false",
                "output.progress=false",
                "eval.num_bootstrap=0",
            ]
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                summary = run_experiment(
                    load_config(config_path, overrides), Path(run_dir), data=built
                )
            result = summary["methods"]["none"]
            record = {
                "config": config_path,
                "overrides": overrides,
                "layer": layer,
                "num_layers": num_layers,
                "seed": seed,
                "validation": result.get("validation", {}).get("accuracy"),
                "heldout": result["final"]["accuracy"],
                "floors": {k: v["accuracy"] for k, v in summary.get("floors", {}).items()},
                "embedding_cache": built[1]["embedding_cache"],
                "extraction": extraction,
                "seconds": time.perf_counter() - started,
            }
            print(json.dumps(record), flush=True)
            records.append(record)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
    print(table(records))
    return records


def table(records: list[dict]) -> str:
    """A markdown table: per layer, validation and held-out accuracy in % (mean over seeds)
    and the floors; the layer of best validation accuracy among those with the most seeds
    (ties: the deeper) is marked."""
    by_layer: dict[int, list[dict]] = {}
    for record in records:
        by_layer.setdefault(record["layer"], []).append(record)
    mean = lambda rows, get: 100 * float(np.mean([get(r) for r in rows]))  # noqa: E731
    validation = {
        layer: mean(rows, lambda r: r["validation"] or 0.0) for layer, rows in by_layer.items()
    }
    most = max(len(rows) for rows in by_layer.values())
    chosen = max(
        (layer for layer, rows in by_layer.items() if len(rows) == most),
        key=lambda layer: (validation[layer], layer),
    )
    lines = [
        "| layer | seeds | validation % | held-out % | length floor % | probe floor % |",
        "|---|---|---|---|---|---|",
    ]
    for layer, rows in sorted(by_layer.items()):
        floors = rows[0]["floors"]
        mark = " (chosen)" if layer == chosen else ""
        lines.append(
            f"| {layer}{mark} | {len(rows)} | {validation[layer]:.1f} "
            f"| {mean(rows, lambda r: r['heldout']):.1f} "
            f"| {100 * floors.get('length', float('nan')):.1f} "
            f"| {100 * floors.get('linear_probe', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def smoke(args: argparse.Namespace) -> int:
    """Both layers of a tiny random Llama on pairs whose chosen response is longer; a second
    sweep must find every layer's vectors in the cache."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_llama import write_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rng = np.random.default_rng(1)
        words = lambda n, lo, hi: " ".join(f"w{int(i)}" for i in rng.integers(lo, hi, n))  # noqa: E731
        lines = [
            {"prompt": prompt, "chosen": words(8, 0, 45), "rejected": words(3, 45, 90)}
            for prompt in (words(6, 0, 90) for _ in range(30))
            for _ in range(2)
        ]
        (root / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        overrides = [
            "data.suite=pairs",
            f"data.paths=['{root / 'pairs.jsonl'}']",
            f"data.encoder={write_tiny_model(root / 'llama')[0]}",
            f"data.cache_dir={root / 'cache'}",
            "data.representation=response",
            "data.max_length=32",
            "data.num_base_pairs=30",
            "data.num_heldout_pairs=12",
            "data.validation_fraction=0.2",
            "refine.rounds=1",
        ]
        args.seeds, args.layers, args.out = [0], [], None
        first = sweep("configs/tiny.toml", overrides, args)
        again = sweep("configs/tiny.toml", overrides, args)
    extracted = [r["extraction"]["extracted"] for r in (first[0], again[0])]
    misses = [r["embedding_cache"]["misses"] for r in first + again]
    return (
        0 if len(first) == 2 and extracted[0] > 0 and extracted[1] == 0 and not any(misses) else 1
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*", help="SECTION.KEY=VALUE for every run")
    parser.add_argument("--layers", nargs="+", type=int, default=[], help="default: every block")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out")
    parser.add_argument("--smoke", action="store_true", help="a tiny random Llama, seconds")
    parser.add_argument("--table", nargs="+", help="print the table of these JSON-lines files")
    args = parser.parse_args(argv)
    if args.table:
        lines = [line for path in args.table for line in Path(path).read_text().splitlines()]
        print(table([json.loads(line) for line in lines]))
        return 0
    if args.smoke:
        return smoke(args)
    return 0 if sweep(args.config, args.overrides, args) else 1


if __name__ == "__main__":
    sys.exit(main())
