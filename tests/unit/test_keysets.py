import pyarrow as pa

from stagingmerge_merger import keysets
from stagingmerge_merger.predicates import KeyRange

NAMES = ["u", "i"]


def keys(pairs):
    return pa.table({"u": [p[0] for p in pairs], "i": pa.array([p[1] for p in pairs], pa.int64())})


def as_set(table):
    return set(keysets.key_tuples(table, NAMES))


def test_first_occurrence_wins():
    table = keysets.with_positions(keys([("a", 1), ("b", 1), ("a", 1), ("a", 2), ("b", 1)]), 10)
    first = keysets.first_occurrences(table, NAMES)
    got = {
        (u, i): p
        for u, i, p in zip(
            first["u"].to_pylist(),
            first["i"].to_pylist(),
            first[keysets.POSITION].to_pylist(),
            strict=True,
        )
    }
    assert got == {("a", 1): 10, ("b", 1): 11, ("a", 2): 13}
    assert first.column_names == [*NAMES, keysets.POSITION]


def test_anti_and_semi_join_partition_the_left_side():
    left = keys([("a", 1), ("a", 2), ("b", 3)])
    right = keys([("a", 2), ("c", 9), ("a", 2)])
    assert as_set(keysets.anti_join(left, right, NAMES)) == {("a", 1), ("b", 3)}
    assert as_set(keysets.semi_join(left, right, NAMES)) == {("a", 2)}
    assert keysets.semi_join(left, right, NAMES).num_rows == 1  # right's repeat is not doubled


def test_joins_with_an_empty_side():
    left = keys([("a", 1)])
    empty = keys([])
    assert as_set(keysets.anti_join(left, empty, NAMES)) == {("a", 1)}
    assert keysets.semi_join(left, empty, NAMES).num_rows == 0
    assert keysets.anti_join(empty, left, NAMES).num_rows == 0


def test_repeated_keys():
    assert as_set(keysets.repeated_keys(keys([("a", 1), ("a", 1), ("b", 1)]), NAMES)) == {("a", 1)}


def test_key_ranges_per_prefix():
    ranges = keysets.key_ranges(keys([("a", 5), ("b", 2), ("a", 1), ("a", 3)]), NAMES)
    assert sorted(ranges, key=lambda r: r.prefix) == [
        KeyRange(("a",), 1, 5),
        KeyRange(("b",), 2, 2),
    ]
    single = keysets.key_ranges(pa.table({"i": [4, 2, 9]}), ["i"])
    assert single == [KeyRange((), 2, 9)]
    assert keysets.key_ranges(keys([]), NAMES) == []


def test_winners_depend_on_content_not_order():
    from stagingmerge_merger.keysets import pick_winners, row_fingerprints

    rows = pa.table({"k": pa.array([1, 1, 2], pa.int64()), "v": ["x", "y", "z"], "t": [3, None, 1]})
    forward = pick_winners(rows, ["k"], ["t"]).to_pylist()
    backward = pick_winners(rows.take([2, 1, 0]), ["k"], ["t"]).to_pylist()
    assert sorted(forward, key=str) == sorted(backward, key=str)
    assert {r["k"]: r["v"] for r in forward} == {1: "x", 2: "z"}  # t=3 beats NULL (last)
    prints = row_fingerprints(rows)
    assert len(set(prints)) == 3 and prints == row_fingerprints(rows)
    by_fingerprint = pick_winners(rows, ["k"], []).to_pylist()
    assert {r["k"]: r["v"] for r in by_fingerprint}[1] == ("x" if prints[0] < prints[1] else "y")


def test_ranges_of_counted_keys_match_key_ranges_with_and_without_an_index():
    import datetime as dt

    cases = [
        (keys([("a", 5), ("b", 2), ("a", 1), ("a", 3), ("a", 5)]), NAMES),  # CodedKeys
        (pa.table({"i": pa.array([2**63 + 4, 7, 2**63 + 4], pa.uint64())}), ["i"]),  # CodedKeys
        (
            pa.table({"d": [dt.date(2026, 1, 2), dt.date(2026, 1, 1)], "i": [9, 4]}),
            ["d", "i"],
        ),  # CodedKeys, a date prefix
        (pa.table({"f": [0.5, 0.5, 1.5], "i": [3, 1, 2]}), ["f", "i"]),  # group_by
        (pa.table({"u": ["a", "a"], "s": ["y", "x"]}), ["u", "s"]),  # group_by
    ]
    for table, names in cases:
        expected = sorted(keysets.key_ranges(table, names), key=repr)
        counted = keysets.count(table, names)
        assert sorted(counted.ranges(), key=repr) == expected
        members = counted.without(table.slice(0, 0), names)
        assert sorted(members.ranges(), key=repr) == expected
        for r in counted.ranges():  # plain Python values: they are written into SQL
            assert type(r.low) is type(expected[0].low)
    taken = keysets.count(keys([("a", 1), ("a", 9), ("b", 4)]), NAMES).without(
        keys([("a", 9), ("b", 4)]), NAMES
    )
    assert taken.ranges() == [KeyRange(("a",), 1, 1)]  # what main holds is not a range
