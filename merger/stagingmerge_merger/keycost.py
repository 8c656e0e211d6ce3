"""What reading main's keys costs: the files a key-range predicate cannot skip, and
their key-column bytes (the metrics `main_files_scanned` and `main_key_bytes_read`).

delta-rs skips a file when its log statistics (min/max per column) exclude every key
range of the predicate (delta.files.Files.touched applies that rule), and its Parquet
reader then skips the row groups whose footer statistics do; `KeyCost.key_bytes` applies
the second rule to the same footers, so it is the compressed key-column bytes of the row
groups the scan reads. Footers are read once per file per run; beyond FOOTER_SAMPLE
files the bytes are extrapolated from a fixed sample of footers (bytes read per byte of
file), so the accounting stays cheap on a 10^4-file main. Best effort: it never fails a
merge, and the catch-up with other writers does not depend on it.

At the end of a run the merge warns, naming `stagingmerge-cluster`, when main's layout
made it read most of main's keys (`warn_if_unclustered`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from .contract import INDEX_BEHIND_BYTES_ENV, UNCLUSTERED_WARN_BYTES_ENV, MergeMetrics
from .delta.files import Box, Files, FileStat, footer_of, groups_meeting
from .errors import MergeError
from .storage import Location

log = structlog.get_logger("stagingmerge.merge")

FOOTER_SAMPLE = 32
# warn when a run read the keys of more than half of main's files, and at least this much
# (UNCLUSTERED_WARN_BYTES_ENV overrides it)
UNCLUSTERED_WARN_BYTES = 256 * 1024 * 1024
INDEX_BEHIND_BYTES = 1024**3  # see index_behind_threshold


@dataclass
class KeyCost:
    """The footers read so far this run (by path), to price each scan of main's keys."""

    _footers: dict[str, pq.FileMetaData | None] = field(default_factory=dict)

    def key_bytes(self, files: Files, touched: Sequence[FileStat], boxes: Sequence[Box]) -> int:
        if len(touched) <= FOOTER_SAMPLE:
            return sum(self._read_bytes(files, f, boxes) for f in touched)
        step = len(touched) / FOOTER_SAMPLE
        sample = [touched[int(i * step)] for i in range(FOOTER_SAMPLE)]
        read = sum(self._read_bytes(files, f, boxes) for f in sample)
        return int(read / max(1, sum(f.size for f in sample)) * sum(f.size for f in touched))

    def footer(self, files: Files, stat: FileStat) -> pq.FileMetaData | None:
        """One file's footer, read once a run (None: it cannot be read: an absolute path
        in the log, a store hiccup)."""
        if stat.path not in self._footers:
            try:
                self._footers[stat.path] = footer_of(files.prefix, stat)
            except (MergeError, OSError, ValueError, pa.ArrowException, struct.error):
                self._footers[stat.path] = None
        return self._footers[stat.path]

    def _read_bytes(self, files: Files, stat: FileStat, boxes: Sequence[Box]) -> int:
        """The key chunks of the row groups the boxes may hit. A footer that cannot be
        read counts as the whole file."""
        footer = self.footer(files, stat)
        if footer is None:
            return stat.size
        return _row_group_bytes(footer, files.physical, boxes)


def _row_group_bytes(footer: pq.FileMetaData, physical: Sequence[str], boxes: Sequence[Box]) -> int:
    total = 0
    for group in groups_meeting(footer, physical, boxes):
        row_group = footer.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema in physical:
                total += int(chunk.total_compressed_size)
    return total


def index_behind_threshold() -> int:
    """Bytes of main's files with no key-range index entry, read by one scan, past which a
    merge says the index is behind (INDEX_BEHIND_BYTES_ENV overrides it)."""
    raw = os.environ.get(INDEX_BEHIND_BYTES_ENV, "")
    return int(raw) if raw.strip().isdigit() else INDEX_BEHIND_BYTES


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
