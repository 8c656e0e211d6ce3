"""What reading main's keys costs: the files a key-range predicate cannot skip, and
their key-column bytes.

delta-rs skips a file when its log statistics (min/max per column) exclude every key
range of the predicate, and its Parquet reader then skips the row groups whose footer
statistics do; this module applies the same two rules to the same statistics, so
`touched(boxes)` is the set of files a span's main-key scan opens and `key_bytes` the
compressed key-column bytes of the row groups it reads. Footers are read once per file
per run; beyond FOOTER_SAMPLE files the bytes are extrapolated from a fixed sample of
footers (bytes read per byte of file), so the accounting stays cheap on a 10^4-file main.

The merge reports the totals (`main_files_scanned`, `main_key_bytes_read`) and warns,
naming `stagingmerge-cluster`, when main's layout makes it read most of main's keys.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from . import deltalog, keyvalues
from .contract import UNCLUSTERED_WARN_BYTES_ENV, MergeMetrics
from .delta import Table
from .errors import MergeError
from .storage import Location, Prefix

Box = tuple[tuple[Any, ...], tuple[Any, ...]]  # (lows, highs) per key column
FOOTER_SAMPLE = 32
TAIL_BYTES = 64 * 1024
# warn when a run read the keys of more than half of main's files, and at least this much
# (UNCLUSTERED_WARN_BYTES_ENV overrides it)
UNCLUSTERED_WARN_BYTES = 256 * 1024 * 1024


log = structlog.get_logger("stagingmerge.merge")


def warn_threshold() -> int:
    raw = os.environ.get(UNCLUSTERED_WARN_BYTES_ENV, "")
    return int(raw) if raw.strip().isdigit() else UNCLUSTERED_WARN_BYTES


def warn_if_unclustered(m: MergeMetrics, main: Location) -> None:
    """At the end of a run: warn, naming `stagingmerge-cluster`, when it read the key
    columns of most of main's files (and at least warn_threshold() bytes of them)."""
    if (
        m.main_key_bytes_read >= warn_threshold()
        and m.main_files > 1
        and m.main_files_scanned > 0.5 * m.main_files * m.main_key_scans
    ):
        log.warning(
            "main is not clustered by the key: this run read the key columns of"
            f" {m.main_files_scanned} of main's files ({m.main_key_bytes_read} bytes);"
            f" run `stagingmerge-cluster --main {main}` so merges read only"
            " the files their key ranges touch",
            main_key_bytes_read=m.main_key_bytes_read,
            main_files_scanned=m.main_files_scanned,
            main_files=m.main_files,
        )


@dataclass
class FileStat:
    path: str
    size: int
    low: tuple[Any, ...] | None  # per key column, None when the log keeps no statistics
    high: tuple[Any, ...] | None


