"""INT96 timestamps delta-rs would misread (issue 24, the silent case): refused, exit 2.

Spark itself writes such tables in tests/spark (`int96_edges`, judged by Spark's reading).
These cases stay because Spark cannot write them on purpose: the log holds no statistics for
the column (as Spark's log has none past its first 32 columns), so only the files can tell.
The data files are written by pyarrow exactly as Spark writes timestamps by default (Parquet
INT96, no embedded Arrow schema: arrow-rs then decodes them as nanoseconds and 9999-12-31
reads as 1816-03-29), and the log by delta-rs's own converter (`convert_to_deltalake`,
which keeps no statistics for them)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import convert_to_deltalake

from tests.helpers import rows, run_cli, tree_hash, write


def spark_like(path: Path, instants: list[dt.datetime], start: int = 0) -> Path:
    path.mkdir(parents=True)
    table = table_of(list(range(start, start + len(instants))), instants)
    pq.write_table(table, path / "part-0.parquet", use_deprecated_int96_timestamps=True,
                   store_schema=False)  # fmt: skip
    assert pq.ParquetFile(path / "part-0.parquet").schema.column(1).physical_type == "INT96"
    convert_to_deltalake(str(path))
    return path


def table_of(ids: list[int], instants: list[dt.datetime]) -> pa.Table:
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "seen": pa.array(instants, pa.timestamp("us"))}
    )


def main_table(path: Path) -> Path:
    return write(path, table_of([100], [dt.datetime(2000, 1, 1)]))


def test_int96_past_2262_is_refused_naming_the_column(tmp_path):
    main = main_table(tmp_path / "main")
    far = [dt.datetime(2020, 1, 1), dt.datetime(9999, 12, 31)]
    staging = spark_like(tmp_path / "staging", far)
    before = tree_hash(tmp_path)

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")

    assert result.code == 2, result.stderr
    assert "column seen is stored as Parquet INT96" in result.error_lines[0]
    assert tree_hash(tmp_path) == before


def test_int96_before_1677_is_refused_too(tmp_path):
    main = main_table(tmp_path / "main")
    staging = spark_like(tmp_path / "staging", [dt.datetime(1500, 6, 1)])

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")

    assert result.code == 2 and "INT96" in result.error_lines[0], result.stderr


def test_int96_inside_the_nanosecond_range_merges_exactly(tmp_path):
    main = main_table(tmp_path / "main")
    instants = [dt.datetime(1700, 1, 1), dt.datetime(2020, 1, 1, 12, 30, 0, 123456),
                dt.datetime(2262, 4, 11)]  # fmt: skip
    staging = spark_like(tmp_path / "staging", instants)

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")

    assert result.code == 0, result.stderr
    got = rows(main).to_pylist()
    assert [r["seen"] for r in got] == [*instants, dt.datetime(2000, 1, 1)]


def test_far_timestamps_stored_as_int64_are_not_refused(tmp_path):
    """What delta-rs itself writes (INT64 microseconds) reads right at any year."""
    main = main_table(tmp_path / "main")
    staging = write(tmp_path / "staging", table_of([1], [dt.datetime(9999, 12, 31)]))

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")

    assert result.code == 0, result.stderr
    assert rows(main)["seen"].to_pylist() == [dt.datetime(9999, 12, 31), dt.datetime(2000, 1, 1)]
