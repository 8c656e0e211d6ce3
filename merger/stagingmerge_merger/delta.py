"""The only module that uses deltalake: open, scan, read staging in order, append, replace.

Staging is read through a pyarrow dataset, one data file (or row group) at a
time in a fixed order, so that "the first copy of a key wins" means the same
thing on every run. Main is only ever scanned for its key columns, through
delta-rs's own engine (which prunes files and row groups with the predicate and
understands deletion vectors and column mapping).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake import __version__ as deltalake_version
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)

from .errors import InvalidInputError, MergeError, StorageError
from .plan import Column, columns_of
from .storage import Location, looks_like_auth_error, one_line, scrub

_ACTION_COLUMNS = ("path", "modification_time", "num_records")


def _subset(units: Sequence[ReadUnit]) -> pads.FileSystemDataset:
    """A dataset of just these units, scanned in their order."""
    parent = units[0].dataset
    return pads.FileSystemDataset(
        [u.fragment for u in units], parent.schema, parent.format, parent.filesystem
    )


FULL_ROW_BATCH = 8192  # whole rows per record batch streamed to the writer (~18 MB of CT rows)
# Whole rows are read page by page rather than a row group at a time, so a staging
# file written with one huge row group does not have to fit in memory.
_STREAMING_READ = pads.ParquetFragmentScanOptions(
    pre_buffer=False, use_buffered_stream=True, buffer_size=1 << 20
)
# Row groups of 16 K rows (~35 MB of CT rows): parquet-rs buffers a whole row group
# in Arrow form before encoding it, so this bounds the writer's memory too.
WRITER_PROPERTIES = WriterProperties(max_row_group_size=16_384, compression="SNAPPY")

__all__ = ["CommitConflictError", "ReadUnit", "Table", "TableNotFoundError"]


class CommitConflictError(MergeError):
    """Another writer's commit conflicts with ours (delta-rs gave up its own retries)."""


@dataclass(frozen=True)
class ReadUnit:
    """One staging data file, or one row group of a large one, with its row count."""

    fragment: Any  # pyarrow.dataset.ParquetFileFragment
    rows: int
    path: str
    dataset: Any  # the staging pyarrow dataset it belongs to (schema, format, file system)