@dataclass
class MainFiles:
    table: Table
    keys: tuple[str, ...]
    version: int  # the table's version these files are of (the Table object moves on)
    physical: tuple[str, ...]  # the key columns' names in the files (column mapping)
    prefix: Prefix  # main's objects, for footers and key columns (one store client)
    files: list[FileStat] = field(default_factory=list)
    _footers: dict[str, pq.FileMetaData | None] = field(default_factory=dict)  # by path

    @classmethod
    def of(cls, table: Table, keys: Sequence[str], known: MainFiles | None = None) -> MainFiles:
        """Main's files at the table's version; footers `known` read are not read again."""
        stats = keyvalues.as_numbers(table.key_file_stats(keys))
        missing = [None] * stats.num_rows
        sizes = stats.column("size_bytes").to_pylist()
        lows = zip(*(_column(stats, f"min.{k}", missing) for k in keys), strict=True)
        highs = zip(*(_column(stats, f"max.{k}", missing) for k in keys), strict=True)
        files = []
        for path, size, low, high in zip(
            stats.column("path").to_pylist(), sizes, lows, highs, strict=True
        ):
            complete = None not in low and None not in high
            files.append(FileStat(path, int(size), *((low, high) if complete else (None, None))))
        return cls(
            table,
            tuple(keys),
            table.version,
            known.physical if known else table.physical_names(keys),
            known.prefix if known else Prefix(table.location, table.options),
            files,
            dict(known._footers) if known else {},
        )

    def touched(self, boxes: Sequence[Box]) -> list[FileStat]:
        """The files whose statistics rule out none of the boxes (predicates.predicate_boxes)."""
        return [f for f in self.files if any(_may_hold(f, box) for box in boxes)]

    def key_bytes(self, files: Sequence[FileStat], boxes: Sequence[Box]) -> int:
        if len(files) <= FOOTER_SAMPLE:
            return sum(self._read_bytes(f, boxes) for f in files)
        step = len(files) / FOOTER_SAMPLE
        sample = [files[int(i * step)] for i in range(FOOTER_SAMPLE)]
        read = sum(self._read_bytes(f, boxes) for f in sample)
        return int(read / max(1, sum(f.size for f in sample)) * sum(f.size for f in files))

    def _read_bytes(self, stat: FileStat, boxes: Sequence[Box]) -> int:
        """The key chunks of the row groups the boxes may hit. Best effort: a footer that
        cannot be read (an absolute path in the log, a store hiccup) counts as the whole
        file and never fails the merge."""
        if stat.path not in self._footers:
            try:
                self._footers[stat.path] = footer_of(self.prefix, stat)
            except (MergeError, OSError, ValueError, pa.ArrowException, struct.error):
                self._footers[stat.path] = None
        footer = self._footers[stat.path]
        if footer is None:
            return stat.size
        return _row_group_bytes(footer, self.physical, boxes)

    def added_since(self, earlier: MainFiles) -> list[FileStat]:
        """Files that are here and were not in `earlier` (other writers' commits since)."""
        known = {f.path for f in earlier.files}
        return [f for f in self.files if f.path not in known]

    def added_by(self, version: int) -> set[str] | None:
        """The paths one commit added, from its entry in the Delta log (None if unreadable)."""
        return deltalog.added_paths(self.prefix, version)

    def keys_of(self, files: Sequence[FileStat], schema: pa.Schema) -> pa.Table | None:
        """The key columns of a few new files, read from the files themselves (the catch-up
        before a commit). Every row a file holds is returned, deleted or not: a superset,
        which can only make the merge skip a key another writer deleted meanwhile (the
        documented race). None when reading files would not be faithful: a key column
        that is a partition column lives in the log, not in the files."""
        if set(self.keys) & set(self.table.partition_columns()):
            return None
        tables = []
        try:
            for stat in files:
                source = RangeFile(self.prefix, unquote(stat.path), stat.size)
                rows = pq.ParquetFile(source).read(columns=list(self.physical))
                tables.append(rows.rename_columns(list(self.keys)).cast(schema))
        except (pa.ArrowException, ValueError, KeyError):
            return None  # let delta-rs read the ranges instead
        return pa.concat_tables(tables) if tables else schema.empty_table()


def _bounds(stats: pq.Statistics) -> tuple[Any, Any]:
    """A row group's min and max, a date as its day number (keyvalues.as_numbers): the
    physical value, which also exists past year 9999."""
    if str(stats.logical_type) == "Date":
        return stats.min_raw, stats.max_raw
    return stats.min, stats.max


def _column(stats: pa.Table, name: str, missing: list[None]) -> list[Any]:
    return stats.column(name).to_pylist() if name in stats.column_names else missing


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over one object, fetched by ranges (Parquet's footer,
    then the key columns' chunks)."""

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


def _may_hold(stat: FileStat, box: Box) -> bool:
    """A conjunction of per-column ranges excludes a file when one column's range misses
    the file's [min, max] for that column."""
    if stat.low is None or stat.high is None:
        return True  # no statistics: delta-rs must read it
    lows, highs = box
    return all(
        not (high < file_low or low > file_high)
        for low, high, file_low, file_high in zip(lows, highs, stat.low, stat.high, strict=True)
    )


def footer_of(prefix: Prefix, stat: FileStat) -> pq.FileMetaData:
    """One Parquet file's footer, read from its tail."""
    path = unquote(stat.path)  # the log holds a relative URI
    length = min(stat.size, TAIL_BYTES)
    tail = prefix.read_range(path, stat.size - length, length)
    footer = struct.unpack("<I", tail[-8:-4])[0] + 8
    if footer > len(tail):
        tail = prefix.read_range(path, stat.size - footer, footer)
    return pq.read_metadata(io.BytesIO(tail))


def _row_group_bytes(footer: pq.FileMetaData, physical: Sequence[str], boxes: Sequence[Box]) -> int:
    total = 0
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
                if not any(_may_hold(group_stat, box) for box in boxes):
                    continue  # the reader skips this row group
            except TypeError:
                pass  # statistics of a type that does not compare: it is read
        total += sum(int(c.total_compressed_size) for c in chunks.values())
    return total
