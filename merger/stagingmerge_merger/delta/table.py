"""delta-rs, the way into Delta wherever it can do the job: open, scan, query, append,
replace. The only module that uses deltalake.

Both tables are read through delta-rs's own engine (`DeltaTable.scan` and
`QueryBuilder`), which implements the Delta protocol: column mapping (name and
id), partition values as the log encodes them (escaping, `''` and NULL),
deletion vectors, checkpoints (v1 and v2) and every reader feature delta-rs
supports. A table delta-rs cannot read is refused (exit 2) the moment it is
opened or first scanned, which is before anything is written. Nothing here
reads a data file directly (files.py does, only where delta-rs has no call for it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    CommitProperties,
    DeltaTable,
    QueryBuilder,
    TableFeatures,
    WriterProperties,
    write_deltalake,
)
from deltalake import (
    Schema as DeltaSchema,
)
from deltalake import __version__ as deltalake_version
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)

from ..errors import InvalidInputError, MergeError, StorageError
from ..predicates import quote_ident
from ..schema import Column, columns_of, undeclared_features, writer_features
from ..storage import Location, looks_like_auth_error, one_line, scrub

# Row groups of 16 K rows (~35 MB of CT rows): parquet-rs buffers a whole row group
# in Arrow form before encoding it, so this bounds the writer's memory too.
WRITER_PROPERTIES = WriterProperties(max_row_group_size=16_384, compression="SNAPPY")
QUERY_TABLE = "t"  # the name a table has in the SQL of Table.query


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's
    `limits.cpu`; os.cpu_count() sees the whole node)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota()
    return max(1, min(cpus or 1, quota) if quota else (cpus or 1))


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or None."""
    for quota_file, period_file in (
        (root / "cpu.max", None),  # v2: "max 100000" or "<quota> <period>"
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),  # v1
    ):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], fields[1]
            if quota == "max" or int(quota) <= 0:
                return None
            return math.ceil(int(quota) / int(period))
        except (OSError, ValueError, IndexError):
            continue
    return None


# Scans run in twice as many DataFusion partitions as there are CPUs (its default is one
# per CPU): each partition waits on reads between decoding, so two per CPU keep the CPUs
# busy. Measured on 2 cores, 100 M rows' key columns: 2.7 s against 3.2-3.7 s from disk,
# 2.2-2.5 s against 3.0 s from the page cache; 8 partitions measured the same as 4.
SCAN_CONFIG = {"datafusion.execution.target_partitions": str(max(4, 2 * usable_cpus()))}

