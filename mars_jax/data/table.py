"""The one internal table of text preference pairs, and cleaning, splitting and sampling.

Every reader in :mod:`mars_jax.data.formats` returns a :class:`PairTable`. Shapes: ``B`` pairs.

**Groups.** Each row has a group key: its prompt text, unless the reader gave an explicit key
(``group_key[i] != ""``): the post id for summarize-from-feedback rows (``"post:<id>"``), or
``"record:<file>:<line>"`` for a record without a prompt, so that prompt-less records do not
all fall into one group. ``group[i]`` is the first-seen index of row ``i``'s key within the
table (``0, 1, 2, ...`` in row order). :meth:`PairTable.concat` recomputes the ids over the
combined rows, so the same prompt text (or post id) gets the same id across files, and
different keys never share an id. :meth:`PairTable.select` keeps the ids of the rows it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mars_jax.errors import MarsError

__all__ = ["CleaningReport", "PairTable", "clean_pairs", "sample_pairs", "split_by_group"]

_ROW_COLUMNS = ("prompt", "chosen", "rejected", "group_key", "group", "source", "margin", "line")


def _group_ids(prompt: Sequence[str], group_key: Sequence[str]) -> np.ndarray:
    """``[B]`` int64 first-seen index of each row's group key (explicit key, else prompt)."""
    first_seen: dict[tuple[bool, str], int] = {}
    ids = np.empty(len(prompt), dtype=np.int64)
    for i, (text, key) in enumerate(zip(prompt, group_key, strict=True)):
        ids[i] = first_seen.setdefault((True, key) if key else (False, text), len(first_seen))
    return ids


