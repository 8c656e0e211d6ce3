"""The key-range index on its own: entries, the file format's integrity, and the one rule
that keeps it safe (a file is pruned only on an exact entry whose range misses every
staging range of its prefix), against plain Python sets."""

from __future__ import annotations

import datetime as dt
import itertools

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagingmerge_merger import rangeindex
from stagingmerge_merger.delta.files import FileStat
from stagingmerge_merger.keysets import key_ranges
from stagingmerge_merger.predicates import predicate_boxes

KEYS = pa.schema([pa.field("log", pa.string()), pa.field("index", pa.int64())])
TABLE_ID = "0f1e2d3c-0000-4000-8000-000000000001"


def keys(pairs: list[tuple[str, int]], schema: pa.Schema = KEYS) -> pa.Table:
    return pa.table(
        {schema.names[0]: [p for p, _ in pairs], schema.names[1]: [i for _, i in pairs]},
        schema=schema,
    )


def stat(path: str, rows: int | None, size: int = 100) -> FileStat:
    return FileStat(path, size, None, None, rows)


def index_of(files: dict[str, list[tuple[str, int]]]) -> rangeindex.RangeIndex:
    tables = [rangeindex.entries_of(stat(p, len(k)), keys(k), KEYS) for p, k in files.items()]
    return rangeindex.RangeIndex(pa.concat_tables(tables), KEYS)


def test_a_file_s_entries_are_per_prefix_min_max_and_count():
    pairs = [("a", 5), ("b", 9), ("a", 1), ("a", 3), ("b", 7)]
    entries = rangeindex.entries_of(stat("f", 5), keys(pairs), KEYS)
    got = sorted(entries.select(["p0", "low", "high", "rows"]).to_pylist(), key=lambda r: r["p0"])
    assert got == [
        {"p0": "a", "low": 1, "high": 5, "rows": 3},
        {"p0": "b", "low": 7, "high": 9, "rows": 2},
    ]
    assert set(entries.column("path").to_pylist()) == {"f"}


def test_dates_are_day_numbers_like_every_key_value_leaving_arrow():
    schema = pa.schema([pa.field("day", pa.date32()), pa.field("n", pa.int32())])
    table = pa.table({"day": [dt.date(1970, 1, 3)], "n": [4]}, schema=schema)
    entries = rangeindex.entries_of(stat("f", 1), table, schema)
    assert entries.column("p0").to_pylist() == [2]


def test_an_index_file_reads_back_only_whole_and_for_its_own_table():
    entries = index_of({"f": [("a", 1), ("b", 2)]}).entries
    data = rangeindex.encode(entries, TABLE_ID, KEYS.names, 7)
    name = rangeindex.file_name(data, 7)
    schema = rangeindex.entry_schema(KEYS)
    assert rangeindex.decode(name, data, TABLE_ID, KEYS.names, schema).equals(entries)
    with pytest.raises(ValueError, match="another table"):
        rangeindex.decode(name, data, "another-id", KEYS.names, schema)
    with pytest.raises(ValueError, match="another table"):
        rangeindex.decode(name, data, TABLE_ID, ["log", "other"], schema)
    for cut in (0, 1, len(data) // 2, len(data) - 1):  # half-written
        with pytest.raises((ValueError, pa.ArrowException)):
            rangeindex.decode(name, data[:cut], TABLE_ID, KEYS.names, schema)
    for at in range(0, len(data), 7):  # one byte changed anywhere
        changed = data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]
        with pytest.raises((ValueError, pa.ArrowException)):
            rangeindex.decode(name, changed, TABLE_ID, KEYS.names, schema)


def test_only_an_exact_entry_counts():
    index = index_of({"f": [("a", 1), ("a", 2)], "g": [("b", 3)]})
    files = [stat("f", 2), stat("g", 2), stat("h", 1), stat("f2", None)]
    # g's counts do not add up to the log's (a forged or foreign entry); h has none; f2's
    # log keeps no numRecords
    assert index.exact(files) == {"f"}
    assert index.exact([FileStat("f", 101, None, None, 2)]) == set()  # same path, other size


def test_a_file_indexed_twice_is_still_exact():
    index = index_of({"f": [("a", 1), ("b", 2)]})
    twice = rangeindex.RangeIndex(pa.concat_tables([index.entries, index.entries]), KEYS)
    assert twice.exact([stat("f", 2)]) == {"f"}


def miscount(entries: pa.Table) -> pa.Table:
    """Entries whose row counts no longer add up to the file's (forged, or another file's)."""
    rows = entries.column("rows").to_pylist()
    rows[0] += 1
    at = entries.schema.get_field_index("rows")
    return entries.set_column(at, entries.schema.field(at), pa.array(rows, pa.int64()))


