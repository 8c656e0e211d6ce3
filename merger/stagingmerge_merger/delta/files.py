"""Our own reading of a table's data files, where delta-rs offers no way to.

delta-rs reads a table as rows, through its scan; it has no call for these three:

- **the files of one version with their key statistics** (`Files.of`, from delta-rs's
  own `get_add_actions`) and which of them a key-range predicate cannot skip (`touched`:
  the rule delta-rs's pruning applies to the same statistics);
- **the files a set of commits added** (`Files.added_since`, `Files.added_by`, the
  latter from the commit's log entry: log.py), and **the key columns of just those
  files** (`Files.keys_of`): the catch-up before a commit reads only other writers' new
  files, where a delta-rs scan at the new version would read every file the ranges
  touch. A file's rows are all returned, deleted ones too: a superset of its keys;
- **a file's Parquet footer and chosen columns as stored** (`footer_of`, `parquet_file`):
  what a read costs (keycost.py), and the physical encodings delta-rs decodes wrongly
  without an error (misreads.py).

Every read is by byte range through storage.Prefix (one object-store client per table).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from .. import keyvalues
from ..storage import Prefix
from .log import added_paths, commit_info
from .table import Table

Box = tuple[tuple[Any, ...], tuple[Any, ...]]  # (lows, highs) per key column
TAIL_BYTES = 64 * 1024  # a footer is read with one request of this many bytes, mostly


@dataclass(frozen=True)
class FileStat:
    path: str  # as the log holds it (a relative URI, percent-encoded)
    size: int
    low: tuple[Any, ...] | None  # per key column, None when the log keeps no statistics
    high: tuple[Any, ...] | None
    rows: int | None = None  # numRecords, when the log keeps it


@dataclass(frozen=True)
class Files:
    """A table's data files at one version, with their key columns' statistics."""

    table: Table
    keys: tuple[str, ...]
    version: int  # the table's version these files are of (the Table object moves on)
    physical: tuple[str, ...]  # the key columns' names in the files (column mapping)
    prefix: Prefix  # the table's objects (one store client)
    files: tuple[FileStat, ...]

    @classmethod
    def of(cls, table: Table, keys: Sequence[str], known: Files | None = None) -> Files:
        """The table's files at its current version (`known`: an earlier snapshot of the
        same table, whose column names and store client are reused)."""
        stats = keyvalues.as_numbers(table.key_file_stats(keys))
        missing = [None] * stats.num_rows
        sizes = stats.column("size_bytes").to_pylist()
        counts = _column(stats, "num_records", missing)
        lows = zip(*(_column(stats, f"min.{k}", missing) for k in keys), strict=True)
        highs = zip(*(_column(stats, f"max.{k}", missing) for k in keys), strict=True)
        files = []
        for path, size, low, high, rows in zip(
            stats.column("path").to_pylist(), sizes, lows, highs, counts, strict=True
        ):
            complete = None not in low and None not in high
            files.append(
                FileStat(
                    path,
                    int(size),
                    low if complete else None,
                    high if complete else None,
                    None if rows is None else int(rows),
                )
            )
        return cls(
            table,
            tuple(keys),
            table.version,
            known.physical if known else table.physical_names(keys),
            known.prefix if known else Prefix(table.location, table.options),
            tuple(files),
        )

    def touched(self, boxes: Sequence[Box]) -> list[FileStat]:
        """The files whose statistics rule out none of the boxes (predicates.predicate_boxes):
        the files a scan with that predicate opens."""
        return [f for f in self.files if any(may_hold(f, box) for box in boxes)]

    def added_since(self, earlier: Files) -> list[FileStat]:
        """Files that are here and were not in `earlier` (commits since)."""
        known = {f.path for f in earlier.files}
        return [f for f in self.files if f.path not in known]

    def added_by(self, version: int) -> set[str] | None:
        """The paths one commit added, from its entry in the Delta log (None if unreadable)."""
        return added_paths(self.prefix, version)

    def written_by(self, version: int) -> dict[str, Any] | None:
        """One commit's commitInfo, from the Delta log (None if unreadable)."""
        return commit_info(self.prefix, version)

    def keys_of(
        self,
        files: Sequence[FileStat],
        schema: pa.Schema,
        each: Callable[[FileStat, pa.Table], None] | None = None,
    ) -> pa.Table | None:
        """The key columns of a few files, read from the files themselves. Every row a file
        holds is returned, deleted or not: a superset, which can only make the merge skip
        a key another writer deleted meanwhile (the documented race). None when reading
        files would not be faithful: a key column that is a partition column lives in the
        log, not in the files (the caller then reads through delta-rs). `each` is given
        every file's keys as they are read (the key-range index's entries)."""
        if not self.keys_in_files():
            return None
        tables = []
        try:
            for stat in files:
                tables.append(self.keys_of_file(stat, schema))
                if each is not None:
                    each(stat, tables[-1])
        except (pa.ArrowException, ValueError, KeyError):
            return None
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def keys_in_files(self) -> bool:
        """Whether the key columns are stored in the data files (not partition columns,
        whose values live in the log)."""
        return not set(self.keys) & set(self.table.partition_columns())

    def keys_of_file(self, stat: FileStat, schema: pa.Schema) -> pa.Table:
        """Every row's key columns of one data file, as `schema` (keys_in_files must
        hold). Raises Arrow's errors, and storage's, as they come."""
        groups = list(self.key_groups(stat, schema)[1])
        return pa.concat_tables(groups) if groups else schema.empty_table()

    def key_groups(
        self,
        stat: FileStat,
        schema: pa.Schema,
        boxes: Sequence[Box] | None = None,
        encoded: bool = False,
    ) -> tuple[bool, Iterator[pa.Table]]:
        """The key columns of one data file, a row group at a time (memory holds one row
        group's keys, whatever the file's size), as `schema`: with `boxes`, only the row
        groups whose footer statistics meet one (those a scan reads). Also whether that is
        every row group (the file is then read whole). `encoded`: the string columns
        but the last as dictionaries (each distinct value once: a log's URL is in
        every row, and grouping by it then hashes small integers; see encoded_schema).
        Raises as keys_of_file."""
        target = encoded_schema(schema) if encoded else schema
        physical = dict(zip(self.keys, self.physical, strict=True))
        dictionaries = [physical[f.name] for f in target if pa.types.is_dictionary(f.type)]
        opened = parquet_file(self.prefix, stat, read_dictionary=dictionaries or None)
        footer = opened.metadata
        every = range(footer.num_row_groups)
        groups = list(every) if boxes is None else groups_meeting(footer, self.physical, boxes)
        columns, names = list(self.physical), list(self.keys)

        def read() -> Iterator[pa.Table]:
            for group in groups:
                rows = opened.read_row_group(group, columns=columns)
                yield rows.rename_columns(names).unify_dictionaries().cast(target)

        return len(groups) == len(every), read()


