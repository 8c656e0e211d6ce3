"""Shard cut points from staging's file statistics: no key is read to place them (pure).

Every shard otherwise reads all of staging's keys to place the cuts (shards.cuts_from_sample on
a sample of them), so N shards together read staging's keys N+1 times. A backfill usually
writes its files in key order (one log, rising `cert_index`), and the Delta log already
holds each file's row count and min/max per key column. From those alone:

- a file's rows lie between the tuples of its minima and of its maxima (lexicographic
  order: every key k of the file has k_i >= min_i for each column, hence k >= (min_1, ...));
- when those ranges do not overlap (each file's upper tuple <= the next file's lower),
  the files sorted by range put the rows in key order, and the cut at rank j*rows/N falls
  in a known file; inside a file whose key columns are constant but the last, an integer,
  the cut is interpolated over that integer's range (rows spread evenly), otherwise it
  goes to the nearer file boundary;
- the cuts are kept only when the estimated rows of every shard stay within TOLERANCE of
  an even share; otherwise (overlapping files, too few files to balance, a statistic or a
  row count missing, key types other than strings and integers) the caller samples keys.

The same ranges tell a shard how much of staging its scan reads (`rows_meeting`: the rows
of the files its span meets); when staging's files mix the whole key space, every shard
reads nearly all of it, and the merge warns.

The statistics decide only where the cuts are, hence the balance: shards.span_of makes
spans from any cut points that tile the key space, so a stale, truncated or wrong
statistic can unbalance the shards, never break "each key in exactly one shard". The
cuts are a function of the staging version's log, identical in every shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import pyarrow as pa

from . import keyvalues
from .keyspace import KeyTuple, Span

TOLERANCE = 1.25  # a shard's estimated rows may exceed an even share by a quarter


@dataclass(frozen=True)
class FileRange:
    rows: int
    low: KeyTuple  # (min_1, ..., min_k): every key of the file is >= it
    high: KeyTuple  # (max_1, ..., max_k): every key of the file is <= it


def usable_types(schema: pa.Schema) -> bool:
    """Key types whose statistics compare in Python as the engine compares the values
    (UTF-8 strings by code point, integers by value)."""
    types = pa.types
    return all(
        types.is_integer(f.type) or types.is_string(f.type) or types.is_large_string(f.type)
        for f in schema
    )


def ranges_of(stats: pa.Table, names: Sequence[str]) -> list[FileRange] | None:
    """Each file's rows and key range from Table.key_file_stats; None when any file lacks
    a row count or a statistic of a key column."""
    columns = [f"{side}.{name}" for side in ("min", "max") for name in names]
    if "num_records" not in stats.column_names or any(c not in stats.column_names for c in columns):
        return None
    rows = stats.column("num_records").to_pylist()
    stats = keyvalues.as_numbers(stats.select(["num_records", *columns]))
    lows = list(zip(*(stats.column(f"min.{n}").to_pylist() for n in names), strict=True))
    highs = list(zip(*(stats.column(f"max.{n}").to_pylist() for n in names), strict=True))
    files = []
    for count, low, high in zip(rows, lows, highs, strict=True):
        if count is None or None in low or None in high:
            return None
        if count:
            files.append(FileRange(int(count), tuple(low), tuple(high)))
    return files


def cuts_from_statistics(
    files: Sequence[FileRange], count: int, integer_last: bool
) -> list[KeyTuple] | None:
    """The N-1 cut points (non-decreasing) of `count` shards, or None when the statistics
    cannot place them within TOLERANCE (see the module docstring). `integer_last`: the last
    key column is an integer, so a cut may fall inside a file."""
    ordered = sorted(files, key=lambda f: (f.low, f.high))
    if count < 2 or not ordered:
        return None
    if any(a.high > b.low for a, b in pairwise(ordered)):
        return None  # overlapping ranges: the order of rows across files is unknown
    total = sum(f.rows for f in ordered)
    points: list[KeyTuple] = []
    below: list[float] = []  # the estimated rows under each point
    before, index = 0, 0
    for j in range(1, count):
        target = j * total / count
        while index < len(ordered) - 1 and before + ordered[index].rows <= target:
            before += ordered[index].rows
            index += 1
        file = ordered[index]
        point, offset = _inside(file, target - before, integer_last)
        if offset is not None:
            under = before + offset
        elif target - before < file.rows / 2 or index == len(ordered) - 1:
            point, under = file.low, float(before)  # the nearer boundary: the file's start
        else:
            point, under = ordered[index + 1].low, float(before + file.rows)  # its end
        if points and point < points[-1]:
            point, under = points[-1], below[-1]
        points.append(point)
        below.append(under)
    edges = [0.0, *below, float(total)]
    widest = max(b - a for a, b in pairwise(edges))
    return points if widest <= TOLERANCE * total / count else None


def _inside(file: FileRange, need: float, integer_last: bool) -> tuple[KeyTuple, float | None]:
    """The point `need` rows into a file, interpolated over its last key column, with the
    rows estimated under it (relative to the file's start); (low, None) when it cannot be
    interpolated."""
    low, high = file.low, file.high
    if not integer_last or low[:-1] != high[:-1] or high[-1] <= low[-1]:
        return low, None
    width = high[-1] - low[-1] + 1
    value = min(high[-1], low[-1] + round(need / file.rows * width))
    return (*low[:-1], value), (value - low[-1]) / width * file.rows


def rows_meeting(files: Sequence[FileRange], span: Span) -> int:
    """The rows of the files whose key range meets `span`: what a scan restricted to the
    span reads when the statistics can skip only whole files."""
    return sum(
        f.rows
        for f in files
        if (span.high is None or f.low < span.high) and (span.low is None or f.high >= span.low)
    )
