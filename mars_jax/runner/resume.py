"""Checkpoints of the round loop, for an exact resume of an interrupted run.

After every round the runner saves, with an Orbax ``CheckpointManager`` under
``RUN_DIR/checkpoints/STEP`` (``STEP``: rounds completed in the run, all methods together):

- ``state``: the :class:`~mars_jax.refine.RoundState` of the method being run as a pytree
  (member-stacked train state with the optimizer state, the PRNG key data, the current
  synthetic rows, the base margins ``[M, N]`` and the margin history ``[R, N]``);
- ``meta`` (JSON): the method and its index, the round index and budget spent, the stop
  reasons of the methods already finished, the size of ``metrics.jsonl`` at that point, and
  the run's fingerprint (library version, the config without its ``output`` section, and a
  hash of the built data arrays).

Resuming restores the state into the abstract tree of a freshly built one (shapes and dtypes
checked), so the rounds that follow compute what an uninterrupted run computes. Checkpoints
are per round: a run killed inside a round redoes that round.

**Integrity.** The meta records a sha256 of the saved state arrays (``digest``: every leaf's
path, dtype, shape and bytes), checked after restoring; once a save is complete, the sha256 of
each of its files is recorded beside it (``checkpoints/.STEP.sha256.json``) and checked before
Orbax reads the folder. A checkpoint whose meta or arrays
cannot be read, or whose restored arrays do not match the digest (flipped bytes, a file cut
short), is *damaged*: :meth:`RunCheckpoints.resume_point` then falls back to the next newest
one (the two newest are kept for this) and reports the damaged steps; with none intact it
raises a :class:`~mars_jax.errors.MarsError` and changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mars_jax import __version__
from mars_jax.checkpoint import named_leaves, tree_shapes
from mars_jax.errors import MarsError
from mars_jax.files import disk_error, write_json_atomic
from mars_jax.refine import RefineData, RoundState
from mars_jax.runner.config import Config, config_to_dict
from mars_jax.train import TrainState

__all__ = [
    "CHECKPOINT_DIR",
    "Checkpoint",
    "DamagedCheckpointError",
    "ResumePoint",
    "RunCheckpoints",
    "check_fingerprint",
    "check_methods",
    "data_hash",
    "run_fingerprint",
    "state_digest",
]

CHECKPOINT_DIR = "checkpoints"
_MAX_TO_KEEP = 2


def data_hash(data: RefineData) -> str:
    """The first 16 hex digits of a sha256 over every array of ``data`` (shape, dtype, bytes)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(data):
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def state_digest(tree: Any) -> str:
    """sha256 (hex) over every array of ``tree``: its path, dtype, shape and bytes, by path.

    Paths are named as in :func:`~mars_jax.checkpoint.tree_shapes` (``train/params/...``), so
    a state and its restored copy (plain dicts where the state had dataclasses) agree.
    """
    digest = hashlib.sha256()
    leaves = named_leaves(tree)
    for name in sorted(leaves):
        array = np.asarray(leaves[name])
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class DamagedCheckpointError(MarsError):
    """A checkpoint that cannot be read back as it was saved (see the module docstring)."""


def run_fingerprint(config: Config, data: RefineData) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes from it.

    The ``output`` section (progress bars, plots, the parent folder) is left out: it does not
    change any result.
    """
    resolved = config_to_dict(config)
    del resolved["output"]
    return {"version": __version__, "config": resolved, "data_hash": data_hash(data)}


@dataclass(frozen=True)
class Checkpoint:
    """Where a saved run stands (the ``meta`` of one checkpoint).

    Attributes:
      step: rounds completed in the run, all methods together.
      method_index: position of ``method`` in ``refine.methods``.
      method: the method whose state is saved.
      round_index: rounds of ``method`` completed.
      budget_spent: synthetic pairs drawn by ``method`` so far.
      num_synthetic_rows: length of the saved synthetic set.
      finished: stop reason (or None) of each method before ``method``.
      metrics_size: bytes of ``metrics.jsonl`` written up to this checkpoint.
      metrics_lines: records in those bytes.
      fingerprint: see :func:`run_fingerprint`.
      shapes: shape of every array of the saved state, by path (checked before restoring).
      digest: :func:`state_digest` of the saved state (checked after restoring; empty in
        checkpoints of earlier versions, which are not checked).
    """

    step: int
    method_index: int
    method: str
    round_index: int
    budget_spent: int
    num_synthetic_rows: int
    finished: dict[str, str | None]
    metrics_size: int
    metrics_lines: int
    fingerprint: dict[str, Any]
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the checkpoint's ``meta``)."""
        return dict(self.__dict__)


