"""What reading main's keys costs: the files a key-range predicate cannot skip, and
their key-column bytes.

delta-rs skips a file when its log statistics (min/max per column) exclude every key
range of the predicate; this module applies the same rule to the same statistics, so
`touched(ranges)` is the set of files a span's main-key scan reads. Their key bytes come
from the Parquet footers (the compressed size of the key columns' chunks), read once per
file per run; beyond FOOTER_SAMPLE files the bytes are extrapolated from a fixed sample
of footers (bytes per file size), so the accounting stays cheap on a 10^4-file main.

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

from .delta import Table
from .errors import MergeError
from .storage import Prefix

Box = tuple[tuple[Any, ...], tuple[Any, ...]]  # (lows, highs) per key column
FOOTER_SAMPLE = 32
TAIL_BYTES = 64 * 1024
# warn when a run read the keys of more than half of main's files, and at least this much
# (STAGINGMERGE_UNCLUSTERED_WARN_BYTES overrides it)
UNCLUSTERED_WARN_BYTES = 256 * 1024 * 1024


def warn_threshold() -> int:
    raw = os.environ.get("STAGINGMERGE_UNCLUSTERED_WARN_BYTES", "")
    return int(raw) if raw.strip().isdigit() else UNCLUSTERED_WARN_BYTES


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
    files: list[FileStat] = field(default_factory=list)
    _bytes: dict[str, int] = field(default_factory=dict)  # footer results, by path

    @classmethod
    def of(cls, table: Table, keys: Sequence[str], known: MainFiles | None = None) -> MainFiles:
        """Main's files at the table's version; footers `known` read are not read again."""
        stats = table.key_file_stats(keys)
        columns = {name: stats.column(name).to_pylist() for name in stats.column_names}
        files = []
        for i, path in enumerate(columns["path"]):
            lows = [columns.get(f"min.{k}", [None] * stats.num_rows)[i] for k in keys]
            highs = [columns.get(f"max.{k}", [None] * stats.num_rows)[i] for k in keys]
            complete = None not in lows and None not in highs
            files.append(
                FileStat(
                    path,
                    int(columns["size_bytes"][i]),
                    tuple(lows) if complete else None,
                    tuple(highs) if complete else None,
                )
            )
        return cls(table, tuple(keys), files, dict(known._bytes) if known else {})

    def touched(self, boxes: Sequence[Box]) -> list[FileStat]:
        """The files whose statistics rule out none of the boxes (plan.predicate_boxes)."""
        return [f for f in self.files if any(_may_hold(f, box) for box in boxes)]

    def key_bytes(self, files: Sequence[FileStat]) -> int:
        if len(files) <= FOOTER_SAMPLE:
            return sum(self._footer_bytes(f) for f in files)
        step = len(files) / FOOTER_SAMPLE
        sample = [files[int(i * step)] for i in range(FOOTER_SAMPLE)]
        per_byte = sum(self._footer_bytes(f) for f in sample) / max(1, sum(f.size for f in sample))
        return int(per_byte * sum(f.size for f in files))

    def _footer_bytes(self, stat: FileStat) -> int:
        """Best effort: a footer that cannot be read (an absolute path in the log, a store
        hiccup) counts as the whole file, never fails the merge."""
        if stat.path not in self._bytes:
            try:
                self._bytes[stat.path] = _key_chunk_bytes(
                    Prefix(self.table.location, self.table.options), stat, self._physical()
                )
            except (MergeError, OSError, ValueError, pa.ArrowException, struct.error):
                self._bytes[stat.path] = stat.size
        return self._bytes[stat.path]

    def _physical(self) -> set[str]:
        return {self.table.physical_name(k) for k in self.keys}


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


def _key_chunk_bytes(prefix: Prefix, stat: FileStat, physical: set[str]) -> int:
    """The compressed bytes of the key columns' chunks in one Parquet file (its footer)."""
    path = unquote(stat.path)  # the log holds a relative URI
    length = min(stat.size, TAIL_BYTES)
    tail = prefix.read_range(path, stat.size - length, length)
    footer = struct.unpack("<I", tail[-8:-4])[0] + 8
    if footer > len(tail):
        tail = prefix.read_range(path, stat.size - footer, footer)
    metadata = pq.read_metadata(io.BytesIO(tail))
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema.split(".")[0] in physical:
                total += int(chunk.total_compressed_size)
    return total
