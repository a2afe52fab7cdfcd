"""Embedding vectors on disk, per encoder and per text, reused across runs.

:func:`embed_with_cache` embeds only the texts an :class:`EmbeddingCache` does not hold yet
and appends them as one new chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mars_jax.errors import MarsError
from mars_jax.models.encoder import TextEncoder, l2_normalize

__all__ = ["CacheStats", "EmbeddingCache", "embed_with_cache", "text_key"]


def text_key(text: str) -> str:
    """The cache key of a text: sha256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CacheStats(NamedTuple):
    """Distinct texts found in the cache (``hits``) and embedded now (``misses``)."""

    hits: int
    misses: int


class EmbeddingCache:
    """Embedding vectors on disk, per encoder and per text.

    Layout: ``<folder>/<cache key>/chunk-<n>.npz``, each chunk holding ``keys`` (``[M]``
    :func:`text_key` strings) and ``vectors`` (``[M, D]`` float32), plus ``meta.json`` with the
    encoder's :attr:`TextEncoder.identity`. A chunk is written to a temporary file and renamed
    into place, so a crash never leaves a half-written chunk. Chunks are read the first time
    a cache key is looked up. Meant for one writer at a time per cache key: two concurrent
    writers may both take the same chunk number, and the vectors of the loser are re-embedded
    on a later run.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._index: dict[str, dict[str, np.ndarray]] = {}

    def get(self, cache_key: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors ``[D]`` among ``keys``, by key."""
        index = self._load(cache_key)
        return {key: index[key] for key in keys if key in index}

    def add(
        self,
        cache_key: str,
        keys: Sequence[str],
        vectors: np.ndarray,
        *,
        meta: Mapping[str, Any],
    ) -> Path:
        """Writes a new chunk of ``vectors`` ``[M, D]`` for ``keys`` and returns its path."""
        index = self._load(cache_key)
        folder = self.folder / cache_key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "meta.json").exists():
            _write_atomic(folder / "meta.json", lambda handle: handle.write(_json_bytes(meta)))
        path = folder / f"chunk-{1 + max(_chunk_numbers(folder), default=-1)}.npz"
        vectors = np.asarray(vectors, np.float32)
        _write_atomic(
            path, lambda handle: np.savez(handle, keys=np.asarray(keys, "U64"), vectors=vectors)
        )
        index.update(zip(keys, vectors, strict=True))
        return path

    def _load(self, cache_key: str) -> dict[str, np.ndarray]:
        if cache_key not in self._index:
            index: dict[str, np.ndarray] = {}
            folder = self.folder / cache_key
            for number in sorted(_chunk_numbers(folder)):
                path = folder / f"chunk-{number}.npz"
                try:
                    with np.load(path, allow_pickle=False) as chunk:
                        index.update(zip(chunk["keys"].tolist(), chunk["vectors"], strict=True))
                except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
                    raise MarsError(
                        f"{path}: unreadable embedding cache chunk ({err}); delete it to re-embed"
                    ) from None
            self._index[cache_key] = index
        return self._index[cache_key]


def _chunk_numbers(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    stems = (path.stem.removeprefix("chunk-") for path in folder.glob("chunk-*.npz"))
    return [int(stem) for stem in stems if stem.isdigit()]


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(value), indent=2, sort_keys=True) + "\n").encode()


def _write_atomic(path: Path, write: Callable[[Any], object]) -> None:
    """Writes ``path`` through a temporary file in the same folder and ``os.replace``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def embed_with_cache(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache,
    *,
    batch_size: int = 64,
    normalize: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, CacheStats]:
    """Embeddings ``[N, D]`` of ``texts``, embedding only those not yet in ``cache``.

    The texts embedded now are appended to the cache as one new chunk. The cache holds
    unnormalised vectors; ``normalize`` applies to the result only.
    """
    keys = [text_key(text) for text in texts]
    found = cache.get(encoder.cache_key, keys)
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
    if missing:
        vectors = encoder.embed_texts(
            list(missing.values()), batch_size=batch_size, progress=progress
        )
        cache.add(encoder.cache_key, list(missing), vectors, meta=encoder.identity)
        found |= dict(zip(missing, vectors, strict=True))
    result = np.stack([found[key] for key in keys]) if keys else np.zeros((0, encoder.dim))
    result = result.astype(np.float32)
    stats = CacheStats(hits=len(set(keys)) - len(missing), misses=len(missing))
    return (l2_normalize(result) if normalize else result), stats
