"""INT96 timestamps that delta-rs would misread: refused before anything is written.

Spark writes timestamps as Parquet INT96 by default, without an embedded Arrow schema.
arrow-rs (under delta-rs's scan) decodes INT96 as nanoseconds, and a nanosecond count
ends in 2262: 9999-12-31 comes back as 1816-03-29 with no error (delta-kernel-rs issue
2709). Merged, such a staging would put wrong instants in main with exit 0 — the worst
bug this product can have. So staging's timestamp columns are checked file by file:

- a file whose log statistics put every timestamp column inside the nanosecond range
  cannot be misread, whatever its encoding: nothing is read;
- any other file (statistics out of range, or none: Spark keeps them for the first 32
  columns only) has its footer read; if a timestamp column is INT96 there and the file
  embeds no Arrow schema naming another unit (pyarrow's files do, and arrow-rs honours
  it), that column is read with pyarrow's microsecond coercion (right for every year),
  and a value outside the nanosecond range refuses the merge (exit 2), naming the column
  and the file.

What is read grows with the files that could be wrong, never with main. Top-level
timestamp columns only: a timestamp nested in a struct, list or map is not checked.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from .delta import Table
from .errors import InvalidInputError
from .mainfiles import FileStat, RangeFile, footer_of
from .storage import Prefix

log = structlog.get_logger("stagingmerge.merge")

# the instants a nanosecond count (int64) holds, in microseconds
NS_LOW_US, NS_HIGH_US = -(2**63) // 1000 + 1, (2**63 - 1) // 1000
READ_THREADS = 8


@dataclass(frozen=True)
class Misread:
    column: str
    path: str
    value_us: int  # a value delta-rs would read wrongly, in microseconds since 1970


def timestamp_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_timestamp(f.type)]


def check(table: Table, prefix: Prefix, role: str) -> None:
    """Refuse (InvalidInputError) a table holding INT96 values delta-rs would misread."""
    columns = timestamp_columns(table.arrow_schema())
    if not columns:
        return
    suspects = _suspect_files(table.key_file_stats(columns), columns)
    if not suspects:
        return
    physical = dict(zip(columns, table.physical_names(columns), strict=True))
    with ThreadPoolExecutor(min(READ_THREADS, len(suspects))) as pool:
        found = [m for m in pool.map(lambda s: _misread(prefix, s, physical), suspects) if m]
    log.info("checked files for INT96 timestamps", role=role, files=len(suspects))
    if found:
        first = found[0]
        raise InvalidInputError(
            f"{role} {prefix.location}: column {first.column} is stored as Parquet INT96 with"
            f" values past what delta-rs can read (year 1677 to 2262; {first.path} and"
            f" {len(found) - 1} more files): delta-rs would read other instants. Rewrite"
            " the table with spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS"
        )


def _suspect_files(stats: pa.Table, columns: Sequence[str]) -> list[FileStat]:
    """The files whose statistics do not put every timestamp column in range."""
    suspects = []
    paths = stats.column("path").to_pylist()
    sizes = stats.column("size_bytes").to_pylist()
    inside = None
    for column in columns:
        for side in ("min", "max"):
            name = f"{side}.{column}"
            if name not in stats.column_names:
                inside = pa.array([False] * stats.num_rows)
                break
            values = stats.column(name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            ok = pc.and_(pc.greater_equal(values, NS_LOW_US), pc.less_equal(values, NS_HIGH_US))
            ok = pc.fill_null(ok, False)  # no statistic: the footer says
            inside = ok if inside is None else pc.and_(inside, ok)
    assert inside is not None
    for path, size, good in zip(paths, sizes, inside.to_pylist(), strict=True):
        if not good:
            suspects.append(FileStat(path, int(size), None, None))
    return suspects


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


def _misread(prefix: Prefix, stat: FileStat, physical: dict[str, str]) -> Misread | None:
    footer = footer_of(prefix, stat)
    schema = footer.schema
    int96 = {
        schema.column(i).path: i
        for i in range(len(schema))
        if schema.column(i).physical_type == "INT96"
    }
    # a file with an embedded Arrow schema (pyarrow, delta-rs) says which unit it meant,
    # and arrow-rs reads INT96 in that unit; only nanoseconds (Spark: no schema) wrap
    hinted = _embedded_schema(footer)
    wanted = [
        (logical, name)
        for logical, name in physical.items()
        if name in int96 and _unit(hinted, name) == "ns"
    ]
    if not wanted:
        return None
    source = RangeFile(prefix, unquote(stat.path), stat.size)
    rows = pq.ParquetFile(source, coerce_int96_timestamp_unit="us").read(
        columns=[name for _, name in wanted]
    )
    for logical, name in wanted:
        values = rows.column(name).cast(pa.int64())
        bounds = pc.min_max(values)
        for side in ("min", "max"):
            value = bounds[side].as_py()
            if value is not None and not NS_LOW_US <= value <= NS_HIGH_US:
                return Misread(logical, stat.path, value)
    return None
