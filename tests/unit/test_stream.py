import pyarrow as pa

from stagingmerge_merger import keysets
from stagingmerge_merger.stages import stream


def batches(rows, size):
    table = pa.table({"k": pa.array(rows, pa.int64()), "v": [f"v{r}" for r in rows]})
    return iter(table.to_batches(max_chunksize=size))


def test_pieces_cut_a_stream_into_commits_of_at_most_n_rows():
    pieces = stream.Pieces(batches(list(range(10)), 3), 4)
    got = []
    while (piece := pieces.next_piece()) is not None:
        got.append([v for b in piece for v in b["k"].to_pylist()])
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert stream.Pieces(iter([]), 4).next_piece() is None
    assert [stream.batch_count(n, 4) for n in (0, 1, 4, 5)] == [1, 1, 1, 2]


def test_rows_to_insert_keeps_new_keys_once_with_the_winning_copy():
    rows = pa.table({"k": pa.array([1, 2, 2, 3, 4], pa.int64()), "v": ["a", "z", "b", "c", "d"]})
    new = keysets.Members(pa.table({"k": pa.array([2, 3], pa.int64())}), ["k"])
    repeated = pa.table({"k": pa.array([2], pa.int64())})
    out = pa.Table.from_batches(
        list(stream.rows_to_insert(iter(rows.to_batches(2)), new, repeated, ["k"], ["v"]))
    )
    assert sorted(out.to_pylist(), key=lambda r: r["k"]) == [{"k": 2, "v": "b"}, {"k": 3, "v": "c"}]


def test_rows_are_filtered_in_chunks_bounded_by_rows_and_by_bytes():
    narrow = [t.num_rows for t in stream._chunks(batches(list(range(10)), 2), 4, 1 << 30)]
    assert narrow == [4, 4, 2]  # by rows: whole record batches until `rows` are gathered
    wide = pa.table({"k": pa.array(range(6), pa.int64()), "v": ["x" * 1000] * 6})
    by_bytes = [t.num_rows for t in stream._chunks(iter(wide.to_batches(1)), 100, 2500)]
    assert by_bytes == [3, 3]  # ~1 KB a row: 3 rows reach 2,500 bytes long before 100 rows


def test_members_built_from_an_index_make_their_table_only_when_asked():
    counted = keysets.count(pa.table({"u": ["a", "a", "b"], "k": [1, 2, 1]}), ["u", "k"])
    members = counted.without(pa.table({"u": ["a"], "k": [2]}), ["u", "k"])
    assert members.codes is not None and len(members) == 2
    assert members._keys is None  # a plain run never needs the table
    assert members.mask(pa.table({"u": ["a", "a", "b"], "k": [1, 2, 1]})).to_pylist() == [
        True,
        False,
        True,
    ]
    assert sorted(members.keys.to_pylist(), key=str) == [{"u": "a", "k": 1}, {"u": "b", "k": 1}]
