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
from typing import Any, NamedTuple, Protocol

import numpy as np

from mars_jax.errors import MarsError
from mars_jax.files import disk_error
from mars_jax.models.encoder import l2_normalize

__all__ = ["CacheStats", "EmbeddingCache", "FrozenBackbone", "embed_with_cache", "text_key"]


class FrozenBackbone(Protocol):
    """What the cache needs of a backbone (:class:`~mars_jax.models.encoder.TextEncoder`,
    :class:`~mars_jax.models.llm_features.LlamaFeatures`)."""

    @property
    def dim(self) -> int: ...

    @property
    def identity(self) -> dict[str, Any]: ...

    @property
    def cache_key(self) -> str: ...

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        progress: bool,
        on_batch: Callable[[np.ndarray, np.ndarray], None],
    ) -> np.ndarray: ...


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
    encoder's :attr:`TextEncoder.identity`. Chunks are read the first time a cache key is
    looked up.

    Safe for several processes sharing one folder: a chunk is written in full (and synced) to
    a temporary dot-file unique to its writer, then hard-linked to the first free
    ``chunk-<n>.npz`` name; a link never replaces an existing file, so two writers that pick
    the same number do not lose a chunk (the second tries the next number). Readers see only
    whole chunks and ignore the dot-files a killed writer may leave. No lock is held, so no
    writer ever waits for another.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._index: dict[str, dict[str, np.ndarray]] = {}

    def check_meta(self, cache_key: str, meta: Mapping[str, Any]) -> None:
        """Refuses a cache folder whose ``meta.json`` names another backbone or options.

        Raises:
          MarsError: ``meta.json`` differs from ``meta`` (or is unreadable).
        """
        path = self.folder / cache_key / "meta.json"
        if not path.is_file():
            return
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MarsError(f"{path}: unreadable embedding cache metadata ({err})") from None
        if found != json.loads(_json_bytes(meta)):
            raise MarsError(
                f"{path}: this embedding cache was written by another backbone or options "
                f"({found}, not {dict(meta)}); delete {path.parent} or set data.cache_dir"
            )

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
        """Writes a new chunk of ``vectors`` ``[M, D]`` for ``keys`` and returns its path.

        Raises:
          MarsError: the disk is full or the folder is not writable (nothing is left behind).
        """
        index = self._load(cache_key)
        folder = self.folder / cache_key
        vectors = np.asarray(vectors, np.float32)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "meta.json").exists():
                _write_atomic(folder / "meta.json", lambda h: h.write(_json_bytes(meta)))
            path = _publish_chunk(
                folder,
                lambda handle: np.savez(handle, keys=np.asarray(keys, "U64"), vectors=vectors),
            )
        except OSError as error:
            reason = disk_error(error)
            if reason is None:
                raise
            raise MarsError(
                f"{folder}: cannot write an embedding cache chunk ({reason}); the cache keeps "
                "its earlier chunks: make room (or set data.cache_dir) and run again"
            ) from None
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
    temporary = _write_temporary(path.parent, f".{path.name}.", write)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_temporary(folder: Path, prefix: str, write: Callable[[Any], object]) -> Path:
    """A new dot-file in ``folder`` with what ``write(handle)`` writes, synced to disk."""
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _publish_chunk(folder: Path, write: Callable[[Any], object]) -> Path:
    """Write a chunk to a temporary file, then link it to the first free chunk name."""
    temporary = _write_temporary(folder, ".chunk-", write)
    try:
        number = 1 + max(_chunk_numbers(folder), default=-1)
        while True:
            path = folder / f"chunk-{number}.npz"
            try:
                os.link(temporary, path)  # fails if another writer took the name
                return path
            except FileExistsError:
                number += 1
    finally:
        temporary.unlink(missing_ok=True)


def embed_with_cache(
    encoder: FrozenBackbone,
    texts: Sequence[str],
    cache: EmbeddingCache,
    *,
    batch_size: int = 64,
    normalize: bool = False,
    progress: bool = True,
    save_every: int = 256,
) -> tuple[np.ndarray, CacheStats]:
    """Embeddings ``[N, D]`` of ``texts``, embedding only those not yet in ``cache``.

    The texts embedded now are appended to the cache in chunks of at least ``save_every``
    texts as they are embedded, so an interrupted job resumes where it stopped. The cache holds
    unnormalised vectors; ``normalize`` applies to the result only. Vectors are filed under
    the backbone's :attr:`cache_key` (a hash of its identity: model bytes, kind, pooling,
    length, text format), so two backbones never share entries.

    Raises:
      MarsError: the cache folder's ``meta.json`` names another backbone.
    """
    cache.check_meta(encoder.cache_key, encoder.identity)
    keys = [text_key(text) for text in texts]
    found = cache.get(encoder.cache_key, keys)
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
    if missing:
        missing_keys = list(missing)
        pending: list[tuple[np.ndarray, np.ndarray]] = []

        def save() -> None:
            rows = np.concatenate([rows for rows, _ in pending])
            vectors = np.concatenate([vectors for _, vectors in pending])
            cache.add(
                encoder.cache_key,
                [missing_keys[row] for row in rows],
                vectors,
                meta=encoder.identity,
            )
            pending.clear()

        def on_batch(rows: np.ndarray, vectors: np.ndarray) -> None:
            pending.append((np.asarray(rows), np.array(vectors, np.float32)))
            if sum(len(rows) for rows, _ in pending) >= save_every:
                save()

        vectors = encoder.embed_texts(
            list(missing.values()), batch_size=batch_size, progress=progress, on_batch=on_batch
        )
        if pending:
            save()
        found |= dict(zip(missing, vectors, strict=True))
    result = np.stack([found[key] for key in keys]) if keys else np.zeros((0, encoder.dim))
    result = result.astype(np.float32)
    stats = CacheStats(hits=len(set(keys)) - len(missing), misses=len(missing))
    return (l2_normalize(result) if normalize else result), stats
