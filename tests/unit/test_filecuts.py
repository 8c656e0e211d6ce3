"""filecuts.py: shard cuts from file statistics tile the key space, balance the rows, and
are refused whenever the statistics cannot place them."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from stagingmerge_merger import filecuts, shards
from stagingmerge_merger.filecuts import FileRange
from stagingmerge_merger.keyspace import Span
from tests.helpers import in_span

NAMES = ["source_url", "cert_index"]
SCHEMA = pa.schema([("source_url", pa.string()), ("cert_index", pa.int64())])


def files_of(runs: list[tuple[str, int, int]]) -> list[FileRange]:
    """One file per (log, first index, rows): a run of rising cert_index."""
    return [FileRange(rows, (log, first), (log, first + rows - 1)) for log, first, rows in runs]


def shard_rows(points, runs: list[tuple[str, int, int]], count: int) -> list[int]:
    """Each shard's rows, counted key by key over the files' actual keys."""
    cuts = pa.table({n: [p[i] for p in points] for i, n in enumerate(NAMES)}, schema=SCHEMA)
    spans = [shards.span_of(cuts, NAMES, shards.Shard(i, count)) for i in range(count)]
    counts = [0] * count
    for log, first, rows in runs:
        for index in range(first, first + rows):
            inside = [i for i, span in enumerate(spans) if in_span((log, index), span)]
            assert len(inside) == 1  # every key in exactly one shard
            counts[inside[0]] += 1
    return counts


@pytest.mark.parametrize("count", [2, 3, 4, 7])
def test_files_in_key_order_are_cut_evenly_by_interpolation(count):
    rng = random.Random(count)
    runs, first = [], 1000
    for _ in range(5):  # uneven files, with gaps between them
        rows = rng.randrange(50, 400)
        runs.append(("log00", first, rows))
        first += rows + rng.randrange(0, 20)
    points = filecuts.cuts_from_statistics(list(reversed(files_of(runs))), count, integer_last=True)
    assert points is not None and points == sorted(points)
    counts = shard_rows(points, runs, count)
    total = sum(r for _, _, r in runs)
    assert max(counts) <= filecuts.TOLERANCE * total / count + 1
    assert max(counts) - min(counts) <= total * 0.15  # gaps skew it a little, no more


def test_files_of_several_logs_cut_at_file_boundaries_when_they_balance():
    runs = [(f"log{n:02d}", 0, 100) for n in range(4)]
    points = filecuts.cuts_from_statistics(files_of(runs), 2, integer_last=False)
    assert points == [("log02", 0)]
    assert shard_rows(points, runs, 2) == [200, 200]


def test_a_lone_file_is_split_inside_only_over_an_integer_last_column():
    runs = [("log00", 0, 1000)]
    points = filecuts.cuts_from_statistics(files_of(runs), 4, integer_last=True)
    assert points == [("log00", 250), ("log00", 500), ("log00", 750)]
    assert filecuts.cuts_from_statistics(files_of(runs), 4, integer_last=False) is None


def test_statistics_that_cannot_balance_the_shards_are_refused():
    # three equal files, two shards, no interpolation: one shard would take two thirds
    runs = [(f"log{n}", 0, 100) for n in range(3)]
    assert filecuts.cuts_from_statistics(files_of(runs), 2, integer_last=False) is None
    # overlapping files: the order of rows across files is unknown
    overlapping = [FileRange(10, ("a", 0), ("c", 9)), FileRange(10, ("b", 0), ("d", 9))]
    assert filecuts.cuts_from_statistics(overlapping, 2, integer_last=True) is None
    assert filecuts.cuts_from_statistics([], 2, integer_last=True) is None


def test_ranges_come_from_the_log_statistics_or_not_at_all():
    stats = pa.table(
        {
            "num_records": [10, 0, 5],
            "min.source_url": ["a", "z", "b"],
            "max.source_url": ["a", "z", "b"],
            "min.cert_index": [0, 0, 3],
            "max.cert_index": [9, 0, 7],
        }
    )
    assert filecuts.ranges_of(stats, NAMES) == [  # the empty file is left out
        FileRange(10, ("a", 0), ("a", 9)),
        FileRange(5, ("b", 3), ("b", 7)),
    ]
    missing = stats.set_column(4, "max.cert_index", pa.array([9, 0, None], pa.int64()))
    assert filecuts.ranges_of(missing, NAMES) is None
    assert filecuts.ranges_of(stats.drop_columns(["num_records"]), NAMES) is None
    assert filecuts.usable_types(SCHEMA)
    assert not filecuts.usable_types(pa.schema([("d", pa.float64())]))


def test_rows_meeting_a_span_are_those_of_the_files_it_overlaps():
    files = files_of([("a", 0, 10), ("a", 10, 10), ("b", 0, 5)])  # a:0-9, a:10-19, b:0-4
    assert filecuts.rows_meeting(files, Span()) == 25
    assert filecuts.rows_meeting(files, Span(("a", 5), ("a", 10))) == 10  # high is open
    assert filecuts.rows_meeting(files, Span(("a", 9), ("a", 11))) == 20
    assert filecuts.rows_meeting(files, Span(("a", 20), None)) == 5
    assert filecuts.rows_meeting(files, Span(None, ("a", 0))) == 0
    # a file mixing the whole key space meets every span
    mixed = [FileRange(30, ("a", 0), ("b", 99))]
    assert filecuts.rows_meeting(mixed, Span(("a", 50), ("a", 51))) == 30
