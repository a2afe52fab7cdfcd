"""Paraphrase pools on disk: the pairing scheme, atomic chunk files, the manifest, a reader.

A pool directory holds ``pool.json`` (the manifest: format and version, generator identity
and settings, the pairing scheme, source files with their sha256, the base-pair selection and
counts) and chunk files ``chunk-NNNNN.jsonl.gz``. A chunk is gzipped JSON lines: first a
header ``{"kind": "chunk", "base_keys": [...], "stats": {...}}`` naming every base pair the
chunk covers (also those that got no pool pairs), then one record per synthetic pair::

    {"base": KEY, "prompt_index": p, "chosen_index": c, "rejected_index": r,
     "prompt": ..., "chosen": ..., "rejected": ...}

Every file is written to a temporary dot-file in the directory and renamed into place, so a
killed writer leaves only whole chunks (and stray dot-files, which readers ignore).

**Pairing scheme** (method.md §2): with ``P``, ``C``, ``R`` paraphrases of the prompt, chosen
and rejected texts of a base pair, pair ``(c, r)`` for ``c < C``, ``r < R`` uses prompt
paraphrase ``(c + r) mod P``: ``C * R`` pairs (25 for 5/5/5); the original is not included.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mars_jax.errors import MarsError
from mars_jax.files import write_bytes_atomic, write_json_atomic

__all__ = [
    "MANIFEST_NAME",
    "POOL_FORMAT",
    "POOL_VERSION",
    "PoolContents",
    "PoolPair",
    "base_key",
    "base_keys",
    "chunk_path",
    "is_pool_dir",
    "pair_indices",
    "read_chunk",
    "read_manifest",
    "read_pool",
    "write_chunk",
    "write_manifest",
]

POOL_FORMAT = "mars-jax-pool"
POOL_VERSION = 1
MANIFEST_NAME = "pool.json"
_CHUNK = re.compile(r"^chunk-(\d{5,})\.jsonl\.gz$")
_RECORD_FIELDS = {
    "base": str,
    "prompt_index": int,
    "chosen_index": int,
    "rejected_index": int,
    "prompt": str,
    "chosen": str,
    "rejected": str,
}


class PoolPair(NamedTuple):
    """One synthetic pair: its base pair's key, the variant indices and the texts."""

    base: str
    prompt_index: int
    chosen_index: int
    rejected_index: int
    prompt: str
    chosen: str
    rejected: str


class PoolContents(NamedTuple):
    """A pool read from disk.

    Attributes:
      directory: the pool directory.
      manifest: the parsed ``pool.json``.
      pairs: base key -> its synthetic pairs, sorted by (chosen, rejected) index.
      done: keys of every base pair a chunk covers (with or without pairs).
      chunks: the chunk headers, in chunk order.
    """

    directory: Path
    manifest: dict[str, Any]
    pairs: dict[str, list[PoolPair]]
    done: frozenset[str]
    chunks: list[dict[str, Any]]

    def pairs_for(self, keys: Sequence[str]) -> list[list[PoolPair]]:
        """The pool pairs of each base pair in ``keys`` (``[]`` for one the pool lacks)."""
        return [self.pairs.get(key, []) for key in keys]


def base_key(prompt: str, chosen: str, rejected: str) -> str:
    """Stable key of a base pair: the first 32 hex digits of sha256 of its three texts."""
    encoded = json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:32]


