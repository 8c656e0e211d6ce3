import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger import keyspace
from stagingmerge_merger.keyspace import KeySample, Span
from tests.helpers import in_span

NAMES = ("log", "index")
TYPES = {"log": "string", "index": "long"}


def keys(pairs):
    return pa.table(
        {"log": [p[0] for p in pairs], "index": pa.array([p[1] for p in pairs], pa.int64())}
    )


def test_sample_keeps_everything_up_to_its_cap_then_every_nth_row():
    sample = KeySample(cap=10)
    sample.add(keys([("a", i) for i in range(6)]))
    assert sample.stride == 1 and sample.table().num_rows == 6
    sample.add(keys([("a", i) for i in range(6, 30)]))
    assert sample.stride >= 2 and sample.table().num_rows <= 10
    assert sample.table()["index"].to_pylist() == list(range(0, 30, sample.stride))


def test_spans_cut_the_key_space_without_splitting_a_key():
    sample = keys([("a", 1)] * 5 + [("a", 2), ("b", 0), ("b", 1)])
    spans = keyspace.plan_spans(sample, NAMES, total_rows=8, batch_rows=2)
    assert spans[0].low is None and spans[-1].high is None
    pieces = keyspace.split_by_spans(sample, NAMES, spans)
    assert sum(p.num_rows for p in pieces) == 8
    for span, piece in zip(spans, pieces, strict=True):
        tuples = list(zip(piece["log"].to_pylist(), piece["index"].to_pylist(), strict=True))
        assert all(in_span(t, span) for t in tuples)
    # all five copies of ("a", 1) are in one span
    holding = [
        p for p in pieces if ("a", 1) in set(zip(*(p[n].to_pylist() for n in NAMES), strict=True))
    ]
    assert len(holding) == 1
    assert keyspace.plan_spans(sample, NAMES, total_rows=8, batch_rows=100) == [Span()]


def test_span_predicate_matches_in_span_exactly(tmp_path):
    pairs = [(log, i) for log in ("a", "b", "it's") for i in range(5)]
    write_deltalake(str(tmp_path), keys(pairs))
    table = DeltaTable(str(tmp_path))
    for span in (Span(("a", 3), ("b", 2)), Span(None, ("b", 0)), Span(("it's", 1), None), Span()):
        where = keyspace.span_predicate(NAMES, TYPES, span)
        got = pa.table(table.scan(predicate=where)) if where else pa.table(table.scan())
        found = sorted(zip(got["log"].to_pylist(), got["index"].to_pylist(), strict=True))
        assert found == sorted(p for p in pairs if in_span(p, span)), where


@pytest.mark.parametrize("span", [Span(("a",), None), Span(None, ("z",))])
def test_single_column_keys(span):
    where = keyspace.span_predicate(
        ("id",),
        {"id": "string"},
        Span(*(None if b is None else (b[0],) for b in (span.low, span.high))),
    )
    assert where is not None and '"id"' in where
