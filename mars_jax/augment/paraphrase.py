"""Paraphrase requests to a :class:`TextGenerator`, with filters, retries and fallbacks.

A source text is paraphrased ``count`` times, each sample from its own random stream. A sample is
cleaned (a leading "Here is the paraphrase:"-style line and wrapping quotes are stripped) and
rejected when it is empty, identical to the source after whitespace and case normalisation, a
duplicate of an accepted paraphrase, or when its length in characters is outside
``[min_length_ratio, max_length_ratio]`` times the source's, widened by :data:`LENGTH_SLACK`
characters on each side (so that a one-word reply such as "Yes." may be reworded at all). Rejected
samples are redrawn with new seeds for at most ``max_retries`` more rounds; a source still short of
``count`` keeps the paraphrases it has (counted in ``short_sources``).

Long sources are cut to about ``max_source_tokens`` tokens, or fewer where a paraphrase of that
length would not fit in ``max_new_tokens`` (:func:`source_token_limit`), at a word boundary, keeping
the start, before they are sent, and the length filter then compares against the cut text. Token
counts are estimated without the generator's tokenizer as ``max(4/3 per word, 1 per 4 characters)``,
which is close to byte-level BPE on English prose; each request's ``max_new_tokens`` is 1.5 times
the source's estimate plus 16, rounded up to a power of two (at least 32) and capped, so that
requests of similar length share one generation call.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mars_jax.augment.generator import TextGenerator
from mars_jax.settings import setting

__all__ = [
    "LENGTH_SLACK",
    "PROMPT_TEMPLATE",
    "RESPONSE_TEMPLATE",
    "ParaphraseResult",
    "ParaphraseSettings",
    "approx_tokens",
    "clean_output",
    "derive_seed",
    "new_token_budget",
    "paraphrase_texts",
    "rejection_reason",
    "source_token_limit",
    "truncate_source",
]

PROMPT_TEMPLATE = (
    "Paraphrase the following request. Keep its meaning, tone and length. "
    "Reply with the paraphrase only.\n\n{text}"
)
RESPONSE_TEMPLATE = (
    "Paraphrase the following text. Keep its meaning, tone and length. "
    "Reply with the paraphrase only.\n\n{text}"
)

_BOILERPLATE = re.compile(
    r"^\s*(?:(?:sure|certainly|okay|ok)\b[^\n:]{0,40}?[.!,]\s*)?"
    r"(?:here(?:'s| is| are)\b[^\n:]{0,80}:|"
    r"(?:paraphrased?|rephrased|reworded)(?:\s+(?:text|version|request|question|answer))?\s*:)"
    r"\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d"}
REJECTION_REASONS = ("empty", "identical", "length", "duplicate")
LENGTH_SLACK = 16
"""Characters added to both ends of the accepted length range."""


@dataclass(frozen=True)
class ParaphraseSettings:
    """Sampling, filter and retry settings of paraphrase requests."""

    max_new_tokens: int = setting(
        256, "cap on new tokens per paraphrase (sized from the source below the cap)", min=1
    )
    temperature: float = setting(0.8, "sampling temperature", min_exclusive=0)
    top_p: float = setting(0.95, "nucleus sampling mass", min_exclusive=0, max=1)
    min_length_ratio: float = setting(
        0.5, "shortest accepted paraphrase, as a fraction of the source's length", min=0
    )
    max_length_ratio: float = setting(
        2.0, "longest accepted paraphrase, as a multiple of the source's length", min_exclusive=0
    )
    max_retries: int = setting(2, "extra sampling rounds for rejected paraphrases", min=0)
    max_source_tokens: int = setting(
        384, "longer sources (estimated tokens) are cut for paraphrasing (0: never)", min=0
    )


class ParaphraseResult(NamedTuple):
    """Paraphrases per input text (``[]`` for an empty text) and counts.

    ``stats`` counts unique non-empty ``sources``, ``truncated`` sources, ``requested`` and
    ``generated`` samples, ``accepted`` ones, ``rejected_<reason>`` per filter,
    ``retry_rounds`` and ``short_sources`` (fewer than ``count`` paraphrases in the end).
    """

    paraphrases: list[list[str]]
    stats: Counter


def approx_tokens(text: str) -> int:
    """Estimated token count of ``text``: ``max(4/3 per word, 1 per 4 characters)``.

    >>> approx_tokens("three short words")
    5
    """
    return max(math.ceil(len(text.split()) * 4 / 3), math.ceil(len(text) / 4))


def truncate_source(text: str, max_tokens: int) -> tuple[str, bool]:
    """The longest word-boundary prefix of ``text`` within ``max_tokens`` (0: no limit).

    Returns the (possibly) cut text and whether it was cut.
    """
    if max_tokens <= 0 or approx_tokens(text) <= max_tokens:
        return text, False
    end = 0
    for count, word in enumerate(re.finditer(r"\S+", text), start=1):
        if max(math.ceil(count * 4 / 3), math.ceil(word.end() / 4)) > max_tokens:
            break
        end = word.end()
    return text[:end], True


def new_token_budget(source: str, cap: int) -> int:
    """``max_new_tokens`` for a paraphrase of ``source``: see the module docstring."""
    wanted = math.ceil(1.5 * approx_tokens(source)) + 16
    return min(cap, max(32, 1 << (wanted - 1).bit_length()))


def source_token_limit(settings: ParaphraseSettings) -> int:
    """The token limit of a source: ``max_source_tokens``, lowered so that a paraphrase
    of the source's length still fits in ``max_new_tokens`` (else the length filter would
    reject every sample of a long source)."""
    fits = max(1, math.floor((settings.max_new_tokens - 16) / 1.5))
    if settings.max_source_tokens <= 0:
        return fits
    return min(settings.max_source_tokens, fits)


def clean_output(text: str) -> str:
    """A generated paraphrase without a leading boilerplate line or wrapping quotes."""
    text = _BOILERPLATE.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def rejection_reason(
    source: str, candidate: str, accepted: Sequence[str], settings: ParaphraseSettings
) -> str | None:
    """Why ``candidate`` (already cleaned) is not a paraphrase of ``source``; ``None`` if it is.

    One of ``"empty"``, ``"identical"``, ``"length"``, ``"duplicate"``.
    """
    if not candidate.strip():
        return "empty"
    normal = _normalise(candidate)
    if normal == _normalise(source):
        return "identical"
    shortest = settings.min_length_ratio * len(source) - LENGTH_SLACK
    longest = settings.max_length_ratio * len(source) + LENGTH_SLACK
    if not shortest <= len(candidate) <= longest:
        return "length"
    if any(normal == _normalise(other) for other in accepted):
        return "duplicate"
    return None


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any printable parts (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def paraphrase_texts(
    generator: TextGenerator,
    texts: Sequence[str],
    count: int,
    settings: ParaphraseSettings,
    *,
    template: str,
    seed: int,
) -> ParaphraseResult:
    """Up to ``count`` accepted paraphrases of each text (see the module docstring).

    Equal texts are paraphrased once. Retry round ``a`` sends one request per missing
    paraphrase, in one call per new-token budget ``b`` with the seed
    ``derive_seed(seed, a, b)``; repeated requests for one source differ because the
    generator draws each prompt's sample from the seed and the prompt's position.

    Args:
      generator: the chat model.
      texts: ``N`` source texts.
      count: paraphrases wanted per text.
      settings: sampling, filters and retries.
      template: the request, with ``{text}`` where the source goes.
      seed: base seed of this call.
    """
    stats: Counter = Counter()
    unique = list(dict.fromkeys(text for text in texts if text.strip()))
    sources = []
    limit = source_token_limit(settings)
    for text in unique:
        source, cut = truncate_source(text, limit)
        sources.append(source)
        stats["truncated"] += cut
    stats["sources"] += len(unique)
    stats["requested"] += count * len(unique)
    accepted: list[list[str]] = [[] for _ in unique]
    for attempt in range(1 + settings.max_retries):
        pending = [i for i in range(len(unique)) if len(accepted[i]) < count]
        if not pending:
            break
        stats["retry_rounds"] += attempt > 0
        groups: dict[int, list[int]] = {}  # one request per missing paraphrase, by budget
        for i in pending:
            budget = new_token_budget(sources[i], settings.max_new_tokens)
            groups.setdefault(budget, []).extend([i] * (count - len(accepted[i])))
        for budget, group in sorted(groups.items()):
            outputs = generator.generate(
                [template.format(text=sources[i]) for i in group],
                max_new_tokens=budget,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=derive_seed(seed, attempt, budget),
            )
            if len(outputs) != len(group):
                raise ValueError(f"generator gave {len(outputs)} replies to {len(group)}")
            stats["generated"] += len(group)
            for i, output in zip(group, outputs, strict=True):
                candidate = clean_output(output)
                reason = rejection_reason(sources[i], candidate, accepted[i], settings)
                if reason is None and len(accepted[i]) < count:
                    accepted[i].append(candidate)
                elif reason is not None:
                    stats[f"rejected_{reason}"] += 1
    stats["accepted"] += sum(len(found) for found in accepted)
    stats["short_sources"] += sum(len(found) < count for found in accepted)
    by_text = dict(zip(unique, accepted, strict=True))
    return ParaphraseResult([list(by_text.get(text, [])) for text in texts], stats)
