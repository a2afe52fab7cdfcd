"""Real preference pairs as the refinement loop's data: read, clean, split, embed, augment.

The frozen-encoder path: every response is read as ``prompt [SEP] response`` (truncated from
the left, so the response survives a long dialogue; or as ``data.representation`` says) and
embedded once by a frozen backbone (all-MiniLM-L6-v2 by default, or an LLM such as SmolLM2
reading chat turns: :mod:`mars_jax.models.backbone`), with an on-disk cache reused across
runs. The features are standardised with the base pairs' statistics. The synthetic pool
(``data.pool``) comes from a cheap representation-level generator on those features
(:mod:`mars_jax.data.cheap_pools`: perturbations or mixup, in the same paraphrase scheme as
the synthetic suite), or from a paraphrase pool directory written by ``mars-jax augment``: its
texts are embedded by the same backbone (through the same cache) and matched to the base
pairs by base key; a pool pair of a base pair whose label was flipped is flipped too, since
it inherits its base pair's label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.data.cheap_pools import make_cheap_pool
from mars_jax.data.floor_report import text_floors
from mars_jax.data.pool import PoolContents, base_keys
from mars_jax.data.selection import (
    REPRESENTATIONS,
    STANDARDIZE,
    TextDataSettings,
    flip_labels,
    read_pool_option,
    select_base_pairs,
    selection_info,
)
from mars_jax.data.table import (
    PairTable,
)
from mars_jax.errors import MarsError
from mars_jax.margins import response_pairs
from mars_jax.models.backbone import open_backbone
from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache
from mars_jax.models.encoder import l2_normalize
from mars_jax.models.tokenize import TextFormat
from mars_jax.refine import RefineData
from mars_jax.types import PairBatch, Pool, PyTree, ResponsePairs

__all__ = [
    "Standardizer",
    "build_text_data",
    "directory_pool",
    "prompts_and_responses",
    "represent",
    "with_length",
]


def directory_pool(
    contents: PoolContents,
    base: PairTable,
    flipped: np.ndarray,
    inputs: Callable[[list[str], list[str]], PyTree],
) -> tuple[Pool, dict[str, Any]]:
    """The pool read from a pool directory for ``base`` (unflipped texts), as model inputs.

    ``inputs(prompts, responses)`` gives the model inputs of ``N`` (prompt, response) rows (a
    pytree with leading axis ``N``): features ``[N, D]``, or token ids for a fine-tuned
    encoder.
    """
    directory = contents.directory
    keys = base_keys(base.prompt, base.chosen, base.rejected)
    per_base = contents.pairs_for(keys)
    counts = np.array([len(pairs) for pairs in per_base])
    if not counts.sum():
        raise MarsError(
            f"data.pool: {directory} has no pool pairs for any of the {len(keys)} base pairs "
            "(was it built for other files or another data selection?)"
        )
    prompts, chosen, rejected = [], [], []
    for pairs, flip in zip(per_base, flipped, strict=True):
        for pair in pairs:
            prompts.append(pair.prompt)
            chosen.append(pair.rejected if flip else pair.chosen)
            rejected.append(pair.chosen if flip else pair.rejected)
    found = inputs(prompts + prompts, chosen + rejected)
    pool = Pool(
        chosen=jax.tree.map(lambda a: a[: len(chosen)], found),
        rejected=jax.tree.map(lambda a: a[len(chosen) :], found),
        source=jnp.asarray(np.repeat(np.arange(len(keys)), counts), jnp.int32),
        offsets=jnp.asarray(np.concatenate([[0], np.cumsum(counts)]), jnp.int32),
    )
    info = {
        "pool_dir": str(directory),
        "pool_generator": contents.manifest.get("generator"),
        "base_pairs_with_pool_pairs": int(np.count_nonzero(counts)),
    }
    return pool, info


def represent(
    representation: str,
    prompts: Sequence[str],
    responses: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
    text_format: TextFormat,
) -> np.ndarray:
    """Frozen features ``[N, D']`` of ``N`` responses to their prompts.

    Args:
      representation: ``joined`` (prompt and response as one text, ``D' = D``),
        ``response`` (the response encoded alone, ``D' = D``) or ``pair`` (prompt and
        response encoded apart, features ``[r, p * r]`` of the two embeddings scaled to unit
        length, ``D' = 2 D``: the response, and how it aligns with its prompt).
      prompts: ``[N]`` prompt texts.
      responses: ``[N]`` response texts.
      embed: texts to ``[n, D]`` embeddings (e.g. through the embedding cache).
      text_format: how the backbone writes each text (``prompt [SEP] response`` for BERT,
        chat turns for an LLM).
    """
    if representation == "joined":
        joined = text_format.joined
        return embed([joined(p, r) for p, r in zip(prompts, responses, strict=True)])
    if representation == "response":
        return embed([text_format.response(r) for r in responses])
    if representation == "pair":
        distinct = list(dict.fromkeys(prompts))
        texts = [text_format.response(r) for r in responses]
        vectors = embed(texts + [text_format.prompt(p) for p in distinct])
        where = {prompt: index for index, prompt in enumerate(distinct)}
        r = l2_normalize(vectors[: len(responses)])
        p = l2_normalize(vectors[len(responses) :])[[where[q] for q in prompts]]
        return np.concatenate([r, p * r * np.sqrt(r.shape[1])], axis=1)
    raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")


def prompts_and_responses(parts: Sequence[PairTable]) -> tuple[list[str], list[str]]:
    """The ``2 * sum(N)`` prompts and responses a run embeds: each table's chosen responses,
    then its rejected ones, table after table."""
    sides = [(part, responses) for part in parts for responses in (part.chosen, part.rejected)]
    prompts = [prompt for part, _ in sides for prompt in part.prompt]
    return prompts, [response for _, side in sides for response in side]


def with_length(vectors: np.ndarray, responses: Sequence[str]) -> np.ndarray:
    """``vectors`` ``[N, D]`` with one more column: ``log(1 + characters)`` of each response."""
    lengths = np.log1p([len(response) for response in responses]).astype(vectors.dtype)
    return np.concatenate([vectors, lengths[:, None]], axis=1)


class Standardizer(NamedTuple):
    """Affine map of features fit on the base pairs: ``(x - shift) / scale`` per feature.

    ``features`` scales by the spread of all base responses (across prompts); ``difference``
    scales by the spread of the chosen-minus-rejected differences, so the within-pair
    difference has unit scale on every feature however small it is next to the prompts'
    spread (both centre on the base responses' mean).
    """

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, kind: str, chosen: np.ndarray, rejected: np.ndarray) -> Standardizer:
        """Fit on the base pairs' features ``[N, D]`` (chosen, rejected)."""
        both = np.concatenate([chosen, rejected])
        if kind == "features":
            spread = both.std(axis=0)
        elif kind == "difference":
            spread = (chosen - rejected).std(axis=0)
        else:
            raise ValueError(f"standardize must be one of {STANDARDIZE}, got {kind!r}")
        return cls(both.mean(axis=0), spread + 1e-6)

    def __call__(self, array: np.ndarray) -> jnp.ndarray:
        return jnp.asarray((array - self.shift) / self.scale, jnp.float32)


def build_text_data(
    data: TextDataSettings, *, progress: bool = False
) -> tuple[RefineData, dict[str, Any]]:
    """The run's data from the preference files in ``data.paths`` (progress bars optional)."""
    contents = read_pool_option(data.pool)
    selection = select_base_pairs(data)
    base, flipped = flip_labels(selection.base, rate=data.label_flip_rate, seed=data.seed)
    held = selection.held

    encoder = open_backbone(
        data.encoder, pooling=data.pooling, max_length=data.max_length, layer=data.layer
    )
    cache = EmbeddingCache(Path(data.cache_dir).expanduser())
    cache_stats = {"hits": 0, "misses": 0}

    def embed(texts: list[str]) -> np.ndarray:
        found, stats = embed_with_cache(
            encoder, texts, cache, batch_size=data.embed_batch_size, progress=progress
        )
        cache_stats["hits"] += stats.hits
        cache_stats["misses"] += stats.misses
        return found

    validation = selection.validation
    parts = (base, held) if validation is None else (base, held, validation)
    prompts, responses = prompts_and_responses(parts)
    vectors = represent(data.representation, prompts, responses, embed, encoder.text_format)
    if data.length_feature:
        vectors = with_length(vectors, responses)
    num_base, num_held = len(base), len(held)
    base_chosen, base_rejected, held_chosen, held_rejected, *rest = np.split(
        vectors, np.cumsum([num_base, num_base, num_held, num_held])
    )
    features = Standardizer.fit(data.standardize, base_chosen, base_rejected)
    found_stats = dict(cache_stats)

    def pairs(chosen: np.ndarray, rejected: np.ndarray) -> PairBatch:
        return PairBatch(features(chosen), features(rejected), jnp.ones(len(chosen), jnp.float32))

    base_pairs = pairs(base_chosen, base_rejected)
    keys = [f"{p}\x00{r}" for p, r in zip(prompts, responses, strict=True)][: 2 * num_base]
    base_responses = _response_pairs(keys, np.concatenate([base_chosen, base_rejected]), features)
    pool_info: dict[str, Any] = {"pool": data.pool}
    if contents is None:
        pool = make_cheap_pool(
            data.pool,
            data.seed,
            base_pairs.chosen,
            base_pairs.rejected,
            paraphrases=data.paraphrases,
            perturbation_scale=data.perturbation_scale,
            prompt_shift_scale=data.prompt_shift_scale,
            mixup_scale=data.mixup_scale,
        )
    else:

        def pool_inputs(prompts: list[str], responses: list[str]) -> jnp.ndarray:
            before = dict(cache_stats)
            found = represent(data.representation, prompts, responses, embed, encoder.text_format)
            if data.length_feature:
                found = with_length(found, responses)
            pool_info["pool_embedding_cache"] = {
                name: cache_stats[name] - before[name] for name in before
            }
            return features(found)

        pool, found_info = directory_pool(contents, selection.base, flipped, pool_inputs)
        pool_info |= found_info
    info = {
        **selection_info(data.paths, selection, flipped),
        "num_pool_pairs": int(pool.source.shape[0]),
        **pool_info,
        "encoder": encoder.identity,
        "representation": data.representation,
        "standardize": data.standardize,
        "embedding_cache": found_stats,
        "feature_dim": int(vectors.shape[1]),
    }
    if base_responses is not None:
        info["num_base_responses"] = int(base_responses.responses.shape[0])
    heldout = pairs(held_chosen, held_rejected)
    info["floors"] = text_floors(
        held.chosen,
        held.rejected,
        tuple(np.asarray(a) for a in (*base_pairs[:2], *heldout[:2])),
        base.group,
    )
    validation_pairs = None
    if validation is not None:
        validation_pairs = pairs(*np.split(rest[0], 2))
    return RefineData(base_pairs, pool, heldout, base_responses, validation_pairs), info


def _response_pairs(
    texts: list[str], vectors: np.ndarray, features: Callable[[np.ndarray], jnp.ndarray]
) -> ResponsePairs | None:
    """The base pairs as rows of their distinct responses, when some response is in several
    pairs (ranked data: ``K`` responses per prompt); else None.

    Args:
      texts: ``[2N]`` a key of each pair's chosen response (same key, same response), then
        of each rejected response.
      vectors: ``[2N, D]`` their embeddings, in the same order.
      features: embeddings to model inputs.
    """
    count = len(texts) // 2
    first, chosen, rejected = response_pairs(texts[:count], texts[count:])
    if len(first) == len(texts):
        return None
    return ResponsePairs(features(vectors[first]), jnp.asarray(chosen), jnp.asarray(rejected))
