"""The semantic pre-step of the revised method (v2): sharpen pairs whose responses are close.

The distance of a pair is ``1 - cos(e(chosen), e(rejected))`` for sentence embeddings ``e``
of the two responses. Pairs closer than a threshold (by default the mean distance over the
pairs given) get their chosen response rewritten by the language model with
:data:`SEMANTIC_TEMPLATE`, which shows the request and both answers and asks for the better
answer rewritten to be clearly better (more helpful, accurate and clear, same topic). A
rewrite is kept only if it is non-empty and the distance to the rejected response grows;
otherwise the pair keeps its chosen response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mars_jax.augment.generator import TextGenerator
from mars_jax.augment.paraphrase import clean_output, new_token_budget, truncate_source
from mars_jax.types import Embed

__all__ = ["SEMANTIC_TEMPLATE", "SemanticResult", "response_distances", "semantic_refine"]


SEMANTIC_TEMPLATE = (
    "Here is a request and two answers to it. Rewrite the better answer so that it is "
    "clearly better than the worse one: more helpful, more accurate and clearer, on the same "
    "topic. Reply with the rewritten answer only.\n\n"
    "Request: {prompt}\n\nBetter answer: {chosen}\n\nWorse answer: {rejected}"
)


class SemanticResult(NamedTuple):
    """Outcome of :func:`semantic_refine` for ``B`` pairs.

    Attributes:
      chosen: ``B`` chosen responses, rewritten where ``kept``.
      distance: ``[B]`` float distances before.
      new_distance: ``[B]`` float distances after (equal to ``distance`` where not kept).
      kept: ``[B]`` bool, the rewrite was kept.
      stats: ``pairs``, ``threshold``, ``below_threshold``, ``rewritten`` (non-empty
        rewrites) and ``kept``.
    """

    chosen: list[str]
    distance: np.ndarray
    new_distance: np.ndarray
    kept: np.ndarray
    stats: dict[str, float]


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return 1.0 - np.sum(a * b, axis=1) / norms


def response_distances(embed: Embed, chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
    """``[B]`` distances ``1 - cos`` between the embeddings of chosen and rejected."""
    vectors = np.asarray(embed([*chosen, *rejected]))
    return _cosine_distance(vectors[: len(chosen)], vectors[len(chosen) :])


def semantic_refine(
    generator: TextGenerator,
    embed: Embed,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    threshold: float | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_source_tokens: int = 384,
    seed: int = 0,
) -> SemanticResult:
    """Rewrite the chosen response of pairs closer than ``threshold`` (default: the mean).

    Args:
      generator: the chat model.
      embed: ``embed(texts) -> [N, D]`` sentence embeddings.
      prompts, chosen, rejected: ``B`` texts each.
      threshold: pairs with a smaller distance are rewritten; ``None``: the mean distance.
      max_new_tokens: cap on the rewrite's length (sized from the chosen text below it).
      temperature, top_p, seed: sampling.
      max_source_tokens: each text in the request is cut to about this many tokens.
    """
    distance = response_distances(embed, chosen, rejected)
    limit = float(np.mean(distance)) if threshold is None else float(threshold)
    targets = np.flatnonzero(distance < limit)
    new_chosen = list(chosen)
    new_distance = distance.copy()
    kept = np.zeros(len(chosen), bool)
    rewrites: list[tuple[int, str]] = []
    if targets.size:

        def cut(text: str) -> str:
            return truncate_source(text, max_source_tokens)[0]

        outputs = generator.generate(
            [
                SEMANTIC_TEMPLATE.format(
                    prompt=cut(prompts[i]), chosen=cut(chosen[i]), rejected=cut(rejected[i])
                )
                for i in targets
            ],
            max_new_tokens=max(new_token_budget(chosen[i], max_new_tokens) for i in targets),
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        rewrites = [(int(i), clean_output(out)) for i, out in zip(targets, outputs, strict=True)]
        rewrites = [(i, text) for i, text in rewrites if text]
    if rewrites:
        rows = [i for i, _ in rewrites]
        after = response_distances(
            embed, [text for _, text in rewrites], [rejected[i] for i in rows]
        )
        for (i, text), value in zip(rewrites, after, strict=True):
            if value > distance[i]:
                new_chosen[i], new_distance[i], kept[i] = text, value, True
    stats = {
        "pairs": len(chosen),
        "threshold": limit,
        "below_threshold": int(targets.size),
        "rewritten": len(rewrites),
        "kept": int(kept.sum()),
    }
    return SemanticResult(new_chosen, distance, new_distance, kept, stats)
