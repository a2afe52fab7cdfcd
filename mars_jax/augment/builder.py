"""Build a paraphrase pool for a table of base pairs, chunk by chunk, resumable.

The base pairs (deduplicated by :func:`~mars_jax.data.pool.base_key`) are processed in
table order in chunks of ``chunk_size``. For each chunk: the optional semantic step rewrites
close pairs' chosen responses (:mod:`mars_jax.augment.semantic`, with the mean distance over
all base pairs as threshold), then prompts, chosen and rejected texts are paraphrased
(:func:`~mars_jax.augment.paraphrase.paraphrase_texts`), the pairing scheme makes the pool
pairs, and the chunk file is written atomically, followed by the manifest with updated counts.
Seeds derive from ``settings.seed`` and the chunk's first base key, never from the order of
calls, so an interrupted build that is resumed writes the same chunks as one that was not.

On restart, the manifest is compared with this build's generator identity, settings,
sources and base-pair selection; a difference is refused unless ``force`` (then the new
build adds to the pool, and the manifest records the new settings and the earlier ones).
Base pairs that a chunk already covers are skipped. While a chunk is being built, every reply
of the generator is appended (one write, synced) to a journal ``.journal-KEY.jsonl`` beside
the chunks, keyed by a hash of the request; a build that resumes replays those replies
instead of generating them again, so after a kill only the one call in flight is repeated.
The journal is deleted once its chunk is written. A full disk or an unwritable directory
stops the build with a :class:`~mars_jax.errors.MarsError`; the chunks written so far stay,
and running the same command again resumes. A base pair whose prompt gets no accepted
paraphrase uses its original prompt (counted); one whose chosen or rejected response gets
none has no pool pairs (counted), and the refinement loop then draws its budget from the
whole pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mars_jax.augment.generator import TextGenerator
from mars_jax.augment.paraphrase import (
    PROMPT_TEMPLATE,
    RESPONSE_TEMPLATE,
    ParaphraseSettings,
    derive_seed,
    paraphrase_texts,
)
from mars_jax.augment.semantic import (
    SEMANTIC_TEMPLATE,
    Embed,
    response_distances,
    semantic_refine,
)
from mars_jax.data.pool import (
    MANIFEST_NAME,
    PoolPair,
    base_keys,
    chunk_numbers,
    chunk_path,
    is_pool_dir,
    pair_indices,
    read_manifest,
    read_pool,
    write_chunk,
    write_manifest,
)
from mars_jax.data.table import PairTable
from mars_jax.errors import MarsError
from mars_jax.files import disk_error
from mars_jax.settings import setting

__all__ = ["AugmentSettings", "BuildReport", "build_pool", "file_digests"]

PAIRING = "pair (c, r) uses prompt paraphrase (c + r) mod P; the original pair is not included"
_COMPARED = ("generator", "settings", "sources", "selection")


@dataclass(frozen=True)
class AugmentSettings:
    """What a pool build does per base pair (recorded in the manifest)."""

    prompt_paraphrases: int = setting(5, "paraphrases of each prompt", min=1)
    chosen_paraphrases: int = setting(5, "paraphrases of each chosen response", min=1)
    rejected_paraphrases: int = setting(5, "paraphrases of each rejected response", min=1)
    seed: int = setting(0, "seed of the paraphrase samples", min=0)
    chunk_size: int = setting(32, "base pairs per chunk file (the unit of resuming)", min=1)
    semantic: bool = setting(
        False, "first rewrite pairs whose responses are closer than the mean (v2 method)"
    )
    paraphrase: ParaphraseSettings = field(default_factory=ParaphraseSettings)

    def to_json(self) -> dict[str, Any]:
        """The settings, with the request templates, as a JSON-able dict."""
        templates = {"prompt": PROMPT_TEMPLATE, "response": RESPONSE_TEMPLATE}
        if self.semantic:
            templates["semantic"] = SEMANTIC_TEMPLATE
        return {**dataclasses.asdict(self), "templates": templates}


class BuildReport(NamedTuple):
    """What :func:`build_pool` did.

    Attributes:
      out_dir: the pool directory.
      resumed: base pairs that were already in the pool.
      built: base pairs processed now.
      chunks_written: chunk files written now.
      counts: the manifest's counts after the build.
    """

    out_dir: Path
    resumed: int
    built: int
    chunks_written: int
    counts: dict[str, Any]


def file_digests(paths: Sequence[str]) -> list[dict[str, str]]:
    """``{"name", "sha256"}`` of each file (``sha256`` empty for a name that is no file)."""
    digests = []
    for name in paths:
        digest = hashlib.sha256()
        if Path(name).is_file():
            with open(name, "rb") as handle:
                for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                    digest.update(block)
        digests.append({"name": os.path.basename(name), "sha256": digest.hexdigest()})
    return digests


class _JournaledGenerator:
    """A generator whose replies are journaled to ``path`` and replayed from it.

    The journal holds one JSON line per call: ``{"request": HASH, "replies": [...]}``, where
    ``HASH`` is a sha256 of the prompts and the call's options. A torn last line (a kill
    during the write) is ignored.
    """

    def __init__(self, generator: TextGenerator, path: Path) -> None:
        self.generator = generator
        self.path = path
        self.replayed = 0
        self._replies: dict[str, list[str]] = {}
        if path.is_file():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) < len(data):  # the torn tail of a killed write: cut it off,
                with _writing(path):  # so that the next line starts on a line of its own
                    os.truncate(path, len(complete))
            for line in complete.splitlines():
                try:
                    entry = json.loads(line)
                    self._replies[entry["request"]] = list(entry["replies"])
                except (ValueError, KeyError, TypeError):
                    continue

    @property
    def identity(self) -> dict[str, Any]:
        return self.generator.identity

    def generate(self, prompts: Sequence[str], **options: Any) -> list[str]:
        request = hashlib.sha256(
            json.dumps([list(prompts), options], sort_keys=True).encode("utf-8")
        ).hexdigest()
        if request in self._replies:
            self.replayed += 1
            return list(self._replies[request])
        replies = list(self.generator.generate(prompts, **options))
        line = json.dumps({"request": request, "replies": replies}, ensure_ascii=False) + "\n"
        with _writing(self.path):
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(descriptor, line.encode("utf-8"))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        self._replies[request] = replies
        return replies


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable pool directory into a MarsError naming ``path``."""
    try:
        yield
    except OSError as error:
        reason = disk_error(error)
        if reason is None:
            raise
        raise MarsError(
            f"{path}: cannot write ({reason}); the pool keeps the chunks written so far: make "
            "room, then run the same command again to resume"
        ) from None


