"""The concurrent-writer guard (commits.py) on its own, against main histories this test
writes: another writer's commit lands exactly where the test puts it (before the span's
first commit, or between a catch-up and our commit), in one process, deterministically.
The same guard under real concurrency is in tests/integration/test_concurrency.py and,
with Spark as the other writer, tests/spark/test_spark_writes_meanwhile.py.

main is a real Delta table on local disk (delta-rs writes it, as in production); only
the moment the other writer commits is the test's choice."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger import keysets, predicates
from stagingmerge_merger.contract import MergeMetrics
from stagingmerge_merger.delta import Table, plain_schema
from stagingmerge_merger.reporting import BatchResult
from stagingmerge_merger.stages import stream
from stagingmerge_merger.stages.commits import MainWriter, SpanKeys, Target, Versions
from stagingmerge_merger.storage import parse_location

KEYS = ("log", "index")
SCHEMA = pa.schema([pa.field("log", pa.string()), pa.field("index", pa.int64()),
                    pa.field("by", pa.string())])  # fmt: skip


def rows(indexes: range | list[int], by: str) -> pa.Table:
    indexes = list(indexes)
    return pa.table([["a"] * len(indexes), indexes, [by] * len(indexes)], schema=SCHEMA)


# --- Versions: whose commits are whose ------------------------------------------------


def test_our_setup_commits_next_to_what_is_known_are_ours():
    v = Versions.at(-1)  # no main yet
    v.own(0)  # we created it
    v.own(1)  # and declared its features
    assert (v.seen, v.counted) == (1, 1)
    assert v.committed(2) == 0 and not v.behind(2)


def test_a_setup_commit_after_another_writer_s_is_not_taken_for_the_gap():
    v = Versions.at(0)
    v.own(2)  # version 1 is someone else's: it must still be caught up with
    assert v.behind(2) and v.others_since_ours(2) == 2


def test_commits_landing_between_the_catch_up_and_ours_are_late():
    v = Versions.at(3)
    assert v.behind(5) and v.others_since_ours(5) == 2
    v.caught_up(5)
    assert v.committed(8) == 2  # 6 and 7 landed after the catch-up
    assert v.seen == 5  # the next catch-up reads them
    assert v.others_since_ours(9) == 1


def test_our_own_commit_whose_answer_was_lost_is_not_another_writer_s():
    v = Versions.at(4)
    assert v.committed(6, ours=1) == 0  # 5 was this batch, applied and its answer lost
    assert v.seen == 6
    v = Versions.at(4)
    assert v.committed(7, ours=1) == 1  # 5 ours, 6 another writer's
    assert v.seen == 4


# --- MainWriter: catch-up, late commits, repair -------------------------------------------


class Main(Table):
    """A Table whose next append lets another writer commit first (`before_next`)."""

    before_next: Callable[[], None] | None = None

    def append(self, batches, schema, metadata):  # type: ignore[no-untyped-def]
        if self.before_next is not None:
            hook, self.before_next = self.before_next, None
            hook()
        return super().append(batches, schema, metadata)


def writer_for(main: Path, tmp_path: Path) -> tuple[MainWriter, MergeMetrics, Main]:
    location = parse_location(str(main))
    table = Main.open(location, {})
    (tmp_path / "staging").mkdir(exist_ok=True)  # where a repair owed is recorded
    goal = Target(
        main=location,
        staging=parse_location(str(tmp_path / "staging")),
        options={},
        keys=KEYS,
        key_types={"log": "string", "index": "long"},
        key_schema=pa.schema([SCHEMA.field("log"), SCHEMA.field("index")]),
        create_as=None,
        partition_by=[],
        shard=None,
    )
    metrics = MergeMetrics()
    writer = MainWriter(
        goal, table, plain_schema(table.arrow_schema()), metrics, lambda: None, table.columns()
    )
    return writer, metrics, table


def merge_span(writer: MainWriter, staged: pa.Table, batch_rows: int) -> list[BatchResult]:
    """What the engine does for one span, with main's keys read now."""
    counted = keysets.count(staged.select(list(KEYS)), KEYS)
    base = writer.refresh(reopen=False)
    wanted = counted.without(writer.keys_within(counted.ranges()), KEYS)
    new = staged.filter(wanted.mask(staged.select(list(KEYS))))
    results: list[BatchResult] = []
    writer.commit_span(
        stream.Pieces(iter(new.to_batches(max_chunksize=batch_rows)), batch_rows),
        SpanKeys(wanted, base),
        stream.SpanTally(rows=staged.num_rows, distinct=len(counted)),
        results.append,
        lambda: None,
    )
    return results


def main_rows(main: Path) -> Counter[tuple[int, str]]:
    read = DeltaTable(str(main)).to_pyarrow_table()
    return Counter(zip(read["index"].to_pylist(), read["by"].to_pylist(), strict=True))


@pytest.fixture
def main(tmp_path: Path) -> Path:
    path = tmp_path / "main"
    write_deltalake(str(path), rows(range(0, 10), "main"))
    return path


def test_alone_every_commit_is_ours_and_nothing_is_read_back(main, tmp_path):
    writer, metrics, _ = writer_for(main, tmp_path)
    results = merge_span(writer, rows(range(5, 25), "us"), batch_rows=5)
    assert [r.version for r in results] == [1, 2, 3]
    assert sum(r.concurrent_commits for r in results) == 0
    assert (metrics.main_key_scans, metrics.main_files_caught_up) == (1, 0)
    assert main_rows(main) == Counter(
        {(i, "main") for i in range(10)} | {(i, "us") for i in range(10, 25)}
    )


