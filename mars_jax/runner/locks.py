"""An exclusive lock on a run directory, so two runs never write into the same one.

The lock is a file ``.mars-jax.lock`` in the run directory holding the owner's pid, host
name and start time as JSON. It is created atomically: the content is written to a private
temporary file that is then hard-linked to the lock's name, which fails if the lock exists
(as ``O_CREAT | O_EXCL`` would, but a reader never sees a half-written lock). A lock left by
a process that no longer runs on this host (killed, machine crash) is stale and taken over,
with a note on stderr; a live owner, or one on another host, makes the new run refuse.
Acquiring (creating, or checking and taking over a stale lock) happens under an ``flock`` of
the directory, so two processes racing for a stale lock cannot both win. The same lock
guards a pool directory while ``mars-jax augment`` builds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from mars_jax.errors import MarsError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".mars-jax.lock"
_FLOCK_TIMEOUT = 10.0  # seconds; acquiring takes milliseconds


class RunLock:
    """Hold the lock of ``run_dir`` for the duration of a ``with`` block.

    Args:
      run_dir: the directory to lock (a run directory, or a pool directory being built).
      user: what holds such locks, in messages (``"run"``, ``"pool build"``).

    Raises:
      MarsError: the directory is locked by a live process (or one on another host).
    """

    def __init__(self, run_dir: Path, *, user: str = "run") -> None:
        self.user = user
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; refuse a live owner's."""
        with _directory_flock(self.path.parent):
            self._acquire()

    def _acquire(self) -> None:
        if self._create():
            return
        owner = self._read_owner()
        if not _is_stale(owner):
            raise MarsError(
                f"{self.path.parent}: in use by another {self.user} "
                f"({_describe(owner)}); wait for it to finish, or delete {self.path} "
                "if that process is gone"
            )
        print(
            f"mars-jax: note: taking over the stale lock of {self.path.parent} "
            f"({_describe(owner)}, no longer running)",
            file=sys.stderr,
        )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if not self._create():  # another run took it over first
            raise MarsError(
                f"{self.path.parent}: in use by another {self.user} "
                f"({_describe(self._read_owner())})"
            )

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def _create(self) -> bool:
        """Atomically create the lock with our details; False if it already exists."""
        temporary = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.owner, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, self.path)
        except FileExistsError:
            return False
        except OSError as error:
            raise MarsError(f"{self.path}: cannot create the run lock: {error.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        self.held = True
        return True

    def _read_owner(self) -> dict[str, object]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def _directory_flock(directory: Path) -> Iterator[None]:
    """Serialise lock acquisition in ``directory`` between processes (``flock`` on it).

    Without it, two runs that both find a stale lock could both take it over: the second
    would delete the lock the first had just created. The kernel drops a ``flock`` when its
    process dies, so this never goes stale; where ``flock`` is not supported it is skipped.
    """
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + _FLOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MarsError(
                        f"{directory}: another process has been taking its lock for over "
                        f"{_FLOCK_TIMEOUT:.0f} s; try again"
                    ) from None
                time.sleep(0.01)
            except OSError:  # flock not supported here
                break
        yield
    finally:
        os.close(descriptor)  # releases the flock


def _is_stale(owner: dict[str, object]) -> bool:
    """True if the lock's owner ran on this host and no longer runs (or the lock is empty)."""
    pid, host = owner.get("pid"), owner.get("hostname")
    if not owner:
        return True
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(owner: dict[str, object]) -> str:
    if not owner:
        return "an unreadable lock file"
    return f"pid {owner.get('pid')} on {owner.get('hostname')}, started {owner.get('started', '?')}"
