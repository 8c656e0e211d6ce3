"""CodedKeys (sorted integers per prefix) against a plain Python set of tuples, on random
keys: one to three key columns, NULLs, several chunks, strings, dates and unsigned ints."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from stagingmerge_merger import keycodes, keysets

NAMES = {1: ["k"], 2: ["url", "k"], 3: ["url", "day", "k"]}


def random_keys(seed: int, width: int, rows: int, nulls: bool, kind: pa.DataType) -> pa.Table:
    rng = random.Random(seed)
    urls = [f"https://log{i}.example/" for i in range(rng.randint(1, 6))]
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(3)]

    def maybe(value: object) -> object:
        return None if nulls and rng.random() < 0.05 else value

    bits = kind.bit_width
    high = 2**bits - 1 if pa.types.is_unsigned_integer(kind) else 2 ** (bits - 1) - 1
    low = 0 if pa.types.is_unsigned_integer(kind) else -(2 ** (bits - 1))
    pool = [rng.randint(low, high) for _ in range(max(1, rows // 3))]  # copies are likely
    columns = {
        "url": pa.array([maybe(rng.choice(urls)) for _ in range(rows)], pa.string()),
        "day": pa.array([maybe(rng.choice(days)) for _ in range(rows)], pa.date32()),
        "k": pa.array([maybe(rng.choice(pool)) for _ in range(rows)], kind),
    }
    table = pa.table({n: columns[n] for n in NAMES[width]})
    return pa.concat_tables([table.slice(0, rows // 2), table.slice(rows // 2)])  # 2 chunks


def tuples(table: pa.Table, names: list[str]) -> list[tuple[object, ...]]:
    return list(zip(*(table[n].to_pylist() for n in names), strict=True))


CASES = [
    (seed, width, nulls, kind)
    for seed in range(4)
    for width in (1, 2, 3)
    for nulls in (False, True)
    for kind in (pa.int64(), pa.int32(), pa.uint64())
]


@pytest.mark.parametrize(("seed", "width", "nulls", "kind"), CASES)
def test_membership_counts_and_difference_match_a_set_of_tuples(seed, width, nulls, kind):
    names = NAMES[width]
    held = random_keys(seed, width, 300, nulls, kind)
    probe = random_keys(seed + 100, width, 200, nulls, kind).cast(held.schema)
    probe = pa.concat_tables([probe, held.slice(0, 50)])  # some hits for sure
    held_set = {t for t in tuples(held, names) if None not in t}

    index = keycodes.CodedKeys.of(held, names)
    assert index is not None and len(index) == len(held_set)
    found = index.contains(probe).tolist()
    assert found == [t in held_set and None not in t for t in tuples(probe, names)]
    assert keysets.Members(held, names).mask(probe).to_pylist() == found

    left = [t for t in tuples(probe, names)]
    anti = keysets.anti_join(probe, held, names)
    assert Counter(tuples(anti, names)) == Counter(t for t in left if t not in held_set)
    semi = keysets.semi_join(probe, held, names)
    assert Counter(tuples(semi, names)) == Counter(t for t in left if t in held_set)

    counts = Counter(tuples(held, names))
    distinct, repeated = keysets.distinct_and_repeated(held, names)
    assert Counter(tuples(distinct, names)) == Counter(set(counts))
    assert set(tuples(repeated, names)) == {t for t, n in counts.items() if n > 1}
    assert distinct.schema == held.schema

    if not nulls:
        counted = keysets.count(held, names)
        assert counted.codes is not None
        new = counted.without(probe, names)
        probe_set = set(tuples(probe, names))
        expected = {t for t in held_set if t not in probe_set}
        assert sorted(tuples(new.keys, names)) == sorted(expected)
        assert new.mask(held).to_pylist() == [t in expected for t in tuples(held, names)]


def test_keys_whose_last_column_is_not_an_integer_use_arrow_joins():
    keys = pa.table({"url": ["a", "b", "b"], "name": ["x", "y", "y"]})
    assert keycodes.CodedKeys.of(keys, ["url", "name"]) is None
    counted = keysets.count(keys, ["url", "name"])
    assert counted.codes is None and counted.repeated.to_pylist() == [{"url": "b", "name": "y"}]
    new = counted.without(pa.table({"url": ["a"], "name": ["x"]}), ["url", "name"])
    assert new.keys.to_pylist() == [{"url": "b", "name": "y"}]
    assert new.mask(keys).to_pylist() == [False, True, True]


def test_a_prefix_whose_keys_are_all_taken_away():
    names = ["log", "index"]
    keys = pa.table({"log": ["a", "b", "b"], "index": pa.array([1, 7, 8], pa.int64())})
    new = keysets.count(keys, names).without(keys.slice(0, 2), names)
    assert new.keys.to_pylist() == [{"log": "b", "index": 8}]
    assert new.mask(keys).to_pylist() == [False, False, True]
    index = keycodes.CodedKeys(
        ("log", "index"), {("a",): np.zeros(0, np.int64)}, np.dtype(np.int64)
    )
    assert index.contains(keys).tolist() == [False, False, False]


def test_prefixes_python_would_confuse_use_arrow_joins():
    # -0.0 == 0.0 in Python, two keys for Arrow; a float prefix is not held in an index
    keys = pa.table({"p": pa.array([0.0, -0.0]), "k": pa.array([1, 1], pa.int64())})
    assert keycodes.CodedKeys.of(keys, ["p", "k"]) is None
    assert len(keysets.count(keys, ["p", "k"])) == 2


def test_empty_tables():
    empty = pa.table({"url": pa.array([], pa.string()), "k": pa.array([], pa.int64())})
    index = keycodes.CodedKeys.of(empty, ["url", "k"])
    assert index is not None and len(index) == 0
    assert index.contains(empty).tolist() == []
    assert keysets.count(empty, ["url", "k"]).distinct.num_rows == 0
    some = pa.table({"url": ["a"], "k": pa.array([1], pa.int64())})
    assert keysets.count(some, ["url", "k"]).without(empty, ["url", "k"]).keys.num_rows == 1


@pytest.mark.parametrize(
    "values",
    [
        np.array([], dtype=bool),
        np.array([True, False, True] + [False] * 7 + [True]),  # spans two bytes of bits
        np.arange(10, dtype=np.int64)[::3],  # not contiguous
        np.array([0, 2**64 - 1], dtype=np.uint64),
        np.array([-5, 7], dtype=np.int32),
    ],
)
def test_arrow_of_equals_pyarrows_own_conversion(values):
    converted = keycodes.arrow_of(values)
    assert converted.equals(pa.array(values)) and converted.null_count == 0
