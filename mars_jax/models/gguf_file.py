"""One parse of a GGUF file per process, shared by the weights and the tokenizer it holds.

``gguf.GGUFReader`` parses every metadata field when it opens a file (SmolLM2's 49,152-token
vocabulary: about 3 s on one CPU core), and a model's weights and tokenizer are read from the
same file. The parsed reader is kept per (path, size, modification time), so an edited file is
parsed again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from mars_jax.errors import MarsError

__all__ = ["read_gguf"]


@functools.lru_cache(maxsize=2)
def _parsed(path: str, size: int, mtime_ns: int) -> Any:
    import gguf

    return gguf.GGUFReader(path)


def read_gguf(path: Path) -> Any:
    """The ``gguf.GGUFReader`` of ``path`` (parsed once while the file is unchanged).

    Raises:
      MarsError: the file cannot be read or is not GGUF.
    """
    try:
        stat = path.stat()
        return _parsed(str(path), stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError, AssertionError) as err:
        raise MarsError(f"{path}: not a readable GGUF file ({err})") from None
