"""``mars-jax augment``: build the paraphrase pool of a run's base pairs, or of whole files."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from mars_jax.augment import generator as generators
from mars_jax.augment.builder import AugmentSettings, BuildReport, build_pool, file_digests
from mars_jax.augment.paraphrase import ParaphraseSettings
from mars_jax.data.formats import read_pairs
from mars_jax.data.pool import is_pool_dir
from mars_jax.data.selection import select_base_pairs
from mars_jax.data.table import clean_pairs
from mars_jax.errors import MarsError
from mars_jax.runner.config import Config, ConfigError
from mars_jax.runner.data import text_settings
from mars_jax.runner.locks import LOCK_NAME, RunLock
from mars_jax.settings import settings_from

__all__ = ["augment_settings", "run_augment"]


def augment_settings(config: Config) -> AugmentSettings:
    """The pool-build settings of ``config.augment``."""
    paraphrase = settings_from(ParaphraseSettings, config.augment)
    return settings_from(AugmentSettings, config.augment, paraphrase=paraphrase)


def _prompt_limit(settings: AugmentSettings) -> dict[str, int]:
    """``max_prompt_tokens`` that fits a request with cut sources (the generator's default
    when sources are not cut): the sources' estimated tokens (three texts in a semantic
    request) plus the instructions, with a quarter of slack for the estimate, at least 512."""
    limit = settings.paraphrase.max_source_tokens
    if not limit:
        return {}
    texts = 3 if settings.semantic else 1
    return {"max_prompt_tokens": max(512, int(1.25 * (texts * limit + 96)))}


def _embedder(config: Config):
    """``embed(texts) -> [N, D]``: the run's frozen backbone, through the embedding cache."""
    from mars_jax.models.backbone import open_backbone
    from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache

    data = config.data
    encoder = open_backbone(
        data.encoder, pooling=data.pooling, max_length=data.max_length, layer=data.layer
    )
    cache = EmbeddingCache(Path(data.cache_dir).expanduser())

    def embed(texts: Sequence[str]):
        vectors, _ = embed_with_cache(
            encoder, list(texts), cache, batch_size=data.embed_batch_size, progress=False
        )
        return vectors

    return embed


def run_augment(
    config: Config,
    out: Path,
    *,
    pairs_files: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build or resume the pool in ``out`` for the base pairs ``mars-jax run config`` uses.

    With ``pairs_files``, every (cleaned) pair of those files is augmented instead. The build
    holds the pool directory's lock (:class:`~mars_jax.runner.locks.RunLock`): a second build
    of the same pool refuses at once, naming the first; a lock left by a killed build is
    taken over.

    Raises:
      MarsError: bad files, an ``out`` that is neither new, empty nor a pool, a pool
        built with other settings (without ``force``), or one another build is writing.
    """
    data = config.data
    if out.exists() and not out.is_dir():
        raise MarsError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and not is_pool_dir(out) and _entries(out) - {LOCK_NAME}:
        raise MarsError(f"--out {out}: directory is not empty and not a pool")
    if pairs_files:
        read = read_pairs(
            [Path(p) for p in pairs_files], format=data.format, skip_invalid=data.skip_invalid
        )
        table, _ = clean_pairs(read.table)
        sources = list(pairs_files)
        selection = {"mode": "all pairs", "format": data.format}
    else:
        if data.suite != "pairs":
            raise ConfigError(
                "data.suite: 'mars-jax augment' needs preference files: set data.suite = "
                "'pairs' and data.paths, or give --pairs FILE"
            )
        table = select_base_pairs(text_settings(config)).base
        sources = list(data.paths)
        selection = {
            "mode": "run base pairs",
            "format": data.format,
            "skip_invalid": data.skip_invalid,
            "heldout_fraction": data.heldout_fraction,
            "seed": data.seed,
            "num_base_pairs": data.num_base_pairs,
            "num_heldout_pairs": data.num_heldout_pairs,
        }
    settings = augment_settings(config)
    embed = _embedder(config) if settings.semantic else None
    generator = generators.load_text_generator(
        config.augment.generator,
        dtype=config.augment.dtype,
        batch_size=config.augment.batch_size,
        **_prompt_limit(settings),
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MarsError(f"--out {out}: cannot create the directory: {error.strerror}") from None
    created = not _entries(out)
    try:
        with RunLock(out, user="pool build"):  # a second build of this pool refuses
            return build_pool(
                table,
                generator,
                out,
                settings,
                sources=file_digests(sources),
                selection=selection,
                embed=embed,
                force=force,
                progress=progress,
            )
    finally:
        if created and not _entries(out):  # refused before writing anything
            with contextlib.suppress(OSError):
                out.rmdir()


def _entries(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}
