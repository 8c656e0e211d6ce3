"""Building main's key-range index: `stagingmerge-index`, a batch of files at a time.

Every data file of main at its current version that the index has no exact entry for
(rangeindex.py) has its key columns read, once, and gets one entry per key prefix. The
entries of each batch of `files_per_pass` files go into one new index file, written
create-only: a run that is stopped or killed keeps every batch it wrote, and the rerun
indexes only the rest (resumable); memory holds one batch's entries and one row group's
keys at a time. Files removed from main since (OPTIMIZE, a rewrite) simply stop being
looked up: their entries are never used again, and the next run drops them when it
folds the index into one file (`_compact`: past COMPACT_ABOVE index files, which merges
adding entries on the way leave, or with entries of no current file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import structlog

from . import rangeindex
from .contract import DEFAULT_KEYS, KEY_INDEX_DIR, Outcome, fit_json
from .delta import Table, TableNotFoundError, plain_schema
from .delta.files import Files, FileStat
from .errors import InvalidInputError, MergeInterruptedError
from .schema import check_keys
from .storage import Location, Prefix

log = structlog.get_logger("stagingmerge.index")

FILES_PER_PASS = 256  # files whose entries go into one index file (a 10^4-file main: ~40)
COMPACT_ABOVE = 8  # index files past which a run folds them into one (_compact)


@dataclass(frozen=True)
class IndexRequest:
    main: Location
    keys: tuple[str, ...] = DEFAULT_KEYS
    dry_run: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    files_per_pass: int = FILES_PER_PASS


@dataclass
class IndexMetrics:
    # indexed | nothing_to_do | dry_run | interrupted | failed | invalid_input
    outcome: str = Outcome.RUNNING
    main: str = ""
    keys: list[str] = field(default_factory=list)
    main_version: int | None = None
    main_files: int = 0
    files_already_indexed: int = 0
    files_indexed: int = 0  # this run (a dry run: that it would index)
    files_left: int = 0  # still without an entry when the run ended
    entries_written: int = 0
    index_files_written: int = 0
    index_files_ignored: int = 0  # unreadable, corrupt, or another table's: their files redone
    index_bytes_read: int = 0
    index_files_compacted: int = 0  # index files folded into one (a dry run: that it would)
    entries_dropped: int = 0  # entries of files main no longer has (or that do not add up)
    key_rows_read: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False
    error: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return fit_json(data)


def run_index(
    request: IndexRequest,
    metrics: IndexMetrics,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> IndexMetrics:
    """Build or catch up main's key-range index; fill `metrics` as it goes."""
    started = time.monotonic()
    metrics.main, metrics.keys, metrics.dry_run = (
        str(request.main),
        list(request.keys),
        request.dry_run,
    )
    try:
        _index(request, metrics, should_stop)
    finally:
        metrics.duration_seconds = time.monotonic() - started
    return metrics