class Table:
    """A Delta table at one version, with the few operations the merge needs."""

    def __init__(self, dt: DeltaTable, location: Location, options: Mapping[str, str]) -> None:
        self._dt = dt
        self.location = location
        self._options = dict(options)

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls, location: Location, options: Mapping[str, str], version: int | None = None
    ) -> Table:
        with translate_errors(location, options, "open"):
            dt = DeltaTable(location.uri, version=version, storage_options=dict(options) or None)
            dt.protocol()  # fail now, not half-way, on a log this library can't read
        return cls(dt, location, options)

    @classmethod
    def create(
        cls,
        location: Location,
        options: Mapping[str, str],
        like: Table,
        partition_by: Sequence[str],
    ) -> Table:
        with translate_errors(location, options, "create"):
            dt = DeltaTable.create(
                location.uri,
                schema=like._dt.schema(),
                partition_by=list(partition_by) or None,
                storage_options=dict(options) or None,
                mode="error",
                commit_properties=CommitProperties(
                    custom_metadata={"stagingmerge.created_from": str(like.location)}
                ),
            )
        return cls(dt, location, options)

    def at_version(self, version: int) -> Table:
        return Table.open(self.location, self._options, version)

    # --- what it is -----------------------------------------------------------------

    @property
    def version(self) -> int:
        return int(self._dt.version())

    def latest_version(self) -> int:
        with translate_errors(self.location, self._options, "read the log of"):
            self._dt.update_incremental()
        return self.version

    def columns(self) -> dict[str, Column]:
        return columns_of(self._dt.schema().to_json())

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(self._dt.schema().to_arrow())

    def partition_columns(self) -> list[str]:
        return list(self._dt.metadata().partition_columns)

    # --- reading --------------------------------------------------------------------

    def scan(self, columns: Sequence[str] | None, predicate: str | None) -> pa.Table:
        """Rows (or some columns) matching `predicate`, through delta-rs's engine."""
        with translate_errors(self.location, self._options, "scan"):
            reader = self._dt.scan(columns=list(columns) if columns else None, predicate=predicate)
            return pa.table(reader)

    def read_units(self, max_rows: int) -> list[ReadUnit]:
        """Staging's data files in read order, large ones split by row group.

        Order: the commit time of each file's add action, then its path. The first
        copy of a key in this order is the one inserted.
        """
        with translate_errors(self.location, self._options, "list the files of"):
            dataset = self._dt.to_pyarrow_dataset()
            actions = pa.table(self._dt.get_add_actions(flatten=True))
        info = {
            unquote(str(a["path"])): (int(a["modification_time"]), a.get("num_records"))
            for a in actions.select(
                [
                    c
                    for c in ("path", "modification_time", "num_records")
                    if c in actions.schema.names
                ]
            ).to_pylist()
        }
        fragments = sorted(
            dataset.get_fragments(),
            key=lambda f: (info.get(unquote(f.path), (0, None))[0], f.path),
        )
        units: list[ReadUnit] = []
        with translate_errors(self.location, self._options, "read the footers of"):
            for fragment in fragments:
                rows = info.get(unquote(fragment.path), (0, None))[1]
                if rows is None:
                    rows = fragment.count_rows()
                if rows > max_rows:
                    pieces = fragment.split_by_row_group()
                    if len(pieces) > 1:
                        units.extend(
                            ReadUnit(p, p.row_groups[0].num_rows, fragment.path, dataset)
                            for p in pieces
                        )
                        continue
                units.append(ReadUnit(fragment, int(rows), fragment.path, dataset))
        return units

    def read_keys(self, units: Sequence[ReadUnit], names: Sequence[str]) -> pa.Table:
        """The key columns of `units`, concatenated in read order."""
        with translate_errors(self.location, self._options, "read"):
            return _subset(units).to_table(columns=list(names))

    def read_rows(
        self, units: Sequence[ReadUnit], positions: Sequence[int], target: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        """Whole rows at the given sorted positions of `units` (as numbered by `read_keys`),
        cast to `target`. Units holding none of them are not read at all; the others are
        scanned in order, a few files ahead, page by page."""
        wanted, kept, start, kept_rows = [], [], 0, 0
        for unit in units:
            lo = bisect.bisect_left(positions, start)
            hi = bisect.bisect_left(positions, start + unit.rows)
            if hi > lo:
                kept.append(unit)
                wanted += [p - start + kept_rows for p in positions[lo:hi]]
                kept_rows += unit.rows
            start += unit.rows
        if not kept:
            return
        scanner = _subset(kept).scanner(
            columns=target.names,
            batch_size=FULL_ROW_BATCH,
            batch_readahead=4,
            fragment_readahead=2,
            fragment_scan_options=_STREAMING_READ,
        )
        offset = 0
        with translate_errors(self.location, self._options, "read"):
            for batch in scanner.to_batches():  # in fragment order, like read_keys
                lo = bisect.bisect_left(wanted, offset)
                hi = bisect.bisect_left(wanted, offset + batch.num_rows)
                if hi - lo == batch.num_rows:
                    yield batch.cast(target)
                elif hi > lo:
                    take = pa.array([p - offset for p in wanted[lo:hi]], pa.int64())
                    yield batch.take(take).cast(target)
                offset += batch.num_rows

    # --- writing --------------------------------------------------------------------

    def append(
        self, batches: Iterator[pa.RecordBatch], schema: pa.Schema, metadata: Mapping[str, str]
    ) -> int:
        """Append in one commit; return the version committed."""
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        with translate_errors(self.location, self._options, "append to"):
            write_deltalake(
                self._dt,
                reader,
                mode="append",
                writer_properties=WRITER_PROPERTIES,
                commit_properties=CommitProperties(custom_metadata=dict(metadata)),
            )
        return self.version

    def replace(self, rows: pa.Table, predicate: str, metadata: Mapping[str, str]) -> int:
        """Replace every row matching `predicate` with `rows`, in one commit."""
        with translate_errors(self.location, self._options, "rewrite rows of"):
            self._dt.update_incremental()
            write_deltalake(
                self._dt,
                rows,
                mode="overwrite",
                predicate=predicate,
                commit_properties=CommitProperties(custom_metadata=dict(metadata)),
            )
        return self.version


_PROTOCOL_HINTS = (
    "protocol",
    "reader version",
    "reader feature",
    "writer feature",
    "unsupported",
    "not supported",
    "columnmapping",
    "deletionvectors",
)


@contextlib.contextmanager
def translate_errors(location: Location, options: Mapping[str, str], action: str) -> Iterator[None]:
    """deltalake/arrow exceptions -> one-line MergeErrors with the right exit code."""
    try:
        yield
    except MergeError:
        raise
    except CommitFailedError as exc:
        raise CommitConflictError(f"cannot {action} {location}: {_one_line(exc, options)}") from exc
    except DeltaProtocolError as exc:
        raise _unsupported(action, location, _one_line(exc, options)) from exc
    except SchemaMismatchError as exc:
        raise InvalidInputError(f"cannot {action} {location}: {_one_line(exc, options)}") from exc
    except TableNotFoundError:
        raise
    except (DeltaError, OSError, pa.ArrowException) as exc:
        text = _one_line(exc, options)
        lowered = text.lower()
        if any(h in lowered for h in _PROTOCOL_HINTS):
            raise _unsupported(action, location, text) from exc
        if looks_like_auth_error(text):
            raise InvalidInputError(
                f"cannot {action} {location}: storage refused the credentials ({text})"
            ) from exc
        raise StorageError(f"cannot {action} {location}: {text}") from exc


def _unsupported(action: str, location: Location, text: str) -> InvalidInputError:
    return InvalidInputError(
        f"cannot {action} {location}: the table uses a Delta protocol or feature this merge"
        f" (deltalake {deltalake_version}) does not support: {text}"
    )


def _one_line(exc: BaseException, options: Mapping[str, str]) -> str:
    return scrub(one_line(str(exc)), options)