def encoded_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with its string columns but the last as dictionaries (Files.key_groups)."""
    fields = [
        pa.field(f.name, pa.dictionary(pa.int32(), f.type), f.nullable)
        if pa.types.is_string(f.type) and i < len(schema) - 1
        else f
        for i, f in enumerate(schema)
    ]
    return pa.schema(fields)


def may_hold(stat: FileStat, box: Box) -> bool:
    """A conjunction of per-column ranges excludes a file when one column's range misses
    the file's [min, max] for that column."""
    if stat.low is None or stat.high is None:
        return True  # no statistics: a scan must read it
    lows, highs = box
    return all(
        not (high < file_low or low > file_high)
        for low, high, file_low, file_high in zip(lows, highs, stat.low, stat.high, strict=True)
    )


def groups_meeting(
    footer: pq.FileMetaData, physical: Sequence[str], boxes: Sequence[Box]
) -> list[int]:
    """The row groups of a file whose key columns' footer statistics meet one of the boxes
    (every row group without usable statistics among them): those a Parquet reader given
    the boxes' predicate reads."""
    meeting = []
    for group in range(footer.num_row_groups):
        row_group = footer.row_group(group)
        chunks = {}
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema in physical:
                chunks[chunk.path_in_schema] = chunk
        lows, highs = [], []
        for name in physical:
            stats = chunks[name].statistics if name in chunks else None
            if stats is None or not stats.has_min_max:
                break
            low, high = _bounds(stats)
            lows.append(low)
            highs.append(high)
        else:
            group_stat = FileStat("", 0, tuple(lows), tuple(highs))
            try:
                if not any(may_hold(group_stat, box) for box in boxes):
                    continue  # the reader skips this row group
            except TypeError:
                pass  # statistics of a type that does not compare: it is read
        meeting.append(group)
    return meeting


def _bounds(stats: pq.Statistics) -> tuple[Any, Any]:
    """A row group's min and max, a date as its day number (keyvalues.as_numbers): the
    physical value, which also exists past year 9999."""
    if str(stats.logical_type) == "Date":
        return stats.min_raw, stats.max_raw
    return stats.min, stats.max


def footer_of(prefix: Prefix, stat: FileStat) -> pq.FileMetaData:
    """One Parquet file's footer, read from its tail."""
    path = unquote(stat.path)  # the log holds a relative URI
    length = min(stat.size, TAIL_BYTES)
    tail = prefix.read_range(path, stat.size - length, length)
    footer = struct.unpack("<I", tail[-8:-4])[0] + 8
    if footer > len(tail):
        tail = prefix.read_range(path, stat.size - footer, footer)
    return pq.read_metadata(io.BytesIO(tail))


def parquet_file(prefix: Prefix, stat: FileStat, **options: Any) -> pq.ParquetFile:
    """One data file, opened for reading chosen columns (`options`: those of pyarrow's
    ParquetFile, e.g. how to read INT96). A row group's chunks are fetched together
    (`pre_buffer`: one ranged read each, not one per page, which measured 3x slower);
    a local file is opened as a file (through byte ranges the kernel read 2.5x the
    bytes), an object by byte ranges."""
    path = unquote(stat.path)  # the log holds a relative URI
    if prefix.location.is_local and not path.startswith("/") and "://" not in path:
        try:
            return pq.ParquetFile(
                str(Path(prefix.location.path) / path), pre_buffer=True, **options
            )
        except FileNotFoundError:
            pass  # storage's reading says why, as for any store
    return pq.ParquetFile(RangeFile(prefix, path, stat.size), pre_buffer=True, **options)


def _column(stats: pa.Table, name: str, missing: list[None]) -> list[Any]:
    return stats.column(name).to_pylist() if name in stats.column_names else missing


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over one object, fetched by ranges (Parquet's footer,
    then the chosen columns' chunks)."""

    def __init__(self, prefix: Prefix, path: str, size: int) -> None:
        super().__init__()
        self._prefix, self._path, self._size, self._at = prefix, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def readinto(self, buffer: Any) -> int:
        length = min(len(buffer), self._size - self._at)
        if length <= 0:
            return 0
        data = self._prefix.read_range(self._path, self._at, length)
        buffer[: len(data)] = data
        self._at += len(data)
        return len(data)