def journal_path(directory: Path, first_key: str) -> Path:
    """The reply journal of the chunk that starts with base pair ``first_key``."""
    return directory / f".journal-{first_key}.jsonl"


def _counts(chunks: Sequence[Mapping[str, Any]], keys: set[str]) -> dict[str, Any]:
    stats: Counter = Counter()
    covered: set[str] = set()
    for header in chunks:
        stats.update(header.get("stats", {}))
        covered.update(header["base_keys"])
    return {
        "base_pairs": len(keys),
        "base_pairs_done": len(covered & keys),
        "base_pairs_in_pool": len(covered),
        "chunks": len(chunks),
        "pool_pairs": sum(int(header.get("pairs", 0)) for header in chunks),
        "stats": dict(sorted(stats.items())),
    }


def _comparable(value: Any) -> Any:
    """A manifest field without the generator's file location (a pool resumes in another
    environment as long as the weights' sha256 is the same)."""
    if isinstance(value, Mapping) and "sha256" in value:
        return {key: item for key, item in value.items() if key != "path"}
    return value


def _check_resume(out: Path, manifest: Mapping[str, Any], *, force: bool) -> dict[str, Any]:
    """The existing manifest's compared fields, or an error naming those that differ."""
    existing = read_manifest(out)
    differ = [
        name for name in _COMPARED if _comparable(existing.get(name)) != _comparable(manifest[name])
    ]
    if differ and not force:
        raise MarsError(
            f"{out}: this pool was built with different {', '.join(differ)}; resume it with "
            "the same settings, add to it with --force, or choose a new --out"
        )
    earlier = list(existing.get("earlier_builds", []))
    if differ:
        earlier.append({name: existing.get(name) for name in _COMPARED})
    return {"earlier_builds": earlier}


def _paraphrase_chunk(
    generator: TextGenerator,
    keys: Sequence[str],
    rows: PairTable,
    settings: AugmentSettings,
    *,
    embed: Embed | None,
    threshold: float | None,
) -> tuple[list[PoolPair], Counter]:
    """The pool pairs of one chunk of base pairs, and the chunk's counts."""
    chunk_seed = derive_seed(settings.seed, keys[0])
    stats: Counter = Counter()
    chosen = list(rows.chosen)
    paraphrase = settings.paraphrase
    if settings.semantic:
        result = semantic_refine(
            generator,
            embed,
            rows.prompt,
            rows.chosen,
            rows.rejected,
            threshold=threshold,
            max_new_tokens=paraphrase.max_new_tokens,
            temperature=paraphrase.temperature,
            top_p=paraphrase.top_p,
            max_source_tokens=paraphrase.max_source_tokens,
            seed=derive_seed(chunk_seed, "semantic"),
        )
        chosen = result.chosen
        stats.update({f"semantic_{k}": v for k, v in result.stats.items() if k != "threshold"})
    variants = {}
    for role, texts, count, template in (
        ("prompt", rows.prompt, settings.prompt_paraphrases, PROMPT_TEMPLATE),
        ("chosen", chosen, settings.chosen_paraphrases, RESPONSE_TEMPLATE),
        ("rejected", rows.rejected, settings.rejected_paraphrases, RESPONSE_TEMPLATE),
    ):
        result = paraphrase_texts(
            generator,
            texts,
            count,
            paraphrase,
            template=template,
            seed=derive_seed(chunk_seed, role),
        )
        variants[role] = result.paraphrases
        stats.update({f"{role}_{k}": v for k, v in result.stats.items()})
    pairs = []
    for j, key in enumerate(keys):
        prompts = variants["prompt"][j]
        if not prompts:
            stats["original_prompt_used"] += bool(rows.prompt[j].strip())
            prompts = [rows.prompt[j]]
        chosen_variants, rejected_variants = variants["chosen"][j], variants["rejected"][j]
        indices = pair_indices(len(prompts), len(chosen_variants), len(rejected_variants))
        stats["base_pairs_without_pool_pairs"] += not indices
        pairs += [
            PoolPair(key, p, c, r, prompts[p], chosen_variants[c], rejected_variants[r])
            for p, c, r in indices
        ]
    return pairs, stats


