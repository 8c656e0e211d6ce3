import base64

from stagingmerge_merger.sample import AS_DER_BYTES, ct_schema, ct_table, interleaved_keys


def test_rows_are_deterministic_and_realistic():
    logs, indexes = interleaved_keys(3, 4, first_index=100)
    assert list(zip(logs, indexes, strict=True))[:4] == [(0, 100), (1, 100), (2, 100), (0, 101)]
    a = ct_table(logs, indexes, seed=7)
    assert a.equals(ct_table(logs, indexes, seed=7))
    assert not a.equals(ct_table(logs, indexes, seed=8))
    assert a.schema == ct_schema() and a.num_columns == 20
    row = a.slice(4, 1).to_pylist()[0]
    assert len(base64.b64decode(row["as_der"])) == AS_DER_BYTES
    assert row["cert_link"].endswith(f"start={row['cert_index']}&end={row['cert_index']}")
    assert row["seen_date"] == row["seen"].strftime("%Y-%m-%d")
    assert row["all_domains"] == [
        row["subject_aggregated"][4:],
        "www." + row["subject_aggregated"][4:],
    ]
