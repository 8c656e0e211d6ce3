import pyarrow as pa

from stagingmerge_merger import keysets, selection


def batches(rows, size):
    table = pa.table({"k": pa.array(rows, pa.int64()), "v": [f"v{r}" for r in rows]})
    return iter(table.to_batches(max_chunksize=size))


def test_pieces_cut_a_stream_into_commits_of_at_most_n_rows():
    pieces = selection.Pieces(batches(list(range(10)), 3), 4)
    got = []
    while (piece := pieces.next_piece()) is not None:
        got.append([v for b in piece for v in b["k"].to_pylist()])
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert selection.Pieces(iter([]), 4).next_piece() is None
    assert [selection.batch_count(n, 4) for n in (0, 1, 4, 5)] == [1, 1, 1, 2]


def test_rows_to_insert_keeps_new_keys_once_with_the_winning_copy():
    rows = pa.table({"k": pa.array([1, 2, 2, 3, 4], pa.int64()), "v": ["a", "z", "b", "c", "d"]})
    new = keysets.Members(pa.table({"k": pa.array([2, 3], pa.int64())}), ["k"])
    repeated = pa.table({"k": pa.array([2], pa.int64())})
    out = pa.Table.from_batches(
        list(selection.rows_to_insert(iter(rows.to_batches(2)), new, repeated, ["k"], ["v"]))
    )
    assert sorted(out.to_pylist(), key=lambda r: r["k"]) == [{"k": 2, "v": "b"}, {"k": 3, "v": "c"}]