def build_pool(
    table: PairTable,
    generator: TextGenerator,
    out_dir: str | os.PathLike[str],
    settings: AugmentSettings,
    *,
    sources: Sequence[Mapping[str, str]] | None = None,
    selection: Mapping[str, Any] | None = None,
    embed: Embed | None = None,
    force: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) the paraphrase pool of ``table``'s base pairs in ``out_dir``.

    Args:
      table: the ``B`` base pairs.
      generator: the chat model that paraphrases.
      out_dir: a new or empty directory, or an existing pool to resume.
      settings: counts, seeds, chunking, filters.
      sources: ``{"name", "sha256"}`` of the files the pairs came from (default: digests of
        ``table.sources``).
      selection: how the base pairs were chosen from the sources (recorded and compared).
      embed: ``embed(texts) -> [N, D]``, needed when ``settings.semantic``.
      force: resume even if the existing pool's generator, settings or sources differ.
      progress: show a progress bar with an ETA.

    Raises:
      MarsError: ``out_dir`` is a file or a non-empty directory that is not a pool, the
        existing pool differs (without ``force``), or the semantic step has no ``embed``.
    """
    out = Path(out_dir)
    if settings.semantic and embed is None:
        raise MarsError("augment.semantic: the semantic step needs an embedding function")
    first_row: dict[str, int] = {}
    for row, key in enumerate(base_keys(table.prompt, table.chosen, table.rejected)):
        first_row.setdefault(key, row)
    manifest: dict[str, Any] = {
        "generator": generator.identity,
        "settings": settings.to_json(),
        "scheme": {
            "prompt_paraphrases": settings.prompt_paraphrases,
            "chosen_paraphrases": settings.chosen_paraphrases,
            "rejected_paraphrases": settings.rejected_paraphrases,
            "pairing": PAIRING,
        },
        "sources": list(sources) if sources is not None else file_digests(table.sources),
        "selection": dict(selection or {}),
        "earlier_builds": [],
    }
    if out.exists() and not out.is_dir():
        raise MarsError(f"{out}: exists and is not a directory")
    if is_pool_dir(out):
        manifest |= _check_resume(out, manifest, force=force)
        for pattern in (".chunk-*", f".{MANIFEST_NAME}.*.tmp"):  # what a kill left
            for stray in out.glob(pattern):
                stray.unlink(missing_ok=True)
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise MarsError(f"{out}: directory is not empty and not a pool; choose a new --out")
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
    contents = read_pool(out) if is_pool_dir(out) else None
    chunks = list(contents.chunks) if contents else []
    done = contents.done if contents else frozenset()
    keys = set(first_row)
    if settings.semantic:
        rows = table.select(list(first_row.values()))
        distances = response_distances(embed, rows.chosen, rows.rejected)
        manifest["semantic_threshold"] = float(distances.mean())
    manifest.update(complete=False, counts=_counts(chunks, keys))
    with _writing(out / MANIFEST_NAME):
        write_manifest(out, manifest)

    from mars_jax.progress import progress_bar

    todo = [row for key, row in first_row.items() if key not in done]
    number = 1 + max(chunk_numbers(out), default=-1)
    size = settings.chunk_size
    label = f"paraphrasing ({len(keys) - len(todo)} base pairs done before)"
    with progress_bar(len(todo), enabled=progress, label=label, unit="pairs") as advance:
        for start in range(0, len(todo), size):
            rows = table.select(todo[start : start + size])
            chunk_keys = base_keys(rows.prompt, rows.chosen, rows.rejected)
            journal = journal_path(out, chunk_keys[0])
            pairs, stats = _paraphrase_chunk(
                _JournaledGenerator(generator, journal),
                chunk_keys,
                rows,
                settings,
                embed=embed,
                threshold=manifest.get("semantic_threshold"),
            )
            header = {"base_keys": chunk_keys, "pairs": len(pairs), "stats": dict(stats)}
            with _writing(chunk_path(out, number)):
                write_chunk(chunk_path(out, number), header, pairs)
            journal.unlink(missing_ok=True)
            chunks.append(header)
            number += 1
            manifest["counts"] = _counts(chunks, keys)
            with _writing(out / MANIFEST_NAME):
                write_manifest(out, manifest)
            advance(len(rows))
    manifest["complete"] = True
    with _writing(out / MANIFEST_NAME):
        write_manifest(out, manifest)
    for stale in out.glob(".journal-*.jsonl"):  # of chunks another build's settings made
        stale.unlink(missing_ok=True)
    return BuildReport(
        out, len(keys) - len(todo), len(todo), -(-len(todo) // size), manifest["counts"]
    )
