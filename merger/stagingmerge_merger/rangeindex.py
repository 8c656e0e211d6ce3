"""The key-range index of main: per data file and key prefix, the range of the last key.

A live writer leaves every file of main mixing all logs, so each file's min/max of
`cert_index` spans every log's range and the Delta statistics prune nothing. Within one
file, per log, the range is narrow (a writer appends each log in index order). This index
keeps, for each data file of main (by path and size: one immutable file), per key prefix
(the values of every key column but the last), the min, max and row count of the last key
column; a merge keeps only the files whose range for a staging prefix meets staging's
(`RangeIndex.prune`) and reads the key columns of those (delta/files.py).

Stored in main, under `_stagingmerge/keyindex/` (Delta readers and VACUUM ignore `_`
directories), as small Parquet files written create-only, one per indexing pass
(`<version>-<sha256 of the file>.parquet`), so concurrent merges, shards and
`stagingmerge-index` never overwrite one another, and a file that is not whole (truncated,
half-written, changed) is known by its name. Each file records the format, main's table id
and the key columns in its metadata.

Safety: the index only ever prunes a file it has an exact entry for. A file of main is
pruned only when (1) an index file naming it by path *and* size was read whole, with
valid checksums, for this table id and these keys, and (2) its entries' row counts add up
to the file's numRecords in the Delta log. Anything missing, stale (a rewritten file has
another path), corrupt, truncated, from another table or unreadable means "read the file":
a wrong index can cost time, never a missed key. Not usable (so not used) on a main whose
protocol allows deletion vectors (a file's rows would include deleted ones) or whose key
columns are partition columns (their values live in the log). The index trusts what its
writers wrote: it is a cache kept by this tool, not a defence against a writer that
forges entries with write access to main (which could rewrite main itself).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from .contract import KEY_INDEX_DIR
from .delta import Table
from .delta.files import Box, FileStat
from .errors import MergeError
from .keyvalues import as_numbers
from .predicates import KeyRange
from .storage import Prefix

log = structlog.get_logger("stagingmerge.merge")

FORMAT = 1
META = b"stagingmerge.keyindex"
PATH, SIZE, LOW, HIGH, ROWS = "path", "size", "low", "high", "rows"


def unusable(table: Table, keys: Sequence[str]) -> str | None:
    """Why main cannot use a key-range index (None: it can)."""
    if table.may_have_deletion_vectors():
        return "main's protocol allows deletion vectors (a file's rows may include deleted ones)"
    if set(keys) & set(table.partition_columns()):
        return "a key column is a partition column (its values are in the log, not the files)"
    return None


def _prefix_columns(names: Sequence[str]) -> list[str]:
    return [f"p{i}" for i in range(len(names) - 1)]


def entry_schema(key_schema: pa.Schema) -> pa.Schema:
    """The columns of an index file for keys of `key_schema` (dates as day numbers)."""
    numbers = as_numbers(key_schema.empty_table()).schema
    *prefix, last = numbers
    return pa.schema(
        [
            pa.field(PATH, pa.string(), nullable=False),
            pa.field(SIZE, pa.int64(), nullable=False),
            *(
                pa.field(name, f.type)
                for name, f in zip(_prefix_columns(numbers.names), prefix, strict=True)
            ),
            pa.field(LOW, last.type),
            pa.field(HIGH, last.type),
            pa.field(ROWS, pa.int64(), nullable=False),
        ]
    )


def entries_of(stat: FileStat, keys: pa.Table, key_schema: pa.Schema) -> pa.Table:
    """One file's entries, from every row's key columns (`keys`, as `key_schema` or its
    delta.files.encoded_schema)."""
    names = key_schema.names
    *prefix, last = names
    numbers = as_numbers(keys.select(names))
    schema = entry_schema(key_schema)
    if prefix:
        grouped = numbers.group_by(prefix, use_threads=False).aggregate(
            [(last, "min"), (last, "max"), ([], "count_all")]
        )
        # a prefix read as a dictionary (Files.key_groups) is grouped on its codes
        columns = [
            pc.cast(grouped.column(p), schema.field(n).type)
            for p, n in zip(prefix, _prefix_columns(names), strict=True)
        ]
        low, high = grouped.column(f"{last}_min"), grouped.column(f"{last}_max")
        rows = grouped.column("count_all")
        count = grouped.num_rows
    else:
        bounds = pc.min_max(numbers.column(last))
        columns = []
        low = pa.array([bounds["min"].as_py()], schema.field(LOW).type)
        high = pa.array([bounds["max"].as_py()], schema.field(HIGH).type)
        rows = pa.array([numbers.num_rows], pa.int64())
        count = 1
    return pa.table(
        [
            pa.array([stat.path] * count, pa.string()),
            pa.array([stat.size] * count, pa.int64()),
            *columns,
            low,
            high,
            pc.cast(rows, pa.int64()),
        ],
        schema=schema,
    )


def combine(partials: Sequence[pa.Table], key_schema: pa.Schema) -> pa.Table:
    """One file's entries from those of its parts (row groups, by entries_of): per
    prefix, the lowest low, the highest high and the rows summed."""
    schema = entry_schema(key_schema)
    if not partials:
        return schema.empty_table()
    if len(partials) == 1:
        return partials[0]
    entries = pa.concat_tables(partials)
    groups = [PATH, SIZE, *_prefix_columns(key_schema.names)]
    combined = entries.group_by(groups, use_threads=False).aggregate(
        [(LOW, "min"), (HIGH, "max"), (ROWS, "sum")]
    )
    named = {**{g: combined.column(g) for g in groups}, LOW: combined.column(f"{LOW}_min")}
    named[HIGH], named[ROWS] = combined.column(f"{HIGH}_max"), combined.column(f"{ROWS}_sum")
    return pa.table([named[name] for name in schema.names], schema=schema)


def encode(entries: pa.Table, table_id: str, names: Sequence[str], version: int) -> bytes:
    """An index file: the entries, with page checksums and what they are of."""
    meta = {"format": FORMAT, "table_id": table_id, "keys": list(names), "version": version}
    table = entries.replace_schema_metadata({META: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_page_checksum=True)
    return buffer.getvalue()


def file_name(data: bytes, version: int) -> str:
    """An index file's name: the version it indexed and its content's digest."""
    return f"{version:020d}-{hashlib.sha256(data).hexdigest()[:40]}.parquet"


def decode(
    name: str, data: bytes, table_id: str, names: Sequence[str], schema: pa.Schema
) -> pa.Table:
    """The entries of index file `name`; ValueError (or Arrow's) when it is not one of
    ours for this table and these keys, whole and as written."""
    version = name.split("-", 1)[0]
    if not version.isdigit() or file_name(data, int(version)) != name:
        raise ValueError("its content does not match its name (truncated or changed)")
    table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
    raw = (table.schema.metadata or {}).get(META)
    meta = json.loads(raw) if raw else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError("not a key-range index file of this format")
    if meta.get("table_id") != table_id or meta.get("keys") != list(names):
        raise ValueError("an index of another table, or of other key columns")
    table = table.replace_schema_metadata(None)
    if not table.schema.equals(schema):
        raise ValueError(f"unexpected columns {table.schema}")
    return table


@dataclass(frozen=True)
class Loaded:
    index: RangeIndex
    names: tuple[str, ...]  # the index files read whole (under KEY_INDEX_DIR)
    files_ignored: int
    bytes_read: int


class RangeIndex:
    """The entries of main's index files, and the pruning they allow."""

    def __init__(self, entries: pa.Table, key_schema: pa.Schema) -> None:
        self.key_schema = key_schema
        self.schema = entry_schema(key_schema)
        self.entries = entries

    @classmethod
    def empty(cls, key_schema: pa.Schema) -> RangeIndex:
        return cls(entry_schema(key_schema).empty_table(), key_schema)

    @classmethod
    def load(cls, prefix: Prefix, table_id: str, key_schema: pa.Schema) -> Loaded:
        """Every index file under main's KEY_INDEX_DIR that reads whole and is this
        table's; the others are ignored (logged), which only means their files are read."""
        names = key_schema.names
        schema = entry_schema(key_schema)
        tables, names_read, ignored, size = [], [], 0, 0
        try:
            listed = [name for name, _ in prefix.list(KEY_INDEX_DIR) if name.endswith(".parquet")]
        except MergeError as exc:
            log.warning("key-range index not read; main's files are read", error=str(exc))
            return Loaded(cls.empty(key_schema), (), 0, 0)
        for name in sorted(listed):
            try:
                data = prefix.read(f"{KEY_INDEX_DIR}/{name}")
                if data is None:
                    continue  # removed meanwhile (compacted)
                size += len(data)
                tables.append(decode(name, data, table_id, names, schema))
                names_read.append(name)
            except (MergeError, ValueError, OSError, pa.ArrowException) as exc:
                ignored += 1
                log.warning(
                    "ignoring a key-range index file; the files it names are read",
                    file=f"{KEY_INDEX_DIR}/{name}",
                    error=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                )
        entries = pa.concat_tables(tables) if tables else schema.empty_table()
        return Loaded(cls(entries, key_schema), tuple(names_read), ignored, size)

    def exact(self, files: Sequence[FileStat]) -> set[str]:
        """The paths of `files` with an exact entry: named by path and size, with row
        counts that add up to the file's numRecords in the log."""
        known = [f for f in files if f.rows is not None]
        if not known or self.entries.num_rows == 0:
            return set()
        wanted = pa.table(
            {
                PATH: pa.array([f.path for f in known], pa.string()),
                SIZE: pa.array([f.size for f in known], pa.int64()),
                "expected": pa.array([f.rows for f in known], pa.int64()),
            }
        )
        counted = self._counts.join(wanted, [PATH, SIZE], join_type="inner")
        good = pc.equal(counted.column(f"{ROWS}_sum"), counted.column("expected"))
        return set(counted.filter(good).column(PATH).to_pylist())

    @functools.cached_property
    def _distinct(self) -> pa.Table:
        """Each entry once: a file two passes indexed at once is in two index files with
        the same entries (one per prefix, from the same immutable file)."""
        return self.entries.group_by(self.entries.column_names, use_threads=False).aggregate([])

    @functools.cached_property
    def _counts(self) -> pa.Table:
        """Per file (path, size), the rows its entries count (computed once per index)."""
        return (
            self._distinct.select([PATH, SIZE, ROWS])
            .group_by([PATH, SIZE], use_threads=False)
            .aggregate([(ROWS, "sum")])
        )

    def prune(
        self, touched: Sequence[FileStat], ranges: Sequence[KeyRange]
    ) -> tuple[list[FileStat], set[str]]:
        """The files of `touched` a key of `ranges` may be in: every file without an exact
        entry, and those whose range for a prefix of `ranges` meets it. Also the paths the
        index had an exact entry for."""
        exact = self.exact(touched)
        if not exact:
            return list(touched), exact
        distinct = self._distinct
        entries = distinct.filter(pc.is_in(distinct.column(PATH), pa.array(sorted(exact))))
        meeting = self._meeting(entries, ranges)
        keep = [f for f in touched if f.path not in exact or f.path in meeting]
        return keep, exact

    def live(self, files: Sequence[FileStat]) -> pa.Table:
        """Each entry once, of the files of `files` it has an exact entry for: what a
        compacted index keeps (entries of files main no longer has, and of files whose
        entries do not add up, are dropped: those are read, and indexed again)."""
        exact = self.exact(files)
        kept = [f for f in files if f.path in exact]
        wanted = pa.table(
            {
                PATH: pa.array([f.path for f in kept], pa.string()),
                SIZE: pa.array([f.size for f in kept], pa.int64()),
            }
        )
        live = self._distinct.join(wanted, [PATH, SIZE], join_type="inner")
        return live.select(self.schema.names).cast(self.schema)

    def distinct_entries(self) -> int:
        return int(self._distinct.num_rows)

    def __len__(self) -> int:
        return int(self.entries.num_rows)

    def with_entries(self, entries: pa.Table) -> RangeIndex:
        """This index and `entries` (of files it had none for)."""
        return RangeIndex(pa.concat_tables([self.entries, entries]), self.key_schema)

    def _meeting(self, entries: pa.Table, ranges: Sequence[KeyRange]) -> set[str]:
        """The paths whose entry for a range's prefix overlaps the range's [low, high]."""
        prefix = _prefix_columns(self.key_schema.names)
        if not ranges or entries.num_rows == 0:
            return set()
        columns = {
            name: pa.array([r.prefix[i] for r in ranges], self.schema.field(name).type)
            for i, name in enumerate(prefix)
        }
        columns["r_low"] = pa.array([r.low for r in ranges], self.schema.field(LOW).type)
        columns["r_high"] = pa.array([r.high for r in ranges], self.schema.field(HIGH).type)
        wanted = pa.table(columns)
        if prefix:
            # the join itself never matches a NULL prefix: staging's keys are never NULL
            joined = entries.join(wanted, prefix, join_type="inner")
        else:
            joined = _cross(entries, wanted)
        overlap = pc.and_(
            pc.less_equal(joined.column(LOW), joined.column("r_high")),
            pc.greater_equal(joined.column(HIGH), joined.column("r_low")),
        )
        return set(joined.filter(pc.fill_null(overlap, False)).column(PATH).to_pylist())


def _cross(entries: pa.Table, ranges: pa.Table) -> pa.Table:
    """Every entry with every range (keys of one column: there is no prefix to join on)."""
    tables = []
    for row in range(ranges.num_rows):
        tables.append(
            entries.append_column(
                "r_low", pa.repeat(ranges.column("r_low")[row], entries.num_rows)
            ).append_column("r_high", pa.repeat(ranges.column("r_high")[row], entries.num_rows))
        )
    return pa.concat_tables(tables)


def within_boxes(keys: pa.Table, boxes: Sequence[Box]) -> pa.Table:
    """The rows of `keys` inside one of the boxes (what the scan's predicate keeps)."""
    if not boxes or keys.num_rows == 0:
        return keys.slice(0, 0)
    numbers = as_numbers(keys)
    mask = None
    for lows, highs in boxes:
        inside = None
        for name, low, high in zip(keys.column_names, lows, highs, strict=True):
            column = numbers.column(name)
            term = pc.and_(
                pc.greater_equal(column, pa.scalar(low, column.type)),
                pc.less_equal(column, pa.scalar(high, column.type)),
            )
            inside = term if inside is None else pc.and_(inside, term)
        mask = inside if mask is None else pc.or_(mask, inside)
    return keys.filter(pc.fill_null(mask, False))


def write(
    prefix: Prefix, entries: pa.Table, table_id: str, names: Sequence[str], version: int
) -> str:
    """One index file, created (never overwritten: a file of that name holds the same
    bytes); returns its name."""
    data = encode(entries, table_id, names, version)
    name = file_name(data, version)
    prefix.create(f"{KEY_INDEX_DIR}/{name}", data)
    return name
