"""Delta features on staging and main, each checked row by row against the expected union,
then rerun (idempotent: no new version, same rows).

Tables deltalake writes itself (column mapping, partition values of every type, CDF,
appendOnly, constraints, generated columns, timestamp_ntz) are written with deltalake; the
ones it cannot write (deletion vectors, v2 checkpoints, cleaned-up logs, INT96 files) are
built by tests/delta_fixtures.py exactly as the protocol says, and each fixture is first
checked against delta-rs's own reading of it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, Field, Schema, write_deltalake

from stagingmerge_merger.contract import MergeMetrics
from stagingmerge_merger.engine import MergeRequest, run_merge
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.storage import parse_location
from tests import delta_fixtures
from tests.helpers import read, run_cli, winners

KEYS = ("log", "index")


def staged(logs: Sequence[str], indexes: Sequence[int], **columns: Any) -> pa.Table:
    data: dict[str, Any] = {
        "log": pa.array(logs, pa.string()),
        "index": pa.array(indexes, pa.int64()),
        # every row differs, copies of a key included: the rule has something to decide
        "payload": pa.array(
            [f"{lg}-{i}-row{n}" for n, (lg, i) in enumerate(zip(logs, indexes, strict=True))]
        ),
    }
    data.update(columns)
    return pa.table(data)


def expected(main_rows: pa.Table | None, staging_rows: pa.Table, first_by=()) -> list[dict]:
    have = (
        set(zip(main_rows["log"].to_pylist(), main_rows["index"].to_pylist(), strict=True))
        if main_rows is not None
        else set()
    )
    chosen = sorted(i for k, i in winners(staging_rows, KEYS, first_by).items() if k not in have)
    result = (main_rows.to_pylist() if main_rows is not None else []) + staging_rows.take(
        chosen
    ).to_pylist()
    return sorted(result, key=lambda r: (r["log"], r["index"]))


def main_rows(path: Path) -> list[dict]:
    return sorted(read(DeltaTable(str(path))).to_pylist(), key=lambda r: (r["log"], r["index"]))


def merge(main: Path, staging: Path, **kwargs: Any) -> MergeMetrics:
    request = MergeRequest(
        main=parse_location(str(main)),
        staging=parse_location(str(staging)),
        keys=KEYS,
        keep_staging=kwargs.pop("keep_staging", True),
        **kwargs,
    )
    return run_merge(request, MergeMetrics())


def merge_exactly(main: Path, staging: Path, want: list[dict], **kwargs: Any) -> MergeMetrics:
    """Merge, compare row by row, rerun: the rerun inserts nothing and commits nothing."""
    first = merge(main, staging, **kwargs)
    assert main_rows(main) == want
    version = DeltaTable(str(main)).version()
    again = merge(main, staging, **kwargs)
    assert again.inserted == 0 and DeltaTable(str(main)).version() == version
    assert main_rows(main) == want
    dry = merge(main, staging, dry_run=True, **kwargs)
    assert (dry.inserted, dry.skipped_existing, dry.skipped_duplicates) == (
        again.inserted,
        again.skipped_existing,
        again.skipped_duplicates,
    )
    return first


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "main", tmp_path / "staging"


# --- column mapping --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["name", "id"])
def test_column_mapped_staging_into_an_existing_main(paths, mode):
    main, staging = paths
    main_data = staged(["a", "b"], [1, 1], day=pa.array(["d0", "d0"]))
    write_deltalake(str(main), main_data)
    rows = staged(["a", "a", "b", "c", "c"], [1, 2, 2, 3, 3], day=pa.array(["d1"] * 5))
    write_deltalake(
        str(staging), rows, partition_by=["day"], configuration={"delta.columnMapping.mode": mode}
    )
    m = merge_exactly(main, staging, expected(main_data, rows))
    assert (m.inserted, m.skipped_existing, m.skipped_duplicates) == (3, 1, 1)


@pytest.mark.parametrize("mode", ["name", "id"])
def test_column_mapped_staging_creates_a_plain_main(paths, mode):
    main, staging = paths
    rows = staged(["a", "b", "b"], [1, 2, 2])
    write_deltalake(str(staging), rows, configuration={"delta.columnMapping.mode": mode})
    merge_exactly(main, staging, expected(None, rows))
    assert "delta.columnMapping.mode" not in DeltaTable(str(main)).metadata().configuration


def test_plain_staging_into_a_column_mapped_main(paths):
    main, staging = paths
    main_data = staged(["a"], [1])
    write_deltalake(str(main), main_data, configuration={"delta.columnMapping.mode": "name"})
    rows = staged(["a", "b"], [1, 7])
    write_deltalake(str(staging), rows)
    merge_exactly(main, staging, expected(main_data, rows))


# --- partition values ----------------------------------------------------------------

UTC = dt.UTC
PARTITION_VALUES = {
    "string": pa.array(["", None, "a b:c%+é/=&?#", "x", "", "x"], pa.string()),
    "long": pa.array([0, None, -5, 2**40, 0, 7], pa.int64()),
    "int": pa.array([0, None, -5, 7, 0, 7], pa.int32()),
    "short": pa.array([0, None, -5, 7, 0, 7], pa.int16()),
    "byte": pa.array([0, None, -5, 7, 0, 7], pa.int8()),
    "boolean": pa.array([True, None, False, True, True, False], pa.bool_()),
    "date": pa.array(
        [dt.date(2025, 1, 1), None, dt.date(1970, 1, 1), dt.date(9999, 12, 31)] * 1
        + [dt.date(2025, 1, 1), dt.date(2025, 1, 2)],
        pa.date32(),
    ),
    "timestamp": pa.array(
        [
            dt.datetime(2025, 1, 1, 12, 30, 5, tzinfo=UTC),
            None,
            dt.datetime(1970, 1, 1, tzinfo=UTC),
            dt.datetime(2025, 11, 3, 23, 59, 59, 123456, tzinfo=UTC),
            dt.datetime(2025, 1, 1, 12, 30, 5, tzinfo=UTC),
            dt.datetime(2025, 1, 1, 12, 30, 6, tzinfo=UTC),
        ],
        pa.timestamp("us", tz="UTC"),
    ),
    "timestamp_ntz": pa.array(
        [
            dt.datetime(2025, 1, 1, 12, 30, 5),
            None,
            dt.datetime(1970, 1, 1),
            dt.datetime(2025, 11, 3, 0, 0, 1),
            dt.datetime(2025, 1, 1, 12, 30, 5),
            dt.datetime(2025, 1, 1),
        ],
        pa.timestamp("us"),
    ),
    "decimal": pa.array(
        [decimal.Decimal(v) if v else None for v in ["1.50", None, "3.25", "0.00", "1.50", "9.99"]],
        pa.decimal128(10, 2),
    ),
    "double": pa.array([1.5, None, -0.5, 1e10, 1.5, 2.0], pa.float64()),
    "float": pa.array([1.5, None, -2.0, 3.25, 1.5, 2.0], pa.float32()),
}


@pytest.mark.parametrize("kind", sorted(PARTITION_VALUES))
@pytest.mark.parametrize("main_partitioned", [False, True], ids=["plain main", "same partitioning"])
def test_partition_values_of_every_type(paths, kind, main_partitioned):
    """'' stays '', NULL stays NULL, escaping-needing values (spaces, ':', '%', '+', non-ASCII,
    every timestamp) come back exact, and the rule picks winners across partitions."""
    main, staging = paths
    values = PARTITION_VALUES[kind]
    main_data = staged(["a"], [0], p=values.slice(0, 1))
    write_deltalake(str(main), main_data, partition_by=["p"] if main_partitioned else None)
    # keys 1 and 2 twice, in different partitions; key 0 already in main
    rows = staged(["a", "a", "a", "a", "a", "a"], [0, 1, 2, 3, 1, 2], p=values)
    write_deltalake(str(staging), rows.slice(0, 3), partition_by=["p"])
    write_deltalake(str(staging), rows.slice(3), mode="append")
    m = merge_exactly(main, staging, expected(main_data, rows), batch_rows=2)
    assert (m.inserted, m.skipped_existing, m.skipped_duplicates) == (3, 1, 2)


def test_binary_partition_values_are_refused_before_writing(paths):
    """deltalake reads a binary partition value back as its escaped text: refuse it."""
    main, staging = paths
    rows = staged(["a", "b"], [1, 2], p=pa.array([b"\x00\xff", b"x"], pa.binary()))
    write_deltalake(str(staging), rows, partition_by=["p"])
    with pytest.raises(InvalidInputError, match="binary partition columns"):
        merge(main, staging)
    assert not main.exists()


def test_negative_decimals_into_a_decimal_partitioned_main_are_refused(paths):
    main, staging = paths
    kind = pa.decimal128(10, 2)
    write_deltalake(
        str(main),
        staged(["a"], [0], p=pa.array([decimal.Decimal("1.00")], kind)),
        partition_by=["p"],
    )
    rows = staged(
        ["a", "b"], [1, 2], p=pa.array([decimal.Decimal("-3.25"), decimal.Decimal("2.00")], kind)
    )
    write_deltalake(str(staging), rows)
    before = DeltaTable(str(main)).version()
    with pytest.raises(
        InvalidInputError, match=r"negative value in decimal partition column p \(.*\): 1 rows"
    ):
        merge(main, staging)
    assert DeltaTable(str(main)).version() == before


# --- deletion vectors, checkpoints, files from other engines -----------------------------


def test_deletion_vectors_on_staging_are_applied(paths):
    main, staging = paths
    main_data = staged(["a"], [0])
    write_deltalake(str(main), main_data)
    rows = staged(["a"] * 6 + ["b"] * 4, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    write_deltalake(str(staging), rows.slice(0, 6))
    write_deltalake(str(staging), rows.slice(6), mode="append")  # one file: b:0..3
    deleted = delta_fixtures.delete_rows_with_vectors(staging, {0: [1, 3]})  # b:1, b:3
    assert deleted == 2
    live = rows.take([0, 1, 2, 3, 4, 5, 6, 8])
    got = read(DeltaTable(str(staging))).sort_by([("log", "ascending"), ("index", "ascending")])
    assert (
        got.to_pylist() == live.sort_by([("log", "ascending"), ("index", "ascending")]).to_pylist()
    )
    m = merge_exactly(main, staging, expected(main_data, live))
    assert m.staging_rows == 8


def test_a_deleted_copy_never_wins(paths):
    """The copy --first-by would pick is deleted (by a deletion vector): the other wins."""
    main, staging = paths
    rows = staged(["a", "a"], [1, 1], rank=pa.array([1, 0], pa.int64()))
    write_deltalake(str(staging), rows.slice(0, 1))
    write_deltalake(str(staging), rows.slice(1), mode="append")  # rank 0, in the last commit
    delta_fixtures.delete_rows_with_vectors(staging, {0: [0]})
    merge_exactly(main, staging, expected(None, rows.slice(0, 1)), first_by=("rank",))


def test_v2_checkpoint_and_no_commits_before_it(paths):
    main, staging = paths
    rows = staged(["a", "b", "c", "c"], [1, 2, 3, 3])
    for part in range(4):
        write_deltalake(str(staging), rows.slice(part, 1), mode="append")
    delta_fixtures.v2_checkpoint_without_commits(staging)
    assert "v2Checkpoint" in (DeltaTable(str(staging)).protocol().reader_features or [])
    merge_exactly(main, staging, expected(None, rows))


def test_checkpoint_with_the_log_before_it_cleaned_up(paths):
    main, staging = paths
    rows = staged(["a", "b", "b"], [1, 2, 2])
    for part in range(3):
        write_deltalake(str(staging), rows.slice(part, 1), mode="append")
    delta_fixtures.cleaned_up_log(staging)
    assert not (staging / "_delta_log" / f"{0:020d}.json").exists()
    merge_exactly(main, staging, expected(None, rows))


def test_int96_timestamps_at_the_end_of_time(paths):
    """Files another engine wrote with INT96 timestamps, up to 9999-12-31 23:59:59."""
    main, staging = paths
    times = [dt.datetime(2024, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)]
    data = pa.table(
        {
            "log": ["a", "b"],
            "index": pa.array([1, 2], pa.int64()),
            "ts": pa.array(times, pa.timestamp("us")),
        }
    )
    fields = [
        {"name": "log", "type": "string", "nullable": True, "metadata": {}},
        {"name": "index", "type": "long", "nullable": True, "metadata": {}},
        {"name": "ts", "type": "timestamp", "nullable": True, "metadata": {}},
    ]
    delta_fixtures.table_from_parquet(staging, fields, [data], use_deprecated_int96_timestamps=True)
    utc = [t.replace(tzinfo=UTC) for t in times]
    want = [{"log": "a", "index": 1, "ts": utc[0]}, {"log": "b", "index": 2, "ts": utc[1]}]
    merge_exactly(main, staging, want)


# Protocols as Spark and Databricks write them: table features delta-rs reads (row tracking
# and liquid clustering are writer features, column mapping a reader feature too), each on
# a staging table with repeated keys.
SPARK_PROTOCOLS = {
    "column mapping as a reader feature": (
        ["columnMapping"],
        ["columnMapping"],
        {"delta.columnMapping.mode": "name", "delta.columnMapping.maxColumnId": "4"},
        [],
    ),
    "row tracking": (
        [],
        ["rowTracking", "domainMetadata"],
        {"delta.enableRowTracking": "true"},
        [],
    ),
    "liquid clustering": (
        [],
        ["clustering", "domainMetadata"],
        {},
        [
            {
                "domainMetadata": {
                    "domain": "delta.clustering",
                    "configuration": json.dumps({"clusteringColumns": [["index"]]}),
                    "removed": False,
                }
            }
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(SPARK_PROTOCOLS))
def test_table_features_spark_and_databricks_write(paths, case):
    main, staging = paths
    reader, writer, configuration, extra = SPARK_PROTOCOLS[case]
    rows = staged(["a", "b", "b", "c"], [1, 2, 2, 3])
    column_mapped = "columnMapping" in reader
    write_deltalake(
        str(staging),
        rows,
        configuration={"delta.columnMapping.mode": "name"} if column_mapped else None,
    )
    delta_fixtures.upgrade_protocol(staging, reader, writer, configuration, extra)
    protocol = DeltaTable(str(staging)).protocol()
    assert set(writer) <= set(protocol.writer_features or [])
    merge_exactly(main, staging, expected(None, rows))


def test_a_reader_feature_delta_rs_cannot_read_is_refused_before_anything_is_written(paths):
    """vacuumProtocolCheck: delta-rs's own scan refuses it, so the merge does too (exit 2),
    before main exists."""
    main, staging = paths
    write_deltalake(str(staging), staged(["a"], [1]))
    delta_fixtures.upgrade_protocol(staging, ["vacuumProtocolCheck"], ["vacuumProtocolCheck"])
    with pytest.raises(InvalidInputError, match="VacuumProtocolCheck"):
        merge(main, staging)
    assert not main.exists()


# --- main's rules, checked before the first write ---------------------------------------


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def test_check_constraints_refuse_before_any_batch_commits(paths):
    main, staging = paths
    write_deltalake(str(main), staged(["a"], [0], amount=pa.array([5], pa.int64())))
    DeltaTable(str(main)).alter.add_constraint({"amount_positive": "amount > 0"})
    for part in range(4):  # the bad rows sit in the last files: a later batch
        amounts = [1, 2] if part < 3 else [-7, None]
        write_deltalake(
            str(staging),
            staged(["b", "b"], [part * 2, part * 2 + 1], amount=pa.array(amounts, pa.int64())),
            mode="append",
        )
    before = tree_hash(main)
    result = run_cli(
        "--main", str(main), "--staging", str(staging), "--keys", "log,index", "--batch-rows", "2"
    )
    assert result.code == 2, result.stderr
    (error,) = result.error_lines
    assert "CHECK constraint amount_positive (amount > 0): 2 rows" in error
    assert "-7" not in error and "b-6" not in error  # no row contents
    assert tree_hash(main) == before and staging.exists()


def test_generated_columns_are_checked_then_merged(paths):
    main, staging = paths
    schema = Schema(
        [
            Field("log", "string"),
            Field("index", "long"),
            Field("double_index", "long", metadata={"delta.generationExpression": "index * 2"}),
        ]
    )
    DeltaTable.create(str(main), schema)
    good = pa.table(
        {
            "log": ["a", "a"],
            "index": pa.array([1, 2], pa.int64()),
            "double_index": pa.array([2, 4], pa.int64()),
        }
    )
    write_deltalake(str(staging), good)
    merge_exactly(main, staging, expected(None, good))
    bad = staging.parent / "bad"
    write_deltalake(
        str(bad),
        pa.table(
            {
                "log": ["a"],
                "index": pa.array([3], pa.int64()),
                "double_index": pa.array([7], pa.int64()),
            }
        ),
    )
    with pytest.raises(
        InvalidInputError, match=r"generated column double_index \(index \* 2\): 1 rows"
    ):
        merge(main, bad)


@pytest.mark.parametrize(
    "configuration",
    [
        {"delta.enableChangeDataFeed": "true"},
        {"delta.appendOnly": "true"},
    ],
    ids=["change data feed", "append only"],
)
def test_table_properties_on_both_sides(paths, configuration):
    main, staging = paths
    main_data = staged(["a"], [1])
    write_deltalake(str(main), main_data, configuration=configuration)
    rows = staged(["a", "b", "b"], [1, 2, 2])
    write_deltalake(str(staging), rows, configuration=configuration)
    merge_exactly(main, staging, expected(main_data, rows))
    assert DeltaTable(str(main)).metadata().configuration == configuration


def test_timestamp_ntz_columns(paths):
    main, staging = paths
    rows = staged(
        ["a", "b"], [1, 2], seen=pa.array([dt.datetime(2025, 1, 1), None], pa.timestamp("us"))
    )
    write_deltalake(str(staging), rows)
    assert "timestampNtz" in (DeltaTable(str(staging)).protocol().reader_features or [])
    merge_exactly(main, staging, expected(None, rows))


# --- creating main ---------------------------------------------------------------------


def test_partitioning_a_new_main_by_a_struct_is_refused_and_leaves_no_folder(paths):
    main, staging = paths
    rows = staged(["a"], [1], extra=pa.array([{"x": 1}], pa.struct([("x", pa.int64())])))
    write_deltalake(str(staging), rows)
    result = run_cli(
        "--main",
        str(main),
        "--staging",
        str(staging),
        "--keys",
        "log,index",
        "--partition-by",
        "extra",
    )
    assert result.code == 2
    assert "columns Delta cannot partition by: extra (struct)" in result.error_lines[0]
    assert not main.exists()


# --- the protocol of a main the merge creates -----------------------------------------


def ntz_schema() -> Schema:
    return Schema.from_json(
        json.dumps({"type": "struct", "fields": [
            {"name": "log", "type": "string", "nullable": False, "metadata": {}},
            {"name": "index", "type": "long", "nullable": False, "metadata": {}},
            {"name": "at", "type": "timestamp_ntz", "nullable": True, "metadata": {}},
        ]})
    )  # fmt: skip


def ntz_rows(n: int) -> pa.Table:
    schema = pa.schema([pa.field("log", pa.string(), False), pa.field("index", pa.int64(), False)])
    at = pa.array([dt.datetime(2026, 1, 1)] * n, pa.timestamp("us"))
    return pa.table([pa.array(["a"] * n), pa.array(range(n), pa.int64()), at],
                    schema=schema.append(pa.field("at", pa.timestamp("us"))))  # fmt: skip


def writer_features(path: Path) -> list[str]:
    return sorted(DeltaTable(str(path)).protocol().writer_features or [])


def test_a_new_main_lists_the_invariants_its_not_null_columns_imply(paths):
    """A timestamp_ntz staging makes a table-features protocol: delta-rs would list only
    timestampNtz, and Spark refuses a table whose NOT NULL columns have no `invariants`
    feature (tests/spark proves Spark reads the merged main)."""
    main, staging = paths
    DeltaTable.create(str(staging), schema=ntz_schema())
    write_deltalake(str(staging), ntz_rows(3), mode="append")
    m = merge(main, staging)
    assert writer_features(main) == ["invariants", "timestampNtz"]
    assert main_rows(main) == ntz_rows(3).to_pylist()
    # the create and the declaration are this run's commits, not another writer's: no
    # concurrent commit counted, no repair scan of main's keys
    assert (m.concurrent_commits, m.main_key_scans, m.main_version_after) == (0, 0, 2)


def test_a_main_left_between_its_creation_and_its_features_is_completed(paths):
    """A merge killed right after creating main (version 0, features not yet listed):
    the rerun lists them before its first append."""
    main, staging = paths
    DeltaTable.create(str(main), schema=ntz_schema())  # what the killed run left
    assert writer_features(main) == ["timestampNtz"]
    write_deltalake(str(staging), ntz_rows(2))
    m = merge(main, staging)
    assert m.inserted == 2 and writer_features(main) == ["invariants", "timestampNtz"]
    assert (m.concurrent_commits, m.main_version_after) == (0, 2)
