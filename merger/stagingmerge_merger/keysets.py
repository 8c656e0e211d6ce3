"""Set operations on Arrow tables of keys: dedup, anti/semi joins, key ranges, winners.

Pure (no I/O): inputs and outputs are in-memory Arrow tables holding the key
columns, plus POSITION where a row's place in a table matters.

Which copy of a repeated key wins (`pick_winners`) depends only on the copies'
content, never on where they sit in staging: the smallest by the `first_by`
columns (NULLs last), then by the row's fingerprint, the SHA-256 of its canonical
JSON (`row_fingerprints`). Compaction, z-ordering or rewriting staging's files
therefore never changes what is inserted.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .plan import KeyRange

POSITION = "__stagingmerge_position"


def with_positions(keys: pa.Table, start: int) -> pa.Table:
    """Number rows `start, start+1, ...`: their place in staging's read order."""
    positions = pa.array(range(start, start + keys.num_rows), pa.int64())
    return keys.append_column(POSITION, positions)


def first_occurrences(keys: pa.Table, names: Sequence[str]) -> pa.Table:
    """One row per key: the one read first (lowest POSITION). Columns: names + POSITION."""
    grouped = keys.group_by(list(names), use_threads=False).aggregate([(POSITION, "min")])
    return grouped.rename_columns(
        [POSITION if c == f"{POSITION}_min" else c for c in grouped.column_names]
    ).select([*names, POSITION])


def anti_join(left: pa.Table, right: pa.Table, names: Sequence[str]) -> pa.Table:
    """Rows of `left` whose key is not in `right`."""
    if right.num_rows == 0 or left.num_rows == 0:
        return left
    return left.join(_distinct(right, names), keys=list(names), join_type="left anti")


def semi_join(left: pa.Table, right: pa.Table, names: Sequence[str]) -> pa.Table:
    """Rows of `left` whose key is in `right`."""
    if right.num_rows == 0 or left.num_rows == 0:
        return left.slice(0, 0)
    return left.join(_distinct(right, names), keys=list(names), join_type="left semi")


def distinct_and_repeated(keys: pa.Table, names: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """(every key once, the keys that occur more than once), key columns only."""
    counts = (
        keys.select(list(names))
        .group_by(list(names), use_threads=True)
        .aggregate([([], "count_all")])
    )
    repeated = counts.filter(pc.greater(counts["count_all"], 1)).select(list(names))
    return counts.select(list(names)), repeated


def positions_in(rows: pa.Table, keys: pa.Table, names: Sequence[str]) -> pa.Array:
    """Sorted positions of the rows of `rows` whose key is in `keys` (distinct keys).

    The hash table is built on `rows` (a record batch's worth) and probed with `keys`,
    which is the fast way round when `rows` is the smaller side."""
    if rows.num_rows == 0 or keys.num_rows == 0:
        return pa.array([], pa.int64())
    numbered = with_positions(rows.select(list(names)), 0)
    hits = keys.select(list(names)).join(numbered, keys=list(names), join_type="right semi")
    return _sorted(hits[POSITION])


def within_last_range(keys: pa.Table, rows: pa.Table, names: Sequence[str]) -> pa.Table:
    """The keys whose last column lies within the [min, max] of `rows`' last column: the
    only ones `rows` can hold. For a staging read in key order (a backfill, one log in
    index order) that is a small slice of a span's keys, so each record batch is probed
    with a few keys instead of all of them; without such locality, with all of them."""
    last = names[-1]
    if rows.num_rows == 0 or keys.num_rows == 0:
        return keys.slice(0, 0)
    bounds = pc.min_max(rows[last])
    low, high = bounds["min"], bounds["max"]
    if not low.is_valid or not high.is_valid:
        return keys
    column = keys[last]
    inside = pc.and_(pc.greater_equal(column, low), pc.less_equal(column, high))
    if pc.sum(inside).as_py() * 4 > keys.num_rows:
        return keys  # no locality (staging files mixing the key space): not worth a copy
    return keys.filter(inside)


def other_positions(count: int, positions: pa.Array) -> pa.Array:
    """0..count-1 without `positions`."""
    every = pa.array(range(count), pa.int64())
    return every.filter(pc.invert(pc.is_in(every, value_set=positions)))


def pick_winners(rows: pa.Table, names: Sequence[str], first_by: Sequence[str]) -> pa.Table:
    """One row per key of `rows`: the smallest by `first_by` (NULLs last), then by
    fingerprint. Depends only on the rows' content, not on their order."""
    if rows.num_rows == 0:
        return rows
    fingerprint = "__stagingmerge_fingerprint"
    marked = rows.append_column(fingerprint, pa.array(row_fingerprints(rows), pa.binary()))
    ordered = marked.sort_by(
        [(c, "ascending", "at_end") for c in first_by] + [(fingerprint, "ascending", "at_end")]
    )
    numbered = with_positions(ordered.select(list(names)), 0)
    keep = first_occurrences(numbered, names)
    return ordered.take(_sorted(keep[POSITION])).drop_columns([fingerprint])


def _sorted(positions: pa.ChunkedArray) -> pa.Array:
    column = positions.combine_chunks()
    return column.take(pc.sort_indices(column))


def row_fingerprints(rows: pa.Table) -> list[bytes]:
    """SHA-256 of each row's canonical JSON: column names sorted, no spaces, dates and
    times in ISO 8601, decimals as text, bytes as hex, maps as [key, value] pairs."""
    return [
        hashlib.sha256(
            json.dumps(
                row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json
            ).encode()
        ).digest()
        for row in rows.to_pylist()
    ]


def _json(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def _distinct(table: pa.Table, names: Sequence[str]) -> pa.Table:
    return table.select(list(names)).group_by(list(names), use_threads=True).aggregate([])


def repeated_keys(keys: pa.Table, names: Sequence[str]) -> pa.Table:
    """Keys that occur more than once in `keys`."""
    counts = (
        keys.select(list(names))
        .group_by(list(names), use_threads=True)
        .aggregate([([], "count_all")])
    )
    return counts.filter(pc.greater(counts["count_all"], 1)).select(list(names))


def key_ranges(keys: pa.Table, names: Sequence[str]) -> list[KeyRange]:
    """Per prefix (all key columns but the last), the span of the last key column."""
    if keys.num_rows == 0:
        return []
    *prefix, last = names
    if not prefix:
        bounds = pc.min_max(keys[last])
        return [KeyRange((), bounds["min"].as_py(), bounds["max"].as_py())]
    grouped = keys.group_by(prefix, use_threads=False).aggregate([(last, "min"), (last, "max")])
    return [
        KeyRange(tuple(row[c] for c in prefix), row[f"{last}_min"], row[f"{last}_max"])
        for row in grouped.to_pylist()
    ]


def key_tuples(keys: pa.Table, names: Sequence[str]) -> list[tuple[object, ...]]:
    columns = [keys[n].to_pylist() for n in names]
    return list(zip(*columns, strict=True))