@dataclass(frozen=True, eq=False)
class PairTable:
    """Text preference pairs, one row per (prompt, chosen, rejected).

    Attributes:
      prompt: ``[B]`` shared prompt text (``""`` if none).
      chosen: ``[B]`` preferred response text.
      rejected: ``[B]`` dispreferred response text.
      group_key: ``[B]`` explicit group key, or ``""`` to group by the prompt text.
      group: ``[B]`` int64 group id (same key, same id; see the module docstring).
      source: ``[B]`` int32 index into ``sources``.
      sources: source names (file paths).
      margin: ``[B]`` float32 given preference strength, NaN where absent.
      line: ``[B]`` int64 line (or row) number of the record in its source, 1-based.
    """

    prompt: tuple[str, ...]
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    group_key: tuple[str, ...]
    group: np.ndarray
    source: np.ndarray
    sources: tuple[str, ...]
    margin: np.ndarray
    line: np.ndarray

    def __post_init__(self) -> None:
        """Coerce the array dtypes and check that every column has ``B`` rows."""
        for name, dtype in (
            ("group", np.int64),
            ("source", np.int32),
            ("margin", np.float32),
            ("line", np.int64),
        ):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        lengths = {name: len(getattr(self, name)) for name in _ROW_COLUMNS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"PairTable columns differ in length: {lengths}")

    @classmethod
    def from_columns(
        cls,
        *,
        prompt: Sequence[str],
        chosen: Sequence[str],
        rejected: Sequence[str],
        group_key: Sequence[str],
        margin: Sequence[float],
        line: Sequence[int],
        source: str,
    ) -> PairTable:
        """A table of rows from one source, with group ids computed from the keys."""
        return cls(
            prompt=tuple(prompt),
            chosen=tuple(chosen),
            rejected=tuple(rejected),
            group_key=tuple(group_key),
            group=_group_ids(prompt, group_key),
            source=np.zeros(len(prompt), dtype=np.int32),
            sources=(source,),
            margin=np.asarray(margin, dtype=np.float32),
            line=np.asarray(line, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.prompt)

    def select(self, rows: np.ndarray | Sequence[int]) -> PairTable:
        """The rows at integer indices (or where a ``[B]`` boolean mask is true), in that order.

        Group ids and ``sources`` are kept as they are.
        """
        index = np.asarray(rows)
        index = np.flatnonzero(index) if index.dtype == np.bool_ else index.astype(np.int64)
        return PairTable(
            prompt=tuple(self.prompt[i] for i in index),
            chosen=tuple(self.chosen[i] for i in index),
            rejected=tuple(self.rejected[i] for i in index),
            group_key=tuple(self.group_key[i] for i in index),
            group=self.group[index],
            source=self.source[index],
            sources=self.sources,
            margin=self.margin[index],
            line=self.line[index],
        )

    @classmethod
    def concat(cls, tables: Sequence[PairTable]) -> PairTable:
        """The rows of all tables in order; group ids recomputed over the combined rows.

        Sources with the same name are merged into one entry of ``sources``.
        """
        if not tables:
            raise ValueError("PairTable.concat needs at least one table")
        sources: dict[str, int] = {}
        for table in tables:
            for name in table.sources:
                sources.setdefault(name, len(sources))
        prompt = tuple(text for table in tables for text in table.prompt)
        group_key = tuple(key for table in tables for key in table.group_key)
        source = np.concatenate(
            [
                np.asarray([sources[name] for name in table.sources], dtype=np.int32)[table.source]
                for table in tables
            ]
        )
        return cls(
            prompt=prompt,
            chosen=tuple(text for table in tables for text in table.chosen),
            rejected=tuple(text for table in tables for text in table.rejected),
            group_key=group_key,
            group=_group_ids(prompt, group_key),
            source=source,
            sources=tuple(sources),
            margin=np.concatenate([table.margin for table in tables]),
            line=np.concatenate([table.line for table in tables]),
        )


class CleaningReport(NamedTuple):
    """What :func:`clean_pairs` dropped; each dropped row is counted once.

    Attributes:
      total: rows in.
      identical: dropped because chosen == rejected (exactly).
      empty: dropped because chosen or rejected is empty or whitespace-only.
      duplicate: dropped as an exact repeat (same prompt, chosen and rejected) of a kept row.
      kept: rows out.
    """

    total: int
    identical: int
    empty: int
    duplicate: int
    kept: int

    def to_json(self) -> dict[str, int]:
        """All counts as a plain dict."""
        return self._asdict()


def clean_pairs(table: PairTable) -> tuple[PairTable, CleaningReport]:
    """Drop unusable rows, keeping the order of the rest.

    Rules, applied in this order (a row is counted under the first that matches): chosen
    identical to rejected; chosen or rejected empty after stripping whitespace; an exact
    duplicate of an earlier kept row (the first occurrence is kept).
    """
    keep = np.zeros(len(table), dtype=bool)
    identical = empty = duplicate = 0
    seen: set[tuple[str, str, str]] = set()
    for i, row in enumerate(zip(table.prompt, table.chosen, table.rejected, strict=True)):
        _, chosen, rejected = row
        if chosen == rejected:
            identical += 1
        elif not chosen.strip() or not rejected.strip():
            empty += 1
        elif row in seen:
            duplicate += 1
        else:
            seen.add(row)
            keep[i] = True
    kept = int(keep.sum())
    report = CleaningReport(len(table), identical, empty, duplicate, kept)
    return table.select(keep), report


def split_by_group(
    table: PairTable, *, heldout_fraction: float, seed: int
) -> tuple[PairTable, PairTable]:
    """Split into (train, held-out) by whole groups, so that no group is on both sides.

    The groups are put in a random order drawn from ``seed``; the held-out part is the
    shortest prefix of that order whose pair count is closest to ``heldout_fraction * B``.
    Both parts keep the table's row order. The same table and seed give the same split.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise MarsError(f"heldout_fraction: expected a number in [0, 1], got {heldout_fraction}")
    groups, counts = np.unique(table.group, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    cumulative = np.concatenate([[0], np.cumsum(counts[order])])
    num_heldout = int(np.argmin(np.abs(cumulative - heldout_fraction * len(table))))
    heldout = np.isin(table.group, groups[order[:num_heldout]])
    return table.select(~heldout), table.select(heldout)


def sample_pairs(table: PairTable, *, max_pairs: int, seed: int) -> PairTable:
    """A uniform random subset of ``min(max_pairs, B)`` rows drawn from ``seed``.

    Rows are drawn without regard to groups, and keep the table's row order. With
    ``max_pairs >= B`` the table is returned whole.
    """
    if max_pairs < 0:
        raise MarsError(f"max_pairs: expected a non-negative integer, got {max_pairs}")
    if max_pairs >= len(table):
        return table
    rows = np.random.default_rng(seed).choice(len(table), size=max_pairs, replace=False)
    return table.select(np.sort(rows))