class RunCheckpoints:
    """The checkpoints of one run directory (``RUN_DIR/checkpoints``)."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir).absolute() / CHECKPOINT_DIR
        self._managers: dict[bool, ocp.CheckpointManager] = {}

    def _open(self, *, write: bool = False) -> ocp.CheckpointManager:
        """A manager for reading (creates and deletes nothing), or one that saves and prunes.

        (Orbax's ``read_only`` option is not used: it logs warnings on stderr.)
        """
        if write not in self._managers:
            options: dict[str, Any] = {"create": write}
            if jax.process_count() > 1:  # process 0 alone writes (see save)
                options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                    primary_host=0, active_processes={0}
                )
                if write:  # Orbax creates no folder for a subset of the processes
                    self.directory.mkdir(parents=True, exist_ok=True)
                options["create"] = False
            self._managers[write] = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=_MAX_TO_KEEP,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=write,  # what a kill left of a save
                    **options,
                ),
            )
        return self._managers[write]

    def steps(self) -> list[int]:
        """The steps of the complete (committed) checkpoints, newest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self._open().all_steps(), reverse=True)

    def read_meta(self, step: int) -> Checkpoint:
        """The meta of checkpoint ``step``.

        Raises:
          DamagedCheckpointError: the meta is missing or unreadable.
        """
        try:
            restored = self._open().restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            return Checkpoint(**restored["meta"])
        except Exception as error:  # orbax raises many kinds for a damaged folder
            raise DamagedCheckpointError(
                f"{self.directory / str(step)}: unreadable checkpoint meta ({_first_line(error)})"
            ) from None

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint's meta, or None if there is none."""
        steps = self.steps()
        return self.read_meta(steps[0]) if steps else None

    def resume_point(
        self,
        check: Callable[[Checkpoint], None],
        restore: Callable[[Checkpoint], RoundState],
    ) -> ResumePoint | None:
        """The newest intact checkpoint and its restored state (None: no checkpoint at all).

        Checkpoints are tried newest first; a damaged one (unreadable meta, arrays that
        cannot be restored or do not match the saved digest) is passed over and listed in
        :attr:`ResumePoint.damaged`. ``check(meta)`` runs on each readable meta before its
        state is restored (a fingerprint that does not match stops the search).

        Raises:
          MarsError: every checkpoint is damaged (naming each and why), or ``check`` failed.
        """
        damaged: list[tuple[int, str]] = []
        for step in self.steps():
            try:
                self.verify_files(step)
                checkpoint = self.read_meta(step)
                check(checkpoint)
                return ResumePoint(checkpoint, restore(checkpoint), tuple(damaged))
            except DamagedCheckpointError as error:
                damaged.append((step, str(error)))
        if not damaged:
            return None
        reasons = "; ".join(reason for _, reason in damaged)
        raise MarsError(
            f"{self.directory}: no intact checkpoint to resume from ({reasons}); nothing was "
            "changed: start again with a new --out"
        )

    def discard(self, steps: Sequence[int]) -> None:
        """Delete the folders of the (damaged) checkpoints ``steps``."""
        for step in steps:
            shutil.rmtree(self.directory / str(step), ignore_errors=True)
            self._digests_path(step).unlink(missing_ok=True)
        for manager in self._managers.values():  # they cache the list of steps
            manager.close()
        self._managers.clear()

    def check(self, checkpoint: Checkpoint, fingerprint: dict[str, Any], *, force: bool) -> None:
        """Refuse to resume from a checkpoint of another config, data or version.

        Raises:
          MarsError: naming the first difference, unless ``force``.
        """
        if not force:
            source = str(self.directory / str(checkpoint.step))
            check_fingerprint(checkpoint.fingerprint, fingerprint, source=source)

    def restore_state(
        self, checkpoint: Checkpoint, like_train: TrainState, num_base_pairs: int
    ) -> RoundState:
        """The saved round state, restored into the structure of ``like_train``.

        Args:
          checkpoint: from :meth:`latest`.
          like_train: abstract member-stacked train state (e.g. from ``jax.eval_shape``).
          num_base_pairs: ``N``, the number of base pairs.
        """
        num_members = jax.tree.leaves(like_train)[0].shape[0]
        abstract = {
            "train": like_train,
            "key": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
            "base_margins": jax.ShapeDtypeStruct((num_members, num_base_pairs), jnp.float32),
            "margin_history": jax.ShapeDtypeStruct(
                (checkpoint.round_index, num_base_pairs), jnp.float32
            ),
        }
        if checkpoint.num_synthetic_rows:
            abstract["synthetic_rows"] = jax.ShapeDtypeStruct(
                (checkpoint.num_synthetic_rows,), jnp.int32
            )
        path = self.directory / str(checkpoint.step)
        expected = {name: list(shape) for name, shape in tree_shapes(abstract).items()}
        if expected != checkpoint.shapes:  # checked here: a failed Orbax restore is noisy
            differing = sorted(set(expected) ^ set(checkpoint.shapes)) or sorted(
                name for name in expected if expected[name] != checkpoint.shapes[name]
            )
            name = differing[0]
            raise MarsError(
                f"{path}: does not match this run's model and data (first difference at "
                f"{name}: saved {checkpoint.shapes.get(name)}, expected {expected.get(name)})"
            )
        try:
            tree = self._open().restore(
                checkpoint.step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
            )["state"]
        except Exception as error:  # shapes matched: the files are damaged or missing
            raise DamagedCheckpointError(
                f"{path}: cannot restore the round state ({_first_line(error)})"
            ) from None
        if checkpoint.digest and state_digest(tree) != checkpoint.digest:
            raise DamagedCheckpointError(
                f"{path}: the restored state does not match the digest saved with it "
                "(the checkpoint's files were changed or damaged)"
            )
        history = np.asarray(tree["margin_history"])
        return RoundState(
            train=jax.tree.map(jnp.asarray, tree["train"]),
            round_index=checkpoint.round_index,
            key=jax.random.wrap_key_data(jnp.asarray(tree["key"])),
            budget_spent=checkpoint.budget_spent,
            synthetic_rows=jnp.asarray(tree.get("synthetic_rows", np.zeros(0, np.int32))),
            base_margins=jnp.asarray(tree["base_margins"]),
            margin_history=tuple(history),
        )

    def save(self, checkpoint: Checkpoint, state: RoundState) -> None:
        """Save ``state`` with ``checkpoint`` as its meta, and wait until it is on disk.

        Orbax writes into a temporary folder and renames it when complete, so a kill during
        the save leaves the previous checkpoint as the latest. In a multi-process job every
        process must call it (sharded arrays are gathered), and process 0 alone writes.

        Raises:
          MarsError: the disk is full or the folder is not writable (the previous checkpoint
            stays the latest).
        """
        tree = {
            "train": state.train,
            "key": jax.random.key_data(state.key),
            "base_margins": state.base_margins,
            "margin_history": np.stack(state.margin_history),
        }
        if state.synthetic_rows.size:
            tree["synthetic_rows"] = state.synthetic_rows
        if jax.process_count() > 1:
            tree = _host_local(tree)
            if jax.process_index() != 0:
                # Orbax writes numpy arrays from process 0 only, and refuses host-local
                # jax arrays on several hosts: process 0 alone keeps the run's checkpoints.
                return
        shapes = {name: list(shape) for name, shape in tree_shapes(tree).items()}
        meta = dataclasses.replace(checkpoint, shapes=shapes, digest=state_digest(tree)).to_json()
        try:
            manager = self._open(write=True)
            manager.save(
                checkpoint.step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            manager.wait_until_finished()
            self._write_file_digests(checkpoint.step)
        except Exception as error:
            reason = disk_error(error)
            if reason is None:
                raise
            raise MarsError(
                f"{self.directory / str(checkpoint.step)}: cannot save the checkpoint ({reason}); "
                "the previous checkpoint is intact: make room, then run again with --resume"
            ) from None

    def _digests_path(self, step: int) -> Path:
        return self.directory / f".{step}.sha256.json"

    def _write_file_digests(self, step: int) -> None:
        """Record the sha256 of every file of checkpoint ``step`` beside it, and drop the
        records of checkpoints Orbax pruned."""
        folder = self.directory / str(step)
        files = {
            str(path.relative_to(folder)): _file_sha256(path)
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        write_json_atomic(self._digests_path(step), {"step": step, "files": files})
        for record in self.directory.glob(".*.sha256.json"):
            if not (self.directory / record.name[1:].split(".", 1)[0]).is_dir():
                record.unlink(missing_ok=True)

    def verify_files(self, step: int) -> None:
        """Check checkpoint ``step``'s files against the digests recorded when it was saved
        (nothing to check for a checkpoint saved without them, e.g. killed just after the
        save: its arrays are still checked against the meta's digest after restoring).

        Checking the files first keeps Orbax from reading a damaged folder at all (it fails
        noisily, with tracebacks from its reader threads).

        Raises:
          DamagedCheckpointError: a file is missing, changed or cut short.
        """
        record = self._digests_path(step)
        if not record.is_file():
            return
        folder = self.directory / str(step)
        try:
            files = json.loads(record.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # the record itself is damaged: rely on the array digest
        for name, digest in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                raise DamagedCheckpointError(f"{folder}: missing file {name}")
            if _file_sha256(path) != digest:
                raise DamagedCheckpointError(
                    f"{folder}: file {name} differs from the one saved (sha256 mismatch)"
                )

    def close(self) -> None:
        """Release the manager's resources."""
        for manager in self._managers.values():
            manager.close()
        self._managers.clear()


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, its restored state, and the newer damaged ones.

    Attributes:
      checkpoint: the newest intact checkpoint's meta.
      state: its round state.
      damaged: ``(step, reason)`` of each newer checkpoint passed over, newest first.
    """

    checkpoint: Checkpoint
    state: RoundState
    damaged: tuple[tuple[int, str], ...] = ()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(error: BaseException, limit: int = 160) -> str:
    """A short reason: the first line of ``error``, without TensorStore's spec dump."""
    text = str(error).strip().split(" [tensorstore_spec", 1)[0]
    text = text.splitlines()[0] if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], *, source: str) -> None:
    """Raise a MarsError naming the first difference between two run fingerprints.

    Args:
      saved: the fingerprint recorded in ``source`` (a checkpoint or a config file).
      current: :func:`run_fingerprint` of the run that wants to resume.
    """
    where = f"{source}: saved by a run of a different"
    advice = "; use --force to resume anyway, or choose a new --out"
    if saved.get("version") != current["version"]:
        raise MarsError(
            f"{where} mars_jax version ({saved.get('version')}, this is "
            f"{current['version']}){advice}"
        )
    difference = _first_difference(saved.get("config", {}), current["config"])
    if difference:
        raise MarsError(f"{where} config ({difference}){advice}")
    if saved.get("data_hash") != current["data_hash"]:
        raise MarsError(
            f"{where} data set (hash {saved.get('data_hash')}, the data built now hashes to "
            f"{current['data_hash']}){advice}"
        )


def check_methods(checkpoint: Checkpoint, methods: tuple[str, ...]) -> None:
    """Even with --force, the methods run before the checkpoint must come first, in order."""
    expected = [*checkpoint.finished, checkpoint.method]
    if list(methods[: len(expected)]) != expected:
        raise MarsError(
            f"refine.methods: the checkpoint was taken running {checkpoint.method!r} after "
            f"{list(checkpoint.finished) or 'no other method'}; a resumed run must list "
            f"{expected} first, got {list(methods)}"
        )


def _first_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """``section.key: A in the run, B now`` for the first differing key, or None."""
    for section in sorted(set(saved) | set(current)):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{section}.{key}: {old.get(key)!r} in the run, {new.get(key)!r} now"
    return None


def _host_local(tree: Any) -> Any:
    """Every leaf as a numpy array of its full value; arrays sharded over several hosts are
    gathered first (a collective: every process calls it in the same order)."""

    def local(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        return np.asarray(leaf)

    return jax.tree.map(local, tree)
