"""Dates and timestamps that delta-rs would misread: refused before anything is written.

Two encodings Spark writes make delta-rs's scan (arrow-rs) return other values than the
ones stored, with no error. Merged, they would put wrong values in main with exit 0, the
worst bug this product can have:

- **INT96 timestamps past the nanosecond range.** Spark writes timestamps as Parquet
  INT96 by default, without an embedded Arrow schema. arrow-rs decodes INT96 as
  nanoseconds, and a nanosecond count ends in 2262: 9999-12-31 comes back as 1816-03-29
  (delta-kernel-rs issue 2709).
- **Spark's legacy hybrid calendar.** Spark 2, and Spark 3+ with the LEGACY rebase
  modes, store dates before 1582-10-15 as Julian-calendar days (and timestamps before
  the calendar switch in the writer's time zone as Julian instants); Spark marks such
  files in their footer and rebases them back when it reads them. arrow-rs reads the
  stored numbers in the proleptic Gregorian calendar: 1500-03-01 reads as 1500-03-11.

So the top-level date and timestamp columns are checked file by file (all of staging's,
whose rows are copied; main's key columns, which decide what is new):

- a file whose log statistics put every such column where neither encoding can differ
  (timestamps from 1900 to 2262, dates from 1582-10-15) cannot be misread: nothing is
  read;
- any other file (statistics out of that range, or none: Spark keeps them for its first
  32 columns only) has its footer read. An INT96 column of a file with no embedded Arrow
  schema naming another unit (pyarrow's files do, and arrow-rs honours it) is read with
  pyarrow's microsecond coercion (right for every year); a date or timestamp column of a
  file Spark's own rule reads as legacy-calendar is read as stored. A value outside the
  safe range refuses the merge (exit 2), naming the column, the file and the Spark
  setting that rewrites the table readably.

What is read grows with the files that could be wrong, never with main's size alone.
A date or timestamp nested in a struct, list or map is not checked.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from .delta import Table
from .delta.files import FileStat, footer_of, parquet_file
from .errors import InvalidInputError
from .storage import Prefix

log = structlog.get_logger("stagingmerge.merge")

_EPOCH = dt.date(1970, 1, 1)
# the instants a nanosecond count (int64) holds, in microseconds
NS_LOW_US, NS_HIGH_US = -(2**63) // 1000 + 1, (2**63 - 1) // 1000
# where the hybrid calendar and the proleptic Gregorian one agree: dates from the
# Gregorian reform on; timestamps from 1900 on (Spark rebases timestamps with the
# writer's time-zone rules, whose last Julian-era differences end before 1900)
GREGORIAN_FROM_DAY = (dt.date(1582, 10, 15) - _EPOCH).days
GREGORIAN_FROM_US = int((dt.datetime(1900, 1, 1) - dt.datetime(1970, 1, 1)).total_seconds()) * 10**6
READ_THREADS = 8

# Spark's footer keys (org.apache.spark.sql.execution.datasources.DataSourceUtils)
SPARK_VERSION = b"org.apache.spark.version"
LEGACY_DATETIME = b"org.apache.spark.legacyDateTime"
LEGACY_INT96 = b"org.apache.spark.legacyINT96"


@dataclass(frozen=True)
class Misread:
    column: str
    path: str
    why: str  # "int96" or "julian"


def datetime_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]


def check(table: Table, prefix: Prefix, role: str, only: Sequence[str] | None = None) -> None:
    """Refuse (InvalidInputError) a table holding dates or timestamps delta-rs would
    misread, in all its top-level date/timestamp columns or in `only` those."""
    schema = table.arrow_schema()
    columns = [c for c in datetime_columns(schema) if only is None or c in only]
    if not columns:
        return
    suspects = _suspect_files(table.key_file_stats(columns), schema, columns)
    if not suspects:
        return
    physical = dict(zip(columns, table.physical_names(columns), strict=True))
    kinds = {c: schema.field(c).type for c in columns}
    with ThreadPoolExecutor(min(READ_THREADS, len(suspects))) as pool:
        found = [m for m in pool.map(lambda s: _misread(prefix, s, physical, kinds), suspects) if m]
    log.info("checked files for misread dates and timestamps", role=role, files=len(suspects))
    if found:
        raise InvalidInputError(_refusal(role, prefix, found))


def _refusal(role: str, prefix: Prefix, found: Sequence[Misread]) -> str:
    first = found[0]
    where = f"{first.path} and {len(found) - 1} more files"
    if first.why == "int96":
        return (
            f"{role} {prefix.location}: column {first.column} is stored as Parquet INT96 with"
            f" values past what delta-rs can read (year 1677 to 2262; {where}): delta-rs"
            " would read other instants. Rewrite the table with"
            " spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS"
        )
    return (
        f"{role} {prefix.location}: column {first.column} holds values before the Gregorian"
        f" calendar stored in Spark's legacy hybrid Julian calendar ({where}): delta-rs"
        " would read other dates. Rewrite the table with"
        " spark.sql.parquet.datetimeRebaseModeInWrite=CORRECTED and"
        " spark.sql.parquet.int96RebaseModeInWrite=CORRECTED"
    )


def _safe(values: pa.ChunkedArray | pa.Array, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """Whether each value lies where no encoding above can change it (NULL: unknown)."""
    if pa.types.is_date(kind):
        days = values.cast(pa.date32()).cast(pa.int32())
        return pc.greater_equal(days, GREGORIAN_FROM_DAY)
    micros = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pc.and_(pc.greater_equal(micros, GREGORIAN_FROM_US), pc.less_equal(micros, NS_HIGH_US))


def _suspect_files(stats: pa.Table, schema: pa.Schema, columns: Sequence[str]) -> list[FileStat]:
    """The files whose statistics do not put every date/timestamp column in the safe range."""
    inside: pa.Array | pa.ChunkedArray = pa.array([True] * stats.num_rows, pa.bool_())
    for column in columns:
        for side in ("min", "max"):
            name = f"{side}.{column}"
            if name not in stats.column_names:
                return _files(stats, pa.array([False] * stats.num_rows, pa.bool_()))
            ok = pc.fill_null(_safe(stats.column(name), schema.field(column).type), False)
            inside = pc.and_(inside, ok)
    return _files(stats, inside)


def _files(stats: pa.Table, inside: pa.Array | pa.ChunkedArray) -> list[FileStat]:
    paths = stats.column("path").to_pylist()
    sizes = stats.column("size_bytes").to_pylist()
    return [
        FileStat(path, int(size), None, None)
        for path, size, good in zip(paths, sizes, inside.to_pylist(), strict=True)
        if not good
    ]


def _embedded_schema(footer: pq.FileMetaData) -> pa.Schema:
    """The Arrow schema the writer embedded (ARROW:schema), else the plain Parquet
    reading of the schema (INT96 as nanoseconds, as arrow-rs reads it)."""
    raw = (footer.metadata or {}).get(b"ARROW:schema")
    if raw:
        try:
            return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(raw)))
        except (ValueError, pa.ArrowException):
            pass
    return footer.schema.to_arrow_schema()


def _unit(schema: pa.Schema, name: str) -> str | None:
    index = schema.get_field_index(name)
    kind = schema.field(index).type if index >= 0 else None
    return kind.unit if kind is not None and pa.types.is_timestamp(kind) else None


def _version(raw: bytes | None) -> tuple[int, ...] | None:
    if raw is None:
        return None
    try:
        return tuple(int(part) for part in raw.decode().split("-")[0].split(".")[:3])
    except (UnicodeDecodeError, ValueError):
        return (0,)  # a Spark version that does not parse: assume the oldest


def legacy_calendar(metadata: dict[bytes, bytes] | None) -> tuple[bool, bool]:
    """Spark's own rule for a file it wrote (DataSourceUtils.datetimeRebaseSpec and
    int96RebaseSpec): whether its dates/INT64 timestamps, and its INT96 timestamps, are
    in the hybrid Julian calendar. A file no Spark wrote is proleptic Gregorian."""
    meta = metadata or {}
    version = _version(meta.get(SPARK_VERSION))
    if version is None:
        return False, False
    dates = version < (3, 0, 0) or LEGACY_DATETIME in meta
    int96 = version < (3, 1, 0) or LEGACY_INT96 in meta
    return dates, int96


def _misread(
    prefix: Prefix, stat: FileStat, physical: dict[str, str], kinds: dict[str, pa.DataType]
) -> Misread | None:
    footer = footer_of(prefix, stat)
    schema = footer.schema
    stored = {schema.column(i).path: schema.column(i).physical_type for i in range(len(schema))}
    # a file with an embedded Arrow schema (pyarrow, delta-rs) says which unit it meant,
    # and arrow-rs reads INT96 in that unit; only nanoseconds (Spark: no schema) wrap
    hinted = _embedded_schema(footer)
    julian_dates, julian_int96 = legacy_calendar(footer.metadata)
    wanted: list[tuple[str, str, bool, bool]] = []  # (logical, physical, wraps, julian)
    for logical, name in physical.items():
        if name not in stored:
            continue  # a partition column: its values live in the log
        if stored[name] == "INT96":
            wraps = _unit(hinted, name) == "ns"
            julian = julian_int96
        else:
            wraps, julian = False, julian_dates
        if wraps or julian:
            wanted.append((logical, name, wraps, julian))
    if not wanted:
        return None
    rows = parquet_file(prefix, stat, coerce_int96_timestamp_unit="us").read(
        columns=[name for _, name, _, _ in wanted]
    )
    for logical, name, wraps, julian in wanted:
        values = rows.column(name)
        if wraps and not _in_ns_range(values):
            return Misread(logical, stat.path, "int96")
        if julian and not _all_safe(values, kinds[logical]):
            return Misread(logical, stat.path, "julian")
    return None


def _all_safe(values: pa.ChunkedArray, kind: pa.DataType) -> bool:
    """No value before the calendars agree (the INT96 upper bound aside)."""
    if pa.types.is_date(kind):
        low = pc.min(values.cast(pa.date32()).cast(pa.int32())).as_py()
        return low is None or low >= GREGORIAN_FROM_DAY
    low = pc.min(values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())).as_py()
    return low is None or low >= GREGORIAN_FROM_US


def _in_ns_range(values: pa.ChunkedArray) -> bool:
    bounds = pc.min_max(values.cast(pa.int64()))
    return all(
        v is None or NS_LOW_US <= v <= NS_HIGH_US
        for v in (bounds["min"].as_py(), bounds["max"].as_py())
    )
