"""Files written so that a reader never sees half of one: write beside, then rename.

Also how a failed write is told apart from a bug: :func:`disk_error` names a full disk, a
read-only or forbidden folder, so that writers can stop with one clear line.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["disk_error", "write_bytes_atomic", "write_json_atomic"]

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_DISK_MESSAGES = (
    "No space left",
    "Disk quota",
    "Read-only file system",
    "Permission denied",
    "Input/output error",
)


def disk_error(error: BaseException) -> str | None:
    """Why a write failed, if it failed for the disk (full, read-only, denied), else None.

    Orbax and TensorStore wrap ``OSError`` in other exception types; their messages keep the
    system's wording, which is matched too.
    """
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return error.strerror or os.strerror(error.errno)
    text = str(error)
    return next((message for message in _DISK_MESSAGES if message in text), None)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place.

    The temporary name is unique per writer (``.NAME.<8 random characters>.tmp``), so
    concurrent writers never write into each other's file; a failed write removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), suffix=".tmp")


def write_bytes_atomic(path: Path, data: bytes, *, suffix: str = "") -> None:
    """Write ``data`` to a unique temporary file beside ``path`` (``.NAME.<random><suffix>``),
    flush it to disk, give it the umask's permissions and rename it into place; a failed
    write removes the temporary file."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