def test_keys_another_writer_added_before_a_commit_are_left_out(main, tmp_path):
    """Caught up from the one file the other writer added: no key twice, no repair."""
    writer, metrics, _ = writer_for(main, tmp_path)
    staged = rows(range(10, 30), "us")
    counted = keysets.count(staged.select(list(KEYS)), KEYS)
    base = writer.refresh(reopen=False)
    wanted = counted.without(writer.keys_within(counted.ranges()), KEYS)
    write_deltalake(str(main), rows(range(20, 25), "them"), mode="append")  # after our read
    results: list[BatchResult] = []
    writer.commit_span(
        stream.Pieces(iter(staged.to_batches(max_chunksize=10)), 10),
        SpanKeys(wanted, base),
        stream.SpanTally(rows=20, distinct=20),
        results.append,
        lambda: None,
    )
    got = main_rows(main)
    assert all(n == 1 for n in got.values())
    assert {i for i, by in got if by == "them"} == set(range(20, 25))
    assert sum(r.inserted for r in results) == 15
    assert metrics.main_files_caught_up == 1 and metrics.duplicates_repaired == 0
    assert sum(r.concurrent_commits for r in results) == 1
    assert results[-1].skipped_existing == 5  # the tally counts them as already in main


def test_a_late_commit_of_the_same_keys_is_repaired_to_the_copy_there_first(main, tmp_path):
    """The other writer commits between our catch-up and our commit: both copies land;
    the late files are read, the clash found, and our copies rewritten to theirs."""
    writer, metrics, table = writer_for(main, tmp_path)
    table.before_next = lambda: write_deltalake(
        str(main), rows(range(12, 16), "them"), mode="append"
    )
    results = merge_span(writer, rows(range(10, 20), "us"), batch_rows=10)
    got = main_rows(main)
    assert all(n == 1 for n in got.values()), got
    assert {i for i, by in got if by == "them"} == set(range(12, 16))
    assert results[0].repaired == 4  # (the engine adds the results up into the metrics)
    assert (metrics.main_files_caught_up, metrics.main_key_scans) == (1, 2)  # + the repair's
    assert results[0].inserted == 6  # a repaired key's copy is theirs
    assert results[0].concurrent_commits == 1


@pytest.mark.parametrize(
    ("theirs", "read"),
    [([11, 13, 15], 1), ([100, 101], 0)],
    ids=["inside our ranges", "outside them"],
)
def test_a_late_commit_of_other_keys_needs_no_repair_scan(main, tmp_path, theirs, read):
    """Their file is read only when its statistics meet our ranges (then it shows no key
    of ours); either way no scan of main's key ranges follows."""
    writer, metrics, table = writer_for(main, tmp_path)
    table.before_next = lambda: write_deltalake(str(main), rows(theirs, "them"), mode="append")
    results = merge_span(writer, rows(range(10, 30, 2), "us"), batch_rows=10)
    assert metrics.main_key_scans == 1  # the span's own read only: no repair scan
    assert metrics.main_files_caught_up == read and metrics.duplicates_repaired == 0
    assert results[0].inserted == 10 and results[0].concurrent_commits == 1
    assert all(n == 1 for n in main_rows(main).values())


def test_a_main_the_run_creates_counts_no_commit_as_another_writer_s(tmp_path):
    """Created empty, its implied `invariants` feature declared in the next commit: both
    ours, so the first batch sees no concurrent commit and reads nothing back."""
    staging_schema = pa.schema([pa.field("log", pa.string(), False),
                                pa.field("index", pa.int64(), False),
                                pa.field("at", pa.timestamp("us"))])  # fmt: skip
    source = tmp_path / "source"
    staged = pa.table(
        [["a"] * 4, list(range(4)), [dt.datetime(2026, 1, 1)] * 4], schema=staging_schema
    )
    write_deltalake(str(source), staged)  # timestamp without zone: timestamp_ntz
    staging = Table.open(parse_location(str(source)), {})
    location = parse_location(str(tmp_path / "main"))
    goal = Target(location, parse_location(str(source)), {}, KEYS,
                  {"log": "string", "index": "long"},
                  pa.schema([staging_schema.field("log"), staging_schema.field("index")]),
                  staging.plain_delta_schema(), [], None)  # fmt: skip
    metrics = MergeMetrics()
    writer = MainWriter(
        goal, None, plain_schema(staging.arrow_schema()), metrics, lambda: None, staging.columns()
    )
    counted = keysets.count(staged.select(list(KEYS)), KEYS)
    results: list[BatchResult] = []
    writer.commit_span(
        stream.Pieces(iter(staged.to_batches()), 10),
        SpanKeys(
            counted.without(writer.keys_within(counted.ranges()), KEYS), writer.refresh(False)
        ),
        stream.SpanTally(rows=4, distinct=4),
        results.append,
        lambda: None,
    )
    created = DeltaTable(str(tmp_path / "main"))
    assert "invariants" in (created.protocol().writer_features or [])
    assert [r.version for r in results] == [2] and results[0].concurrent_commits == 0
    assert metrics.main_created and metrics.main_key_scans == 0
    assert created.to_pyarrow_table().num_rows == 4


def test_the_predicate_of_a_span_is_what_keys_within_reads(main, tmp_path):
    """keys_within reads main's keys in the ranges only (delta-rs prunes with them)."""
    writer, _, _ = writer_for(main, tmp_path)
    ranges = plan_ranges([("a", 3, 5)])
    got = writer.keys_within(ranges)
    assert sorted(got["index"].to_pylist()) == [3, 4, 5]


def plan_ranges(spans: list[tuple[str, int, int]]) -> list[predicates.KeyRange]:
    table = pa.table({"log": [s[0] for s in spans for _ in (0, 1)],
                      "index": [v for s in spans for v in (s[1], s[2])]})  # fmt: skip
    return keysets.key_ranges(table, KEYS)
