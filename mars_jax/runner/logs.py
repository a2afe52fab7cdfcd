"""``metrics.jsonl``: one JSON record per line, durable line by line, repairable after a kill.

Each record is appended with a single ``write`` of the whole line followed by ``fsync``, so
a process killed at any moment leaves complete lines plus at most one torn last line (no
trailing newline). Readers drop such a tail; a resumed run first cuts the file back to the
size recorded with its checkpoint, so the rounds it redoes are not written twice.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from mars_jax.errors import MarsError
from mars_jax.files import disk_error

__all__ = ["MetricsLog", "read_records"]


class MetricsLog:
    """Append-only writer of one run's ``metrics.jsonl``.

    Attributes:
      path: the file.
      size: bytes written so far (complete lines only).
      lines: records written so far.
    """

    def __init__(self, path: Path, *, size: int = 0, lines: int = 0) -> None:
        """Open ``path``, cut back to ``size`` bytes (0: a new, empty log)."""
        self.path = Path(path)
        if size and (not self.path.is_file() or self.path.stat().st_size < size):
            raise MarsError(
                f"{self.path}: shorter than the {size} bytes recorded with the checkpoint; "
                "the run directory was modified"
            )
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)
        self.size, self.lines = size, lines

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, in one write, and flush it to disk.

        Raises:
          MarsError: the disk is full or the file not writable (a part of the line that
            reached the file is cut on resume, with everything after the last checkpoint).
        """
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
        except OSError as error:
            reason = disk_error(error)
            if reason is None:
                raise
            raise MarsError(
                f"{self.path}: cannot write the round's metrics ({reason}); the previous "
                "checkpoint is intact: make room, then run again with --resume"
            ) from None
        self.size += len(line)
        self.lines += 1

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_records(path: Path, *, size: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (its first ``size`` bytes), without a torn tail.

    Raises:
      MarsError: an unreadable file, or a complete line that is not a JSON object (naming
        ``path:line``).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise MarsError(f"{path}: cannot read the run's metrics: {error.strerror}") from None
    if size is not None:
        data = data[:size]
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, raw in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise MarsError(f"{path}:{number}: not a JSON record ({error})") from None
        if not isinstance(record, dict):
            raise MarsError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records