def _index(request: IndexRequest, metrics: IndexMetrics, should_stop: Callable[[], bool]) -> None:
    try:
        table = Table.open(request.main, request.storage_options)
    except TableNotFoundError as exc:
        raise InvalidInputError(f"main {request.main} is not a Delta table: {exc}") from exc
    check_keys(table.columns(), request.keys, f"main {request.main}")
    why = rangeindex.unusable(table, request.keys)
    if why is not None:
        raise InvalidInputError(f"main {request.main} cannot have a key-range index: {why}")
    metrics.main_version = table.version
    key_schema = pa.schema([plain_schema(table.arrow_schema()).field(k) for k in request.keys])
    prefix = Prefix(request.main, request.storage_options)
    loaded = rangeindex.RangeIndex.load(prefix, table.table_id(), key_schema)
    metrics.index_files_ignored = loaded.files_ignored
    metrics.index_bytes_read = loaded.bytes_read
    files = Files.of(table, request.keys)
    exact = loaded.index.exact(files.files)
    # a file the log keeps no numRecords for can never have an exact entry: not indexed
    todo = [f for f in files.files if f.path not in exact and f.rows is not None]
    metrics.main_files = len(files.files)
    metrics.files_already_indexed = sum(1 for f in files.files if f.path in exact)
    metrics.files_left = len(todo)
    log.info(
        "indexing main",
        main=str(request.main),
        version=table.version,
        files=len(files.files),
        already_indexed=metrics.files_already_indexed,
        to_index=len(todo),
        without_row_counts=len(files.files) - metrics.files_already_indexed - len(todo),
    )
    if request.dry_run:
        metrics.files_indexed = len(todo)
        passes = -(-len(todo) // request.files_per_pass)  # the index files a run would write
        _compact(prefix, table, files, loaded, ["(to write)"] * passes, [], metrics, dry_run=True)
        metrics.outcome = Outcome.DRY_RUN
        return
    written: list[str] = []
    made: list[pa.Table] = []  # this run's entries, for the compaction
    for start in range(0, len(todo), request.files_per_pass):
        if should_stop():
            metrics.outcome = Outcome.INTERRUPTED
            raise MergeInterruptedError(
                f"stopped by a signal after indexing {metrics.files_indexed} files;"
                " rerun to index the rest"
            )
        batch = todo[start : start + request.files_per_pass]
        entries = _entries(files, batch, key_schema, metrics)
        written.append(
            rangeindex.write(prefix, entries, table.table_id(), request.keys, table.version)
        )
        made.append(entries)
        metrics.files_indexed += len(batch)
        metrics.files_left -= len(batch)
        metrics.entries_written += entries.num_rows
        metrics.index_files_written += 1
        log.info(
            "indexed",
            files=metrics.files_indexed,
            of=len(todo),
            entries=metrics.entries_written,
        )
    _compact(prefix, table, files, loaded, written, made, metrics, dry_run=False)
    done = metrics.files_indexed or metrics.index_files_compacted
    metrics.outcome = Outcome.INDEXED if done else Outcome.NOTHING_TO_DO


def _compact(
    prefix: Prefix,
    table: Table,
    files: Files,
    loaded: rangeindex.Loaded,
    written: list[str],
    made: list[pa.Table],
    metrics: IndexMetrics,
    *,
    dry_run: bool,
) -> None:
    """Fold the index into one file when it has more than COMPACT_ABOVE files (every
    merge adds one, and every merge reads them all) or entries of no current file
    (OPTIMIZE, a rewrite, entries that do not add up). The new file is written before
    the files it folds are deleted, and only files this run read whole are deleted: a
    merge or indexer that reads the index meanwhile finds every entry in one or the
    other (or reads the file), and files written meanwhile stay."""
    old = loaded.index.live(files.files)
    kept = old.num_rows + sum(t.num_rows for t in made)
    dropped = loaded.index.distinct_entries() - old.num_rows
    folded = [*loaded.names, *written]
    if len(folded) <= COMPACT_ABOVE and not (dropped and loaded.names):
        return
    metrics.index_files_compacted = len(folded)
    metrics.entries_dropped = dropped
    log.info("compacting the index", index_files=len(folded), entries=kept, dropped=dropped)
    if dry_run:
        return
    entries = pa.concat_tables([old, *made]) if made else old
    name = rangeindex.write(prefix, entries, table.table_id(), list(files.keys), table.version)
    metrics.index_files_written += 1
    for old_name in folded:
        if old_name != name:  # a rerun over one compacted file writes the same bytes
            prefix.delete(f"{KEY_INDEX_DIR}/{old_name}")


def _entries(
    files: Files, batch: Sequence[FileStat], key_schema: pa.Schema, metrics: IndexMetrics
) -> pa.Table:
    tables = []
    for stat in batch:
        parts = []
        for keys in files.key_groups(stat, key_schema, encoded=True)[1]:  # by row group
            metrics.key_rows_read += keys.num_rows
            parts.append(rangeindex.entries_of(stat, keys, key_schema))
        tables.append(rangeindex.combine(parts, key_schema))
    return pa.concat_tables(tables)
