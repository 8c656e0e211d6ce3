"""Staging's key space cut into spans: the unit of a batch (pure, no I/O).

A span is a half-open range of key tuples in lexicographic order, `[low, high)`,
with `None` for an open end. Every copy of a key has the same tuple, so all the
copies of a key fall into the same span, whatever the files, their order or the
batch size: that is what lets a batch decide, on its own, which copy of a key
wins (see keysets.pick_winners) and count duplicates exactly.

Spans are planned from a sample of staging's keys (`KeySample`): every key when
staging is small enough, otherwise every n-th key read. The sample only decides
where batches start and end, never what is inserted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import keyvalues
from .contract import KEY_SAMPLE_ROWS
from .predicates import quote_ident, sql_literal

KeyTuple = tuple[Any, ...]


@dataclass(frozen=True)
class Span:
    """Keys k with low <= k < high (lexicographic); None is an open end."""

    low: KeyTuple | None = None
    high: KeyTuple | None = None


class KeySample:
    """A bounded sample of key tuples from a stream of key tables.

    Up to `cap` rows every row is kept; past that the stride doubles (keeping every
    other sampled row) so memory stays under `cap` rows whatever staging's size.
    """

    def __init__(self, cap: int = KEY_SAMPLE_ROWS) -> None:
        self.cap = cap
        self.stride = 1
        self.seen = 0
        self._parts: list[pa.Table] = []
        self._kept = 0

    def add(self, keys: pa.Table) -> None:
        first = (-self.seen) % self.stride
        self.seen += keys.num_rows
        if first >= keys.num_rows:
            return
        taken = (
            keys
            if self.stride == 1
            else keys.take(pa.array(range(first, keys.num_rows, self.stride), pa.int64()))
        )
        self._parts.append(taken)
        self._kept += taken.num_rows
        while self._kept > self.cap:
            table = self.table()
            self._parts = [table.take(pa.array(range(0, table.num_rows, 2), pa.int64()))]
            self._kept = self._parts[0].num_rows
            self.stride *= 2

    def table(self) -> pa.Table:
        if not self._parts:
            raise ValueError("empty sample")
        return pa.concat_tables(self._parts) if len(self._parts) > 1 else self._parts[0]

    @property
    def empty(self) -> bool:
        return not self._parts


def plan_spans(
    sample: pa.Table, names: Sequence[str], total_rows: int, batch_rows: int
) -> list[Span]:
    """Cut the key space into spans of about `batch_rows` staging rows each.

    Boundaries are sample keys at evenly spaced ranks. A key held by more rows than
    `batch_rows` cannot be split, so a span may hold more rows than asked.
    """
    batches = math.ceil(total_rows / batch_rows) if total_rows else 0
    if batches <= 1 or sample.num_rows == 0:
        return [Span()]
    ordered = keyvalues.as_numbers(sample.select(list(names))).sort_by(
        [(n, "ascending") for n in names]
    )
    points: list[KeyTuple] = []
    for j in range(1, batches):
        rank = min(ordered.num_rows - 1, (j * ordered.num_rows) // batches)
        point = tuple(ordered[n][rank].as_py() for n in names)
        if not points or point > points[-1]:
            points.append(point)
    if points and points[0] == tuple(ordered[n][0].as_py() for n in names):
        points = points[1:]  # the first span would be empty
    bounds: list[KeyTuple | None] = [None, *points, None]
    return [Span(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def split_by_spans(keys: pa.Table, names: Sequence[str], spans: Sequence[Span]) -> list[pa.Table]:
    """The rows of `keys` inside each span, in span order (spans from plan_spans)."""
    if len(spans) == 1:
        return [keys.select(list(names))]
    ordered = keys.select(list(names)).sort_by([(n, "ascending") for n in names])
    rows = _Rows(ordered, names)
    pieces, start = [], 0
    for span in spans:
        stop = len(rows) if span.high is None else bisect.bisect_left(rows, span.high, start)
        pieces.append(ordered.slice(start, stop - start))
        start = stop
    return pieces


def within(keys: pa.Table, names: Sequence[str], span: Span) -> pa.Table:
    """The key columns of the rows of `keys` inside `span` (in their order)."""
    table = keys.select(list(names))
    if span.low is None and span.high is None:
        return table
    mask = None
    if span.low is not None:
        mask = pc.invert(_before(table, names, span.low))
    if span.high is not None:
        below = _before(table, names, span.high)
        mask = below if mask is None else pc.and_(mask, below)
    return table.filter(mask)


def _before(table: pa.Table, names: Sequence[str], bound: KeyTuple) -> pa.ChunkedArray:
    """Row by row, key < bound lexicographically (vectorised; keys hold no NULL)."""
    result = None
    for depth in range(len(names) - 1, -1, -1):
        column = table[names[depth]]
        value = pa.scalar(bound[depth], column.type)
        less = pc.less(column, value)
        result = less if result is None else pc.or_(less, pc.and_(pc.equal(column, value), result))
    assert result is not None
    return result


class _Rows(Sequence[KeyTuple]):
    """A sorted key table seen as a sequence of tuples, read only where bisect looks."""

    def __init__(self, table: pa.Table, names: Sequence[str]) -> None:
        table = keyvalues.as_numbers(table.select(list(names)))
        self._columns = [table[n] for n in names]
        self._length = int(table.num_rows)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> KeyTuple:  # type: ignore[override]
        return tuple(column[index].as_py() for column in self._columns)


def span_predicate(names: Sequence[str], types: Mapping[str, str], span: Span) -> str | None:
    """A SQL predicate true exactly for the keys inside `span` (None: every key)."""
    parts = []
    if span.low is not None:
        parts.append(_compare(names, types, span.low, ">", inclusive=True))
    if span.high is not None:
        parts.append(_compare(names, types, span.high, "<", inclusive=False))
    if not parts:
        return None
    return " AND ".join(f"({p})" for p in parts)


def _compare(
    names: Sequence[str], types: Mapping[str, str], bound: KeyTuple, op: str, inclusive: bool
) -> str:
    """(k1, k2, ...) > bound, lexicographically, as nested ORs (>= when inclusive)."""
    name, rest = names[0], names[1:]
    col, literal = quote_ident(name), sql_literal(bound[0], types[name])
    if not rest:
        return f"{col} {op}{'=' if inclusive else ''} {literal}"
    inner = _compare(rest, types, bound[1:], op, inclusive)
    return f"{col} {op} {literal} OR ({col} = {literal} AND ({inner}))"