pairs = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=40))


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(st.lists(pairs, min_size=1, max_size=15), min_size=1, max_size=6),
    staging=st.lists(pairs, min_size=1, max_size=10),
    indexed=st.lists(st.booleans(), min_size=6, max_size=6),
    miscounted=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_pruning_never_drops_a_file_that_holds_a_staging_key(files, staging, indexed, miscounted):
    """Whatever the index holds (entries for some files, wrong counts for others), every
    file that holds a key within staging's ranges is kept; and a file is pruned only when
    it holds none."""
    names = {f"file{i}": k for i, k in enumerate(files)}
    entries = [
        miscount(rangeindex.entries_of(stat(p, len(k)), keys(k), KEYS)) if miscounted[i]
        else rangeindex.entries_of(stat(p, len(k)), keys(k), KEYS)
        for i, (p, k) in enumerate(names.items())
        if indexed[i]
    ]  # fmt: skip
    index = rangeindex.RangeIndex(
        pa.concat_tables(entries) if entries else rangeindex.entry_schema(KEYS).empty_table(),
        KEYS,
    )
    touched = [stat(p, len(k)) for p, k in names.items()]
    ranges = key_ranges(keys(staging), KEYS.names)
    kept, _ = index.prune(touched, ranges)
    kept_paths = {f.path for f in kept}
    inside = {(r.prefix[0], v) for r in ranges for v in range(r.low, r.high + 1)}
    for path, held in names.items():
        if inside & set(held):
            assert path in kept_paths
    for path in set(names) - kept_paths:  # pruned: indexed exactly, and holds nothing in range
        i = int(path.removeprefix("file"))
        assert indexed[i] and not miscounted[i] and not inside & set(names[path])


def test_keys_of_one_column_prune_by_the_file_s_range():
    schema = pa.schema([pa.field("n", pa.int64())])
    entries = [
        rangeindex.entries_of(stat(p, len(v)), pa.table({"n": v}, schema=schema), schema)
        for p, v in {"low": [1, 5], "high": [50, 60]}.items()
    ]
    index = rangeindex.RangeIndex(pa.concat_tables(entries), schema)
    ranges = key_ranges(pa.table({"n": [52, 55]}, schema=schema), ["n"])
    kept, exact = index.prune([stat("low", 2), stat("high", 2)], ranges)
    assert [f.path for f in kept] == ["high"] and exact == {"low", "high"}


def test_within_boxes_keeps_what_the_scan_predicate_keeps():
    table = keys([("a", 1), ("a", 5), ("b", 5), ("c", 9)])
    ranges = key_ranges(keys([("a", 4), ("a", 6), ("c", 9)]), KEYS.names)
    kept = rangeindex.within_boxes(table, predicate_boxes(KEYS.names, ranges))
    got = zip(kept["log"].to_pylist(), kept["index"].to_pylist(), strict=True)
    assert sorted(got) == [("a", 5), ("c", 9)]


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(-(10**6), 10**6)),
        min_size=1,
        max_size=60,
    ),
    cuts=st.lists(st.integers(1, 59), max_size=5),
)
def test_a_file_s_entries_from_its_row_groups_equal_those_from_the_whole_file(pairs, cuts):
    """A file is indexed a row group at a time (memory holds one row group's keys): the
    entries combined from its parts are the entries of the whole file."""
    bounds = sorted({0, len(pairs), *(c for c in cuts if c < len(pairs))})
    parts = [
        rangeindex.entries_of(stat("f", len(pairs)), keys(pairs[a:b]), KEYS)
        for a, b in itertools.pairwise(bounds)
    ]
    combined = rangeindex.combine(parts, KEYS)
    whole = rangeindex.entries_of(stat("f", len(pairs)), keys(pairs), KEYS)
    assert combined.schema.equals(whole.schema)
    assert combined.sort_by("p0").equals(whole.sort_by("p0"))
    assert rangeindex.RangeIndex(combined, KEYS).exact([stat("f", len(pairs))]) == {"f"}


def test_keys_of_one_column_combine_to_one_entry():
    schema = pa.schema([pa.field("n", pa.int64())])
    table = pa.table({"n": [5, -2, 9]}, schema=schema)
    parts = [rangeindex.entries_of(stat("f", 3), table.slice(i, 1), schema) for i in range(3)]
    combined = rangeindex.combine(parts, schema).to_pylist()
    assert combined == [{"path": "f", "size": 100, "low": -2, "high": 9, "rows": 3}]
