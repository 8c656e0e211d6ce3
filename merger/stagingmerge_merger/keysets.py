"""Set operations on Arrow tables of keys: dedup, anti/semi joins, key ranges.

Pure (no I/O): inputs and outputs are in-memory Arrow tables holding only the
key columns, plus POSITION where a row's place in staging's read order matters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def _distinct(table: pa.Table, names: Sequence[str]) -> pa.Table:
    return table.select(list(names)).group_by(list(names), use_threads=False).aggregate([])


def repeated_keys(keys: pa.Table, names: Sequence[str]) -> pa.Table:
    """Keys that occur more than once in `keys`."""
    counts = (
        keys.select(list(names))
        .group_by(list(names), use_threads=False)
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


def ranges_overlap(a: Iterable[KeyRange], b: Iterable[KeyRange]) -> bool:
    spans: dict[tuple[object, ...], list[KeyRange]] = {}
    for r in b:
        spans.setdefault(r.prefix, []).append(r)
    return any(
        r.low <= other.high and other.low <= r.high for r in a for other in spans.get(r.prefix, ())
    )


def key_tuples(keys: pa.Table, names: Sequence[str]) -> list[tuple[object, ...]]:
    columns = [keys[n].to_pylist() for n in names]
    return list(zip(*columns, strict=True))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast the named columns to `schema` (DataFusion scans give string_view etc.)."""
    return table.select(schema.names).cast(schema)
