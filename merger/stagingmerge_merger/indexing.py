"""Building main's key-range index: `stagingmerge-index`, a batch of files at a time.

Every data file of main at its current version that the index has no exact entry for
(rangeindex.py) has its key columns read, once, and gets one entry per key prefix. The
entries of each batch of `files_per_pass` files go into one new index file, written
create-only: a run that is stopped or killed keeps every batch it wrote, and the rerun
indexes only the rest (resumable); memory holds one batch's entries and one file's keys
at a time. Files removed from main since (OPTIMIZE, a rewrite) simply stop being
looked up: their entries are never used again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import structlog

from . import rangeindex
from .contract import DEFAULT_KEYS, Outcome, fit_json
from .delta import Table, TableNotFoundError, plain_schema
from .delta.files import Files, FileStat
from .errors import InvalidInputError, MergeInterruptedError
from .schema import check_keys
from .storage import Location, Prefix

log = structlog.get_logger("stagingmerge.index")

FILES_PER_PASS = 256  # files whose entries go into one index file (a 10^4-file main: ~40)


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
    todo = [f for f in files.files if f.path not in exact]
    metrics.main_files = len(files.files)
    metrics.files_already_indexed = len(files.files) - len(todo)
    metrics.files_left = len(todo)
    log.info(
        "indexing main",
        main=str(request.main),
        version=table.version,
        files=len(files.files),
        already_indexed=metrics.files_already_indexed,
        to_index=len(todo),
    )
    if not todo:
        metrics.outcome = Outcome.NOTHING_TO_DO
        return
    if request.dry_run:
        metrics.files_indexed = len(todo)
        metrics.outcome = Outcome.DRY_RUN
        return
    for start in range(0, len(todo), request.files_per_pass):
        if should_stop():
            metrics.outcome = Outcome.INTERRUPTED
            raise MergeInterruptedError(
                f"stopped by a signal after indexing {metrics.files_indexed} files;"
                " rerun to index the rest"
            )
        batch = todo[start : start + request.files_per_pass]
        entries = _entries(files, batch, key_schema, metrics)
        rangeindex.write(prefix, entries, table.table_id(), request.keys, table.version)
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
    metrics.outcome = Outcome.INDEXED


def _entries(
    files: Files, batch: Sequence[FileStat], key_schema: pa.Schema, metrics: IndexMetrics
) -> pa.Table:
    tables = []
    for stat in batch:
        keys = files.keys_of_file(stat, key_schema)
        metrics.key_rows_read += keys.num_rows
        tables.append(rangeindex.entries_of(stat, keys, key_schema))
    return pa.concat_tables(tables)
