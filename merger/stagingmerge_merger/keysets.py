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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import keycodes
from .keycodes import CodedKeys
from .keyvalues import as_numbers
from .predicates import KeyRange

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


class Members:
    """A set of distinct keys to test rows against, built once and probed by every record
    batch: a CodedKeys (sorted integers per prefix) when the keys fit one, else Arrow's
    hash join, probing each batch with only the keys its last column's range can hold."""

    def __init__(
        self, keys: pa.Table, names: Sequence[str], codes: CodedKeys | None = None
    ) -> None:
        self.names = list(names)
        self._keys: pa.Table | None = keys.select(self.names)
        self._schema = self._keys.schema
        if codes is None and keys.num_rows:
            codes = CodedKeys.of(self._keys, names)
        self.codes = codes
        self._narrowing = True  # until a batch shows the rows have no key locality

    @classmethod
    def of_codes(cls, codes: CodedKeys, schema: pa.Schema) -> Members:
        """The keys `codes` holds (`schema`: the key columns); their table is built only
        if it is asked for (a catch-up or repair needs it, a plain run does not)."""
        members = cls(schema.empty_table(), schema.names, codes)
        members._keys = None
        return members

    @property
    def keys(self) -> pa.Table:
        self._keys = _built(self._keys, self.codes, self._schema)
        return self._keys

    def __len__(self) -> int:
        return len(self.codes) if self.codes is not None else int(self.keys.num_rows)

    def ranges(self) -> list[KeyRange]:
        """Per prefix, the span of the last key column (`key_ranges` of these keys)."""
        if self.codes is not None:
            return coded_ranges(self.codes)
        return key_ranges(self.keys, self.names)

    def mask(self, rows: pa.Table) -> pa.BooleanArray:
        """For each row of `rows`, whether its key is one of these."""
        if rows.num_rows == 0 or len(self) == 0:
            return keycodes.arrow_of(np.zeros(rows.num_rows, dtype=bool))
        if self.codes is not None:
            return keycodes.arrow_of(self.codes.contains(rows.select(self.names)))
        probe = within_last_range(self.keys, rows, self.names) if self._narrowing else self.keys
        self._narrowing = self._narrowing and probe is not self.keys
        found = np.zeros(rows.num_rows, dtype=bool)
        found[positions_in(rows, probe, self.names).to_numpy()] = True
        return keycodes.arrow_of(found)


def _built(table: pa.Table | None, index: CodedKeys | None, schema: pa.Schema) -> pa.Table:
    """`table`, or, while there is none, the table of the keys `index` holds."""
    if table is not None:
        return table
    assert index is not None
    return index.table(schema)


def anti_join(left: pa.Table, right: pa.Table, names: Sequence[str]) -> pa.Table:
    """Rows of `left` whose key is not in `right`, in `left`'s order."""
    if right.num_rows == 0 or left.num_rows == 0:
        return left
    return left.filter(pc.invert(Members(right, names).mask(left)))


def semi_join(left: pa.Table, right: pa.Table, names: Sequence[str]) -> pa.Table:
    """Rows of `left` whose key is in `right`, in `left`'s order."""
    if right.num_rows == 0 or left.num_rows == 0:
        return left.slice(0, 0)
    return left.filter(Members(right, names).mask(left))


@dataclass
class Counted:
    """A span's staging keys counted: the keys held more than once, and each key once,
    as a CodedKeys (keys that fit one: the anti-join with main's then needs no table of
    them) or a table."""

    schema: pa.Schema  # the key columns
    repeated: pa.Table
    codes: CodedKeys | None = None
    table: pa.Table | None = None  # each key once (built from the codes when asked for)

    @property
    def distinct(self) -> pa.Table:
        self.table = _built(self.table, self.codes, self.schema)
        return self.table

    def __len__(self) -> int:
        """How many distinct keys."""
        return len(self.codes) if self.codes is not None else int(self.distinct.num_rows)

    def ranges(self) -> list[KeyRange]:
        """Per prefix, the span of the last key column (`key_ranges` of these keys): from
        the index's sorted arrays when there is one, without another pass over the keys."""
        if self.codes is not None:
            return coded_ranges(self.codes)
        return key_ranges(self.distinct, self.schema.names)

    def without(self, present: pa.Table, names: Sequence[str]) -> Members:
        """The distinct keys main does not hold (`present`: main's keys in the span)."""
        if self.codes is None:
            return Members(anti_join(self.distinct, present, names), names)
        return Members.of_codes(self.codes.without(present), self.schema)