__all__ = ["CommitConflictError", "Handoff", "Table", "TableNotFoundError", "plain_schema"]


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` without field metadata (column-mapping ids, generation expressions): the
    shape rows are cast to and written with; delta-rs maps names to physical columns."""
    return pa.schema([pa.field(f.name, _plain_type(f.type), f.nullable) for f in schema])


def _without_metadata(kind: Any) -> Any:
    """A Delta type (JSON) with every field's metadata emptied, nested ones included."""
    if not isinstance(kind, dict):
        return kind
    out = dict(kind)
    if out.get("type") == "struct":
        out["fields"] = [
            {**f, "metadata": {}, "type": _without_metadata(f["type"])} for f in out["fields"]
        ]
    elif out.get("type") == "array":
        out["elementType"] = _without_metadata(out["elementType"])
    elif out.get("type") == "map":
        out["keyType"] = _without_metadata(out["keyType"])
        out["valueType"] = _without_metadata(out["valueType"])
    return out


def _physical_names(schema: Mapping[str, Any]) -> dict[str, str]:
    """Logical -> physical column names (column mapping); file statistics use the latter."""
    names = {}
    for field in schema["fields"]:
        physical = (field.get("metadata") or {}).get("delta.columnMapping.physicalName")
        names[field["name"]] = str(physical or field["name"])
    return names


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _plain_type(f.type), f.nullable) for f in kind])
    if pa.types.is_large_list(kind):
        item = kind.value_field
        return pa.large_list(pa.field(item.name, _plain_type(item.type), item.nullable))
    if pa.types.is_list(kind):
        item = kind.value_field
        return pa.list_(pa.field(item.name, _plain_type(item.type), item.nullable))
    if pa.types.is_map(kind):
        return pa.map_(
            pa.field(kind.key_field.name, _plain_type(kind.key_type), False),
            pa.field(kind.item_field.name, _plain_type(kind.item_type), kind.item_field.nullable),
        )
    return kind


class Handoff:
    """Rows for a delta-rs writer, produced on a thread of their own.

    delta-rs's writer pulls its input from one of its runtime's threads, and a delta-rs
    scan cannot be driven from there ("Cannot start a runtime from within a runtime").
    So the rows (which come from a scan) are produced by a plain thread and handed over
    through a bounded queue: still a stream, `depth` record batches ahead at most.
    An error of the producer is kept and raised in place of the writer's.
    """

    _END = object()

    def __init__(self, batches: Iterator[pa.RecordBatch], depth: int = 4) -> None:
        self._batches = batches
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name="rows", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for batch in self._batches:
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self.error = exc
        finally:
            with contextlib.suppress(queue.Full):
                self._queue.put(self._END, timeout=5)

    def reader(self, schema: pa.Schema) -> pa.RecordBatchReader:
        """The rows as the reader a delta-rs writer takes."""
        return pa.RecordBatchReader.from_batches(schema, iter(self))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self.error is not None:
                    raise RuntimeError("the rows could not be read") from self.error
                return
            yield item

    def close(self) -> None:
        """Stop the producer (the writer failed or is done) and wait for it."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=30)

    @contextlib.contextmanager
    def feeding(self) -> Iterator[None]:
        """Run the writer; whatever it raises, the producer's own error comes first."""
        try:
            yield
        except BaseException:
            self.close()
            if self.error is not None:
                raise self.error from None
            raise
        self.close()


def _cast(batch: Any, schema: pa.Schema) -> pa.RecordBatch:
    return pa.record_batch(batch).select(schema.names).cast(schema)


class CommitConflictError(MergeError):
    """Another writer's commit conflicts with ours (delta-rs gave up its own retries)."""


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
            dt = DeltaTable(location.url, version=version, storage_options=dict(options) or None)
            dt.protocol()  # fail now, not half-way, on a log this library can't read
        return cls(dt, location, options)

    @classmethod
    def create(
        cls,
        location: Location,
        options: Mapping[str, str],
        schema: str,
        partition_by: Sequence[str],
        metadata: Mapping[str, str],
    ) -> Table:
        """Create the table, empty, in one commit (version 0): atomic, so a crash right
        after it leaves a valid table that a rerun appends to. `schema` is a Delta schema
        (JSON, `plain_delta_schema`): Delta's own types, which Arrow's cannot all say.
        The writer features the schema implies are declared apart, in the next commit
        (declare_implied_features): delta-rs's create does not list them all."""
        with translate_errors(location, options, "create"):
            DeltaTable.create(
                location.url,
                schema=DeltaSchema.from_json(schema),
                partition_by=list(partition_by) or None,
                storage_options=dict(options) or None,
                mode="error",
                # no retry: a create that lost the race for version 0 would otherwise be
                # committed again as version 1, a second CREATE TABLE (a new table id, and
                # the schema of whoever came second) over the winner's table
                commit_properties=CommitProperties(
                    custom_metadata=dict(metadata), max_commit_retries=0
                ),
            )
        return cls.open(location, options, 0)  # ours: what others commit next is theirs

    def undeclared_features(self) -> list[str]:
        """Writer features the schema implies and the protocol does not list (see
        `schema.undeclared_features`)."""
        protocol = self._dt.protocol()
        return undeclared_features(
            protocol.min_writer_version, protocol.writer_features, self.columns()
        )

    def declare_implied_features(self, metadata: Mapping[str, str]) -> int | None:
        """List in the protocol, in one commit, the writer features the schema implies
        (nothing changes in what any engine reads or writes: every Delta writer enforces
        NOT NULL); without it Spark refuses to read the table. Returns the version of that
        commit, or None when it made none (nothing was missing, or another writer, a shard
        that created main, declared them first)."""
        with translate_errors(self.location, self._options, "declare table features of"):
            self._dt.update_incremental()
            missing = self.undeclared_features()
            if not missing:
                return None
            try:
                self._dt.alter.add_feature(
                    [getattr(TableFeatures, f[0].upper() + f[1:]) for f in missing],
                    commit_properties=CommitProperties(custom_metadata=dict(metadata)),
                )
            except DeltaError:
                self._dt.update_incremental()
                if self.undeclared_features():
                    raise
                return None
        return self.version

    def at_version(self, version: int) -> Table:
        return Table.open(self.location, self._options, version)

    # --- what it is -----------------------------------------------------------------

    @property
    def options(self) -> dict[str, str]:
        return dict(self._options)

    @property
    def version(self) -> int:
        return int(self._dt.version())

    def latest_version(self) -> int:
        with translate_errors(self.location, self._options, "read the log of"):
            self._dt.update_incremental()
        return self.version

    def columns(self) -> dict[str, Column]:
        return columns_of(self._dt.schema().to_json())

    def plain_delta_schema(self) -> str:
        """The table's Delta schema (JSON) without field metadata (column-mapping ids and
        physical names, generation expressions, identity): what a new main is created
        with. Delta types, not Arrow's: a variant column read through Arrow is a struct of
        two binaries, and a main created from that would hold structs, not variants."""
        schema = json.loads(self._dt.schema().to_json())
        return json.dumps(_without_metadata(schema))

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(self._dt.schema().to_arrow())

    def writer_features(self) -> set[str]:
        """The writer features main's protocol requires (implied ones included)."""
        protocol = self._dt.protocol()
        return writer_features(protocol.min_writer_version, protocol.writer_features)

    def partition_columns(self) -> list[str]:
        return list(self._dt.metadata().partition_columns)

    def table_id(self) -> str:
        """The table's id (metaData.id): another table at the same location has another."""
        return str(self._dt.metadata().id)

    def may_have_deletion_vectors(self) -> bool:
        """Whether the protocol allows deletion vectors: then a data file may hold rows
        the table no longer has."""
        features = self._dt.protocol().reader_features or []
        return "deletionVectors" in features

    def never_null(self) -> set[str]:
        """Top-level columns that cannot hold NULL here: declared NOT NULL (every Delta
        writer enforces it), or with a NULL count of 0 in the statistics of every file
        (statistics count the rows a file was written with, so deletion vectors can only
        lower the true count). Partition columns are judged by their values."""
        columns = self.columns()
        found = {name for name, column in columns.items() if not column.nullable}
        with translate_errors(self.location, self._options, "read the file statistics of"):
            actions = pa.table(self._dt.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return set(columns)
        physical = _physical_names(json.loads(self._dt.schema().to_json()))
        partitions = set(self.partition_columns())
        for name in columns:
            if name in found:
                continue
            if name in partitions:  # listed by logical name, or physical with column mapping
                for values in (f"partition.{name}", f"partition.{physical[name]}"):
                    if values in actions.column_names:
                        if actions[values].null_count == 0:
                            found.add(name)
                        break
                continue
            counts = f"null_count.{physical[name]}"
            if counts in actions.column_names:
                column = actions[counts]
                if column.null_count == 0 and pc.max(column).as_py() == 0:
                    found.add(name)
        return found

    def configuration(self) -> dict[str, str | None]:
        return dict(self._dt.metadata().configuration)

    # --- reading --------------------------------------------------------------------

    def scan(self, columns: Sequence[str] | None, predicate: str | None) -> pa.Table:
        """Rows (or some columns) matching `predicate`, read in full, through delta-rs's
        engine with SCAN_CONFIG's partitions, in the table's own Arrow types (the engine's
        view types cast back). Never the input of a writer: see stream()."""
        schema = self._projection(columns)
        names = ", ".join(quote_ident(c) for c in schema.names)
        sql = f"SELECT {names} FROM {QUERY_TABLE}"  # noqa: S608 - quoted names, our predicate
        if predicate:
            sql += f" WHERE {predicate}"
        with translate_errors(self.location, self._options, "scan"):
            builder = QueryBuilder(SCAN_CONFIG).register(QUERY_TABLE, self._dt)
            batches = [_cast(batch, schema) for batch in builder.execute(sql)]
        return pa.Table.from_batches(batches, schema=schema)

    def stream(
        self, columns: Sequence[str] | None, predicate: str | None
    ) -> Iterator[pa.RecordBatch]:
        """The same as scan(), as a stream of record batches (in no particular order),
        through `DeltaTable.scan`: a stream that feeds delta-rs's writer (Handoff) must not
        be a QueryBuilder's, whose batches are produced by tasks on the runtime the writer
        blocks (with one CPU, its only thread: measured, the merge then hangs)."""
        schema = self._projection(columns)
        with translate_errors(self.location, self._options, "scan"):
            for batch in self._dt.scan(columns=schema.names, predicate=predicate):
                yield _cast(batch, schema)

    def query(self, sql: str) -> pa.Table:
        """A DataFusion SQL query over this table, named `t` (QUERY_TABLE) in `sql`."""
        with translate_errors(self.location, self._options, "query"):
            builder = QueryBuilder().register(QUERY_TABLE, self._dt)
            return pa.table(builder.execute(sql).read_all())

    def _projection(self, columns: Sequence[str] | None) -> pa.Schema:
        schema = plain_schema(self.arrow_schema())
        return pa.schema([schema.field(c) for c in columns]) if columns else schema

    # --- writing --------------------------------------------------------------------

    def append(
        self, batches: Iterator[pa.RecordBatch], schema: pa.Schema, metadata: Mapping[str, str]
    ) -> int:
        """Append in one commit; return the version committed."""
        handoff = Handoff(batches)
        with handoff.feeding(), translate_errors(self.location, self._options, "append to"):
            write_deltalake(
                self._dt,
                handoff.reader(schema),
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

    def key_file_stats(self, keys: Sequence[str]) -> pa.Table:
        """One row per data file: path, size_bytes, num_records and, where the log keeps
        them, the min./max. statistics of each key column (under its logical name)."""
        physical = _physical_names(json.loads(self._dt.schema().to_json()))
        with translate_errors(self.location, self._options, "list the files of"):
            actions = pa.table(self._dt.get_add_actions(flatten=True))
        columns = {
            name: actions.column(name)
            for name in ("path", "size_bytes", "num_records")
            if name in actions.column_names
        }
        for key in keys:
            for side in ("min", "max"):
                for name in (f"{side}.{key}", f"{side}.{physical.get(key, key)}"):
                    if name in actions.column_names:
                        columns[f"{side}.{key}"] = actions.column(name)
                        break
        return pa.table(columns)

    def physical_names(self, columns: Sequence[str]) -> tuple[str, ...]:
        """The columns' names in the data files (column mapping), in order."""
        physical = _physical_names(json.loads(self._dt.schema().to_json()))
        return tuple(physical.get(c, c) for c in columns)

    # --- clustering (clustering.py) --------------------------------------------------

    def files_by_partition(self) -> dict[tuple[Any, ...], tuple[int, int]]:
        """(files, rows) of each partition, keyed by its values in partition-column order
        (one entry, keyed `()`, for an unpartitioned table)."""
        with translate_errors(self.location, self._options, "list the files of"):
            actions = pa.table(self._dt.get_add_actions(flatten=True))
        columns = [f"partition.{c}" for c in self.partition_columns()]
        keys = (
            zip(*(actions.column(c).to_pylist() for c in columns), strict=True)
            if columns
            else (() for _ in range(actions.num_rows))
        )
        records = actions.column("num_records").to_pylist()
        found: dict[tuple[Any, ...], tuple[int, int]] = {}
        for key, rows in zip(keys, records, strict=True):
            files, total = found.get(tuple(key), (0, 0))
            found[tuple(key)] = (files + 1, total + int(rows or 0))
        return found

    def commit_infos(self) -> list[dict[str, Any]]:
        """commitInfo of every commit the log still holds, newest first."""
        with translate_errors(self.location, self._options, "read the history of"):
            return [dict(info) for info in self._dt.history()]

    def z_order(
        self,
        columns: Sequence[str],
        partition: Mapping[str, str],
        metadata: Mapping[str, str],
        target_size: int | None,
        max_spill_size: int,
    ) -> dict[str, Any]:
        """Rewrite one partition's files z-ordered by `columns`, in one commit that removes
        only the files it read (a concurrent append is kept; a conflicting rewrite fails
        with CommitConflictError). Returns delta-rs's optimize metrics."""
        with translate_errors(self.location, self._options, "cluster"):
            self._dt.update_incremental()
            return dict(
                self._dt.optimize.z_order(
                    list(columns),
                    partition_filters=[(k, "=", v) for k, v in partition.items()] or None,
                    target_size=target_size,
                    max_spill_size=max_spill_size,
                    commit_properties=CommitProperties(
                        custom_metadata=dict(metadata), max_commit_retries=3
                    ),
                )
            )


_UNSUPPORTED_FEATURES = "Unsupported table features required"
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
        if _UNSUPPORTED_FEATURES in str(exc):  # no retry can help (see schema.check_writable)
            raise _unsupported(action, location, _one_line(exc, options)) from exc
        raise CommitConflictError(f"cannot {action} {location}: {_one_line(exc, options)}") from exc
    except DeltaProtocolError as exc:
        raise _unsupported(action, location, _one_line(exc, options)) from exc
    except SchemaMismatchError as exc:
        raise InvalidInputError(f"cannot {action} {location}: {_one_line(exc, options)}") from exc
    except TableNotFoundError:
        raise
    except Exception as exc:
        # deltalake's streams raise plain Exceptions ("C Data interface error: ...") from
        # the Rust side; anything else is ours, a bug, and stays unexpected
        ours = not isinstance(exc, DeltaError | OSError | pa.ArrowException)
        if ours and type(exc) is not Exception:
            raise
        text = _one_line(exc, options)
        lowered = text.lower()
        if any(h in lowered for h in _PROTOCOL_HINTS):
            raise _unsupported(action, location, text) from exc
        if _CORRUPT_LOG.search(text):
            raise InvalidInputError(
                f"cannot {action} {location}: its log does not parse ({text}); no Delta writer"
                " leaves such a log: repair or rewrite the table"
            ) from exc
        if _MISSING_FILE.search(text) and not _PASSING.search(text):
            raise InvalidInputError(
                f"cannot {action} {location}: its log names a data file that is not there"
                f" ({text}); the table is broken (a file removed by hand, or by a VACUUM"
                " while the log still needs it): restore the file or repair the log"
            ) from exc
        if action in _READS and _UNDECODABLE.search(text):
            raise InvalidInputError(
                f"cannot {action} {location}: deltalake {deltalake_version} cannot decode its"
                f" data as its schema declares ({text}); no retry can help: rewrite the"
                " table's files in the declared types"
            ) from exc
        if looks_like_auth_error(text):
            raise InvalidInputError(
                f"cannot {action} {location}: storage refused the credentials ({text})"
            ) from exc
        raise StorageError(f"cannot {action} {location}: {text}") from exc


# delta-rs's words for a log it cannot parse (serde_json's end in "at line N column M")
_CORRUPT_LOG = re.compile(
    r"\bjson error\b|invalid json|failed to parse .*json|at line \d+ column \d+", re.IGNORECASE
)
# Arrow's and DataFusion's words for data that does not decode as the schema says (a
# file's physical type the declared one cannot be cast from, an array of a type a reader
# cannot view): the same on every attempt, so not a storage failure to retry
_READS = ("scan", "query")  # a write's cast error is ours, not the table's
_UNDECODABLE = re.compile(
    r"\bcast error\b|\bcannot cast\b|can't view array of type|not yet implemented",
    re.IGNORECASE,
)
_MISSING_FILE = re.compile(
    r"(object at location \S+ not found|failed to fetch metadata for file)", re.IGNORECASE
)
# a store's answers that pass (throttling, a server error, a timeout, a dropped
# connection): a footer not fetched for one of those is a storage failure to retry, not
# a file missing for good (seen: a 503 SlowDown storm past the retries read as exit 2)
_PASSING = re.compile(
    r"\b(5\d\d|429)\b|slow ?down|too many requests|service unavailable|throttl|timed? ?out"
    r"|timeout|connection (reset|refused|closed)|error sending request|broken pipe",
    re.IGNORECASE,
)


def _unsupported(action: str, location: Location, text: str) -> InvalidInputError:
    return InvalidInputError(
        f"cannot {action} {location}: the table uses a Delta protocol or feature this merge"
        f" (deltalake {deltalake_version}) does not support: {text}"
    )


def _one_line(exc: BaseException, options: Mapping[str, str]) -> str:
    return scrub(one_line(str(exc)), options)