def base_keys(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> list[str]:
    """:func:`base_key` of each of ``B`` pairs."""
    return [base_key(*texts) for texts in zip(prompts, chosen, rejected, strict=True)]


def pair_indices(num_prompt: int, num_chosen: int, num_rejected: int) -> list[tuple[int, int, int]]:
    """``(prompt, chosen, rejected)`` variant indices of the scheme, in row order.

    >>> pair_indices(2, 2, 1)
    [(0, 0, 0), (1, 1, 0)]
    """
    return [
        ((c + r) % num_prompt if num_prompt else 0, c, r)
        for c in range(num_chosen)
        for r in range(num_rejected)
    ]


def chunk_path(directory: Path, number: int) -> Path:
    """``directory/chunk-NNNNN.jsonl.gz``."""
    return directory / f"chunk-{number:05d}.jsonl.gz"


def chunk_numbers(directory: Path) -> list[int]:
    """Numbers of the chunk files in ``directory``, ascending."""
    found = (_CHUNK.match(path.name) for path in directory.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def is_pool_dir(directory: Path) -> bool:
    """Whether ``directory`` has a pool manifest."""
    return (directory / MANIFEST_NAME).is_file()


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``pool.json`` atomically (format and version added)."""
    payload = {"format": POOL_FORMAT, "version": POOL_VERSION, **manifest}
    write_json_atomic(directory / MANIFEST_NAME, payload)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed ``pool.json`` of ``directory``.

    Raises:
      MarsError: naming the directory or file (and line) when it is not a readable pool.
    """
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise MarsError(f"{directory}: no such pool directory")
    if not path.is_file():
        raise MarsError(f"{directory}: not a mars-jax pool directory (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MarsError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MarsError(f"{path}: unreadable pool manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != POOL_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise MarsError(f"{path}: not a mars-jax pool manifest (format {found!r})")
    if manifest.get("version") != POOL_VERSION:
        raise MarsError(
            f"{path}: pool format version {manifest.get('version')!r}; this mars-jax reads "
            f"version {POOL_VERSION}"
        )
    return manifest


def write_chunk(path: Path, header: Mapping[str, Any], pairs: Iterable[PoolPair]) -> None:
    """Write one chunk atomically (temporary dot-file, fsync, rename); bytes are reproducible.

    The file gets the mode a plain ``open`` would give (``0o666`` less the umask), not the
    owner-only mode of the temporary file, so that a pool can be shared.
    """
    lines = [json.dumps({"kind": "chunk", **header}, ensure_ascii=False, sort_keys=True)]
    lines += [json.dumps(pair._asdict(), ensure_ascii=False) for pair in pairs]
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)
    write_bytes_atomic(path, data)


def _record(path: Path, number: int, value: Any) -> PoolPair:
    if not isinstance(value, dict):
        raise MarsError(f"{path}:{number}: expected a pool record (a JSON object)")
    for name, kind in _RECORD_FIELDS.items():
        if name not in value:
            raise MarsError(f"{path}:{number}: pool record without field {name!r}")
        if not isinstance(value[name], kind) or isinstance(value[name], bool):
            raise MarsError(f"{path}:{number}: field {name!r} must be a {kind.__name__}")
    return PoolPair(**{name: value[name] for name in _RECORD_FIELDS})


def read_chunk(path: Path) -> tuple[dict[str, Any], list[PoolPair]]:
    """The header and the records of one chunk file.

    Raises:
      MarsError: naming the file and line of a corrupt or foreign chunk.
    """
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise MarsError(f"{path}: corrupt pool chunk ({error})") from None
    header: dict[str, Any] | None = None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise MarsError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        if number == 1:
            if (
                not isinstance(value, dict)
                or value.get("kind") != "chunk"
                or not isinstance(value.get("base_keys"), list)
            ):
                raise MarsError(f"{path}:1: expected a chunk header with base_keys")
            header = value
            continue
        pair = _record(path, number, value)
        if pair.base not in header["base_keys"]:
            raise MarsError(f"{path}:{number}: base pair {pair.base} not in the chunk header")
        pairs.append(pair)
    if header is None:
        raise MarsError(f"{path}: empty pool chunk")
    return header, pairs


def read_pool(directory: str | os.PathLike[str]) -> PoolContents:
    """Read a pool directory: its manifest and every complete chunk.

    Raises:
      MarsError: for a missing, foreign or corrupt directory, manifest or chunk (the
        message names the file and line), or a base pair covered by two chunks.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    pairs: dict[str, list[PoolPair]] = {}
    owner: dict[str, Path] = {}
    headers = []
    for number in chunk_numbers(directory):
        path = chunk_path(directory, number)
        header, records = read_chunk(path)
        for key in header["base_keys"]:
            if key in owner:
                raise MarsError(f"{path}: base pair {key} is also in {owner[key]}")
            owner[key] = path
        for pair in records:
            pairs.setdefault(pair.base, []).append(pair)
        headers.append(header)
    for records in pairs.values():
        records.sort(key=lambda pair: (pair.chosen_index, pair.rejected_index))
    return PoolContents(directory, manifest, pairs, frozenset(owner), headers)