def count(keys: pa.Table, names: Sequence[str]) -> Counted:
    """`keys` counted (Counted): by sorting integers when they fit a CodedKeys, else
    with Arrow's group_by."""
    schema = keys.select(list(names)).schema
    fast = keycodes.counted(keys, names)
    if fast is not None:
        return Counted(schema, fast[1], fast[0])
    counts = keys.select(list(names)).group_by(list(names), use_threads=True)
    counts = counts.aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1)).select(list(names))
    return Counted(schema, repeated, table=counts.select(list(names)))


def distinct_and_repeated(keys: pa.Table, names: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """(every key once, the keys that occur more than once), key columns only."""
    counted = count(keys, names)
    return counted.distinct, counted.repeated


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
        for row in _python_rows(rows)
    ]


def _python_rows(rows: pa.Table) -> list[dict[str, Any]]:
    """The rows as Python values; a value Python's datetime cannot hold (a timestamp or
    date past 9999 or before year 1, which Delta allows) as its type and stored integer
    (`{"$physical": type, "value": n}`), so every value has a fingerprint and the ones
    Python can hold keep the one they always had."""
    try:
        listed: list[dict[str, Any]] = rows.to_pylist()
        return listed
    except (OverflowError, ValueError):
        columns = [_python_values(rows.column(name)) for name in rows.column_names]
        names = rows.column_names
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    try:
        plain: list[Any] = column.to_pylist()
        return plain
    except (OverflowError, ValueError):
        physical = column.cast(_physical(column.type)).to_pylist()
        values = []
        for scalar, number in zip(column, physical, strict=True):
            try:
                values.append(scalar.as_py())
            except (OverflowError, ValueError):
                values.append({"$physical": str(column.type), "value": number})
        return values


def _physical(kind: pa.DataType) -> pa.DataType:
    """`kind` with every date, time, timestamp and duration replaced by its stored integer."""
    if pa.types.is_timestamp(kind) or pa.types.is_date64(kind) or pa.types.is_duration(kind):
        return pa.int64()
    if pa.types.is_date32(kind) or pa.types.is_time32(kind):
        return pa.int32()
    if pa.types.is_time64(kind):
        return pa.int64()
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_physical(f.type)) for f in kind])
    if pa.types.is_map(kind):
        return pa.map_(_physical(kind.key_type), _physical(kind.item_type))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_physical(kind.value_type)))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_physical(kind.value_type)), kind.list_size)
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_physical(kind.value_type)))
    return kind


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


def repeated_keys(keys: pa.Table, names: Sequence[str]) -> pa.Table:
    """Keys that occur more than once in `keys`."""
    return distinct_and_repeated(keys, names)[1]


def key_ranges(keys: pa.Table, names: Sequence[str]) -> list[KeyRange]:
    """Per prefix (all key columns but the last), the span of the last key column."""
    if keys.num_rows == 0:
        return []
    keys = as_numbers(keys.select(list(names)))
    *prefix, last = names
    if not prefix:
        bounds = pc.min_max(keys[last])
        return [KeyRange((), bounds["min"].as_py(), bounds["max"].as_py())]
    grouped = keys.group_by(prefix, use_threads=False).aggregate([(last, "min"), (last, "max")])
    return [
        KeyRange(tuple(row[c] for c in prefix), row[f"{last}_min"], row[f"{last}_max"])
        for row in grouped.to_pylist()
    ]


def coded_ranges(index: CodedKeys) -> list[KeyRange]:
    """`key_ranges` of the keys an index holds: each prefix's first and last value."""
    return [
        KeyRange(prefix, values[0].item(), values[-1].item())
        for prefix, values in index.groups.items()
        if len(values)
    ]


def key_tuples(keys: pa.Table, names: Sequence[str]) -> list[tuple[object, ...]]:
    keys = as_numbers(keys.select(list(names)))
    columns = [keys[n].to_pylist() for n in names]
    return list(zip(*columns, strict=True))
