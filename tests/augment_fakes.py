"""Deterministic stand-ins for the language model in the augmentation tests (not a test file),
and for the text encoder in the embedding-cache fault tests.

Also run as a script by the kill-and-resume test: ``python augment_fakes.py OUT NUM_PAIRS
CHUNKS`` builds a pool with a fake generator that SIGKILLs its own process once CHUNKS chunks
are written (a kill mid-build that no timing decides).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mars_jax.augment.builder import AugmentSettings
from mars_jax.augment.paraphrase import ParaphraseSettings
from mars_jax.data.table import PairTable


class GeneratorStopped(RuntimeError):
    """Raised by a fake generator after its allowed number of calls."""


class FakeGenerator:
    """Reverses the source's words and appends a tag drawn from (source, seed, position).

    Like the real generator, a reply depends on the seed and the prompt's position in the
    call, so a source requested several times in one call gets different replies.

    With ``bad=True`` about one reply in four is unusable: empty, the source itself, or
    three times too long; every reply starts with a "Here is the paraphrase:" line.
    """

    def __init__(self, *, bad: bool = False, fail_after: int | None = None, delay: float = 0):
        self.bad = bad
        self.fail_after = fail_after
        self.delay = delay
        self.calls = 0
        self.requests: list[tuple[str, int, int]] = []

    @property
    def identity(self) -> dict:
        return {"name": "fake", "bad": self.bad}

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        system_prompt: str | None = None,
    ) -> list[str]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise GeneratorStopped(f"stopped after {self.fail_after} calls")
        time.sleep(self.delay)
        replies = []
        for index, prompt in enumerate(prompts):
            self.requests.append((prompt, seed, max_new_tokens))
            source = prompt.split("\n\n", 1)[1]
            draw = int(hashlib.sha256(f"{source}|{seed}|{index}".encode()).hexdigest()[:8], 16)
            reply = " ".join(reversed(source.split())) + f" t{draw % 1000}"
            if self.bad and draw % 12 == 0:
                reply = ""
            elif self.bad and draw % 12 == 1:
                reply = source
            elif self.bad and draw % 12 == 2:
                reply = source * 3
            replies.append(f"Here is the paraphrase:\n{reply}")
        return replies


class HashEncoder:
    """A stand-in for TextEncoder in cache tests: 4 numbers drawn from each text's bytes."""

    cache_key = "hash-encoder"
    dim = 4

    def __init__(self) -> None:
        self.identity = {"name": "hash-encoder"}
        self.embedded = 0

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, progress: bool, on_batch=None):
        self.embedded += len(texts)
        vectors = np.stack([self.vector(text) for text in texts])
        for start in range(0, len(texts), batch_size) if on_batch is not None else ():
            rows = np.arange(start, min(start + batch_size, len(texts)))
            on_batch(rows, vectors[rows])
        return vectors

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=4).astype(np.float32)


def make_table(num_pairs: int, *, seed: int = 0, name: str = "pairs.jsonl") -> PairTable:
    """``num_pairs`` distinct pairs over a tiny vocabulary, two per prompt."""
    words = [f"w{i}" for i in range(90)]

    def text(n: int, k: int) -> str:
        return " ".join(words[(n * 7 + j * 13 + seed) % 90] for j in range(k))

    return PairTable.from_columns(
        prompt=[f"{text(i // 2, 6)} q{i // 2}" for i in range(num_pairs)],
        chosen=[f"{text(i, 5)} good{i}" for i in range(num_pairs)],
        rejected=[f"{text(i + 500, 5)} bad{i}" for i in range(num_pairs)],
        group_key=[""] * num_pairs,
        margin=[float("nan")] * num_pairs,
        line=list(range(1, num_pairs + 1)),
        source=name,
    )


SETTINGS = AugmentSettings(
    prompt_paraphrases=3,
    chosen_paraphrases=2,
    rejected_paraphrases=2,
    chunk_size=4,
    paraphrase=ParaphraseSettings(max_retries=3),
)


class KillingGenerator(FakeGenerator):
    """Kills its own process (SIGKILL) at the first call after ``chunks`` chunks are on disk."""

    def __init__(self, out: Path, chunks: int) -> None:
        super().__init__(bad=True)
        self.out, self.chunks = out, chunks

    def generate(self, prompts: Sequence[str], **options) -> list[str]:
        if len(list(self.out.glob("chunk-*.jsonl.gz"))) >= self.chunks:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(prompts, **options)


if __name__ == "__main__":
    from mars_jax.augment.builder import build_pool

    out, num_pairs, chunks = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    generator = KillingGenerator(out, chunks)
    build_pool(make_table(num_pairs), generator, out, SETTINGS, sources=[], progress=False)
