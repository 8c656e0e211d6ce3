"""SQL predicates over key columns: quoted names, exact literals, key ranges (pure).

The engine hands them to delta-rs, which prunes files and row groups with them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_INTEGER_TYPES = frozenset({"long", "integer", "short", "byte"})

# Above this many distinct key prefixes in one batch the range predicate collapses
# to one BETWEEN per key column (DataFusion parses long OR chains recursively).
MAX_PREDICATE_GROUPS = 64


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_EPOCH = dt.date(1970, 1, 1)


def sql_literal(value: Any, type_name: str) -> str:
    """An exact SQL literal for a key value of the given Delta type."""
    if type_name in _INTEGER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer for {type_name}, got {value!r}")
        return str(value)
    if type_name == "string":
        return "'" + str(value).replace("'", "''") + "'"
    if type_name == "date":
        # a day number (keyvalues.py), exact for every date Delta holds; DataFusion
        # cannot parse a DATE '...' literal past year 9999
        if isinstance(value, dt.date):
            value = (value - _EPOCH).days
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected a date, got {value!r}")
        return f"CAST({value} AS DATE)"
    raise TypeError(f"no SQL literal for type {type_name}")


@dataclass(frozen=True)
class KeyRange:
    """The keys of one prefix (all key columns but the last) span [low, high] in the last."""

    prefix: tuple[Any, ...]
    low: Any
    high: Any


def range_predicate(
    keys: Sequence[str], types: Mapping[str, str], ranges: Sequence[KeyRange]
) -> str | None:
    """A predicate that every key in `ranges` satisfies, tight enough to prune files.

    One `last BETWEEN low AND high AND prefix = ...` term per prefix, or, beyond
    MAX_PREDICATE_GROUPS prefixes, one BETWEEN per key column. None: no keys. The last
    column's range comes first: DataFusion evaluates the rest of a conjunction only on
    the rows it selects, and an integer range is the cheap test (measured on 100 M
    unclustered rows: 1.22 s against 1.45 s with the string equality first).
    """
    if not ranges:
        return None
    *prefix_cols, last = keys

    def between(col: str, low: Any, high: Any) -> str:
        t = types[col]
        if low == high:
            return f"{quote_ident(col)} = {sql_literal(low, t)}"
        return f"{quote_ident(col)} BETWEEN {sql_literal(low, t)} AND {sql_literal(high, t)}"

    if len(ranges) <= MAX_PREDICATE_GROUPS:
        terms = []
        for r in ranges:
            parts = [between(last, r.low, r.high)] + [
                f"{quote_ident(c)} = {sql_literal(v, types[c])}"
                for c, v in zip(prefix_cols, r.prefix, strict=True)
            ]
            terms.append(" AND ".join(parts))
        return _or(terms)
    parts = [between(last, min(r.low for r in ranges), max(r.high for r in ranges))]
    for i, col in enumerate(prefix_cols):
        values = [r.prefix[i] for r in ranges]
        parts.append(between(col, min(values), max(values)))
    return " AND ".join(parts)


def predicate_boxes(
    keys: Sequence[str], ranges: Sequence[KeyRange]
) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """The (lows, highs) per key column of each disjunct `range_predicate` writes for the
    same ranges: what delta-rs prunes files with (delta/files.py mirrors it)."""
    if not ranges:
        return []
    if len(ranges) <= MAX_PREDICATE_GROUPS:
        return [((*r.prefix, r.low), (*r.prefix, r.high)) for r in ranges]
    columns = range(len(keys) - 1)
    return [
        (
            (*(min(r.prefix[i] for r in ranges) for i in columns), min(r.low for r in ranges)),
            (*(max(r.prefix[i] for r in ranges) for i in columns), max(r.high for r in ranges)),
        )
    ]


def keys_in_predicate(
    keys: Sequence[str], types: Mapping[str, str], rows: Sequence[tuple[Any, ...]]
) -> str:
    """A predicate matching exactly the given key tuples (grouped by prefix, IN on the last)."""
    if not rows:
        raise ValueError("no keys")
    *prefix_cols, last = keys
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        groups.setdefault(tuple(row[:-1]), []).append(row[-1])
    terms = []
    for prefix, values in groups.items():
        parts = [
            f"{quote_ident(c)} = {sql_literal(v, types[c])}"
            for c, v in zip(prefix_cols, prefix, strict=True)
        ]
        listed = ", ".join(sql_literal(v, types[last]) for v in sorted(set(values)))
        parts.append(f"{quote_ident(last)} IN ({listed})")
        terms.append(" AND ".join(parts))
    return _or(terms)


def _or(terms: Sequence[str]) -> str:
    return terms[0] if len(terms) == 1 else " OR ".join(f"({t})" for t in terms)
