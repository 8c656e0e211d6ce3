"""shards.py's pure part: the split tiles the key space; `--shard` parsing."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from stagingmerge_merger import keyspace, shards
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.keyspace import Span
from tests.helpers import in_span

NAMES = ["source_url", "cert_index"]


def keys(pairs: list[tuple[str, int]]) -> pa.Table:
    return pa.table(
        {
            "source_url": pa.array([p[0] for p in pairs], pa.string()),
            "cert_index": pa.array([p[1] for p in pairs], pa.int64()),
        }
    )


@pytest.mark.parametrize("count", [1, 2, 3, 7, 50])
def test_every_key_falls_in_exactly_one_shard(count):
    rng = random.Random(count)
    pairs = [(f"log{rng.randrange(5)}", rng.randrange(1000)) for _ in range(2000)]
    cuts = shards.cuts_from_sample(keys(pairs), NAMES, count)
    spans = [shards.span_of(cuts, NAMES, shards.Shard(i, count)) for i in range(count)]
    probes = [*pairs, ("", -1), ("log9", 10**9), ("log0", 0)]
    for key in probes:
        assert sum(in_span(key, span) for span in spans) == 1, key
    sizes = [keyspace.within(keys(pairs), NAMES, span).num_rows for span in spans]
    assert sum(sizes) == len(pairs)
    assert max(sizes) <= len(pairs) // count + 2 * len(pairs) // 1000 + 1  # balanced


def test_few_distinct_keys_leave_some_shards_empty_but_still_tile():
    table = keys([("a", 1)] * 10 + [("b", 2)] * 10)
    cuts = shards.cuts_from_sample(table, NAMES, 5)
    spans = [shards.span_of(cuts, NAMES, shards.Shard(i, 5)) for i in range(5)]
    assert sum(shards.is_empty(s) for s in spans) >= 2
    for key in [("a", 1), ("b", 2), ("a", 0), ("c", 0)]:
        assert sum(in_span(key, s) for s in spans) == 1
    assert shards.clamp([Span()], spans[[shards.is_empty(s) for s in spans].index(True)]) == []


def test_spans_planned_inside_a_shard_are_closed_to_its_bounds():
    outer = Span(("a", 5), ("b", 0))
    inner = [Span(None, ("a", 9)), Span(("a", 9), None)]
    assert shards.clamp(inner, outer) == [Span(("a", 5), ("a", 9)), Span(("a", 9), ("b", 0))]
    assert shards.clamp([Span()], outer) == [outer]


def test_recorded_cuts_round_trip_with_their_types():
    table = pa.table({"d": pa.array([pa.scalar(1, pa.date32()).as_py()]), "n": [3]})
    data = shards.encode_cuts(table)
    assert shards.decode_cuts(data, table.schema).equals(table)
    with pytest.raises(InvalidInputError, match="rerun with --keys d,n, or delete"):
        shards.decode_cuts(data, pa.schema([("x", pa.int64()), ("n", pa.int64())]))
    assert shards.plan_id(data) == shards.plan_id(bytes(data)) != shards.plan_id(b"")


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "0/0", "0/1001", "1/2/3"])
def test_bad_shard_arguments_are_refused_with_the_rule(text):
    with pytest.raises(InvalidInputError, match="i/N with 0 <= i < N"):
        shards.parse_shard(text)


def test_the_shard_index_of_an_indexed_job_comes_from_its_environment():
    assert shards.shard_from_environment(4, {"JOB_COMPLETION_INDEX": "3"}) == shards.Shard(3, 4)
    assert str(shards.parse_shard(" 0/2 ")) == "0/2"
    with pytest.raises(InvalidInputError, match="JOB_COMPLETION_INDEX"):
        shards.shard_from_environment(4, {})


def test_within_is_the_span_predicate_row_by_row():
    rng = random.Random(7)
    table = pa.table(
        {
            "a": pa.array([rng.choice("xyz") for _ in range(3000)]),
            "b": pa.array([rng.randrange(5) for _ in range(3000)], pa.int64()),
            "c": pa.array([rng.randrange(50) for _ in range(3000)], pa.int32()),
        }
    )
    names = ["a", "b", "c"]
    rows = [tuple(r.values()) for r in table.to_pylist()]
    for span in [
        Span(("x", 2, 10), ("y", 1, 0)),
        Span(None, ("y", 0, 5)),
        Span(("z", 4, 49), None),
    ]:
        got = sorted(tuple(r.values()) for r in keyspace.within(table, names, span).to_pylist())
        assert got == sorted(r for r in rows if in_span(r, span))


def test_cuts_of_a_large_sample_come_from_a_subsample_and_stay_balanced():
    pairs = [(f"log{i % 3}", i) for i in range(200_000)]
    cuts = shards.cuts_from_sample(keys(pairs), NAMES, 4)
    spans = [shards.span_of(cuts, NAMES, shards.Shard(i, 4)) for i in range(4)]
    sizes = [keyspace.within(keys(pairs), NAMES, span).num_rows for span in spans]
    assert sum(sizes) == len(pairs) and max(sizes) < 1.02 * len(pairs) / 4
    exact = shards.cuts_from_sample(keys(list(reversed(pairs))), NAMES, 4, exact=True)
    assert exact.equals(shards.cuts_from_sample(keys(pairs), NAMES, 4, exact=True))
