"""A set of keys held compactly, for membership tests that do not rebuild a hash table.

Keys whose last column is an integer (CT's `source_url, cert_index`, and most event keys)
are held as, per prefix (the values of the other key columns), one sorted NumPy array of
the last column's distinct values: 8 bytes a key instead of a Python tuple or an Arrow
hash table. Membership of a batch of rows is a binary search per row (`np.searchsorted`),
so one coded set serves every record batch of a span; Acero's joins rebuilt their hash table
on every call, and that was most of a merge's CPU time after main's key scan.

`CodedKeys.of` returns None for keys this cannot hold (`supports`); keysets.py then uses
Arrow's joins.
NULL never equals NULL: a NULL key is never held and never found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .keyvalues import as_number_array

KeyPrefix = tuple[Any, ...]


def supports(schema: pa.Schema, names: Sequence[str]) -> bool:
    """Whether keys of this schema can be held in a CodedKeys: an integer last column, and
    prefix columns whose values are equal in Python exactly when Arrow finds them equal
    (not floats, where -0.0 == 0.0; not timestamps, which may carry nanoseconds)."""
    *prefix, last = names
    return pa.types.is_integer(schema.field(last).type) and all(
        _exact(schema.field(name).type) for name in prefix
    )


def _exact(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_integer,
            pa.types.is_boolean,
            pa.types.is_date,
            pa.types.is_decimal,
        )
    )


@dataclass(frozen=True)
class CodedKeys:
    names: tuple[str, ...]
    groups: dict[KeyPrefix, np.ndarray]  # prefix -> sorted distinct values of the last column
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, keys: pa.Table, names: Sequence[str]) -> CodedKeys | None:
        """The distinct keys of `keys` (any order, copies allowed), or None when they
        cannot be held this way."""
        if not supports(keys.schema, names):
            return None
        return _counted(_Coded.of(keys, names), keys.select(list(names)).schema)[0]

    def __len__(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def contains(self, rows: pa.Table) -> np.ndarray:
        """For each row of `rows` (holding the key columns), whether its key is here."""
        found = np.zeros(rows.num_rows, dtype=bool)
        if rows.num_rows == 0 or not self.groups:
            return found
        coded = _Coded.of(rows, self.names, self.dtype)
        for prefix, where in coded.rows_by_prefix().items():
            held = self.groups.get(prefix)
            if held is None or not len(held):
                continue
            found[where] = _find(held, coded.last[where])[1] & coded.valid[where]
        return found

    def without(self, rows: pa.Table) -> CodedKeys:
        """These keys but those of `rows` (the anti-join, from the sorted side)."""
        if rows.num_rows == 0 or not self.groups:
            return self
        coded = _Coded.of(rows, self.names, self.dtype)
        groups = dict(self.groups)
        for prefix, values in coded.by_prefix().items():
            held = groups.get(prefix)
            if held is None or not len(values):
                continue
            at, hit = _find(held, values)
            keep = np.ones(len(held), dtype=bool)
            keep[at[hit]] = False
            if keep.any():
                groups[prefix] = held[keep]
            else:
                del groups[prefix]
        return CodedKeys(self.names, groups, self.dtype)

    def table(self, schema: pa.Schema) -> pa.Table:
        """The keys as an Arrow table of `schema` (the key columns), prefix by prefix."""
        return _concat(schema, [_table(schema, p, v) for p, v in self.groups.items() if len(v)])


def counted(keys: pa.Table, names: Sequence[str]) -> tuple[CodedKeys, pa.Table] | None:
    """(every key once, as an index; the keys that occur more than once, as a table of the
    key columns), by sorting integers. None when the keys cannot be held in a CodedKeys or
    one is NULL (audited out of staging; Arrow's group_by then counts them)."""
    if not supports(keys.schema, names):
        return None
    coded = _Coded.of(keys, names)
    if not coded.valid.all():
        return None
    return _counted(coded, keys.select(list(names)).schema)


def _counted(coded: _Coded, schema: pa.Schema) -> tuple[CodedKeys, pa.Table]:
    """The index of the coded rows' valid keys, and the keys they hold more than once."""
    groups, repeated = {}, []
    for prefix, values in coded.by_prefix().items():
        distinct, counts = _unique(values)
        if len(distinct):
            groups[prefix] = distinct
        if (counts > 1).any():
            repeated.append(_table(schema, prefix, distinct[counts > 1]))
    return CodedKeys(tuple(schema.names), groups, coded.dtype), _concat(schema, repeated)


def _find(held: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each value would sit in the sorted `held`, clipped to it; whether it is there)."""
    at = np.searchsorted(held, values)
    at[at == len(held)] = 0
    return at, held[at] == values


@dataclass(frozen=True)
class _Coded:
    """Rows' keys as a prefix number per row (into `prefixes`) and the last column as
    integers; `valid` is False where any key column is NULL."""

    codes: np.ndarray
    prefixes: list[KeyPrefix]
    last: np.ndarray
    valid: np.ndarray
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, rows: pa.Table, names: Sequence[str], dtype: np.dtype[Any] | None = None) -> _Coded:
        *prefix_names, last_name = names
        last = rows[last_name]
        if dtype is None:
            dtype = np.dtype(np.uint64 if pa.types.is_uint64(last.type) else np.int64)
        valid = pc.is_valid(last).to_numpy() if last.null_count else np.ones(rows.num_rows, bool)
        codes = np.zeros(rows.num_rows, dtype=np.int64)
        prefixes: list[KeyPrefix] = [()]
        for name in prefix_names:
            # numbered column by column, kept dense (< rows) so no number ever overflows
            encoded = pc.dictionary_encode(rows[name]).combine_chunks()
            values = [*as_number_array(encoded.dictionary).to_pylist(), None]
            size = len(values)
            indices = encoded.indices
            if indices.null_count:
                indices = indices.fill_null(size - 1)
            indices = indices.to_numpy().astype(np.int64)
            valid &= indices != size - 1
            numbered, codes = _dense(codes * size + indices)
            prefixes = [prefixes[int(n) // size] + (values[int(n) % size],) for n in numbered]
        if not prefix_names and rows.num_rows == 0:
            prefixes = []
        filled = last.fill_null(0) if last.null_count else last
        integers = np.asarray(filled.to_numpy()).astype(dtype, copy=False)
        return cls(codes, prefixes, integers, valid, dtype)

    def rows_by_prefix(self) -> dict[KeyPrefix, np.ndarray]:
        """Per prefix, the positions of its rows."""
        if len(self.prefixes) == 1:
            return {self.prefixes[0]: np.arange(len(self.codes))}
        order = np.argsort(self.codes, kind="stable")
        bounds = np.searchsorted(self.codes[order], np.arange(len(self.prefixes) + 1))
        return {prefix: order[bounds[i] : bounds[i + 1]] for i, prefix in enumerate(self.prefixes)}

    def by_prefix(self) -> dict[KeyPrefix, np.ndarray]:
        """Per prefix, the last column's values of its rows without a NULL key column."""
        return {
            prefix: self.last[where[self.valid[where]]]
            for prefix, where in self.rows_by_prefix().items()
        }


def _dense(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct numbers, sorted; each number's place among them)."""
    if len(numbers) and int(numbers.max()) < 4 * len(numbers) + 1024:
        seen = np.bincount(numbers) > 0  # linear: the usual case of a few prefixes
        place = np.cumsum(seen) - 1
        return np.nonzero(seen)[0], place[numbers]
    distinct = _unique(numbers)[0]
    return distinct, np.searchsorted(distinct, numbers)


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values, sorted; how often each occurs). By sorting: NumPy 2's
    np.unique hashes, which measured 50x slower on half a million int64s."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def _table(schema: pa.Schema, prefix: KeyPrefix, values: np.ndarray) -> pa.Table:
    columns = [
        pa.repeat(pa.scalar(v, type=schema.field(i).type), len(values))
        for i, v in enumerate(prefix)
    ]
    columns.append(arrow_of(values).cast(schema.field(len(prefix)).type))
    return pa.Table.from_arrays(columns, schema=schema)


def arrow_of(values: np.ndarray) -> pa.Array:
    """A 1-d NumPy array of booleans or integers as an Arrow array (no nulls), built from
    its buffer: `pa.array(ndarray)` imports numpy.ma to look for a mask, ~13 ms of every
    merge process's start on one CPU."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.BooleanArray.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _concat(schema: pa.Schema, tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
