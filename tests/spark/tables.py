"""Delta tables written by Spark itself, one per table feature, and Spark's reading of them.

Every table holds rows of one universe: row `id` has the key (`source_url`, `cert_index`)
= (log `id % 3`, `id`) and columns that depend on `id` only, so two tables holding the
same key hold the same row, and a merge's expected result is a union by key. A builder
writes the rows with ids in [lo, hi) in more than one commit and then uses its feature
(a DELETE that leaves deletion vectors, a RENAME, a type change...), so what the table
holds is whatever Spark says it holds: the oracle is always Spark's reading, never ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

Key = tuple[str, int]

# the universe's columns: every type a CT row has, with values Spark and delta-rs must
# agree on (dates before the Gregorian calendar and at the end of time; timestamps inside
# the range INT96 nanoseconds hold: Spark writes INT96 by default)
UNIVERSE = """
  concat('https://ct.example/log/', CAST(id % 3 AS STRING)) AS source_url,
  id AS cert_index,
  concat('entry-', CAST(id AS STRING)) AS payload,
  TIMESTAMP'2026-03-01 12:00:00' + make_interval(0, 0, 0, 0, 0, 0, id * 61.5) AS seen_at,
  CASE id % 5 WHEN 0 THEN DATE'1500-03-01' WHEN 1 THEN DATE'9999-12-31'
              ELSE DATE'2026-01-01' + CAST(id AS INT) END AS not_after,
  CAST(id AS DECIMAL(38, 10)) / 7 AS amount,
  array(concat('ca-', CAST(id % 4 AS STRING)), 'root') AS chain,
  named_struct('cn', concat('host', CAST(id AS STRING)), 'serial', id * 1000) AS issuer,
  map('ext', CAST(id % 2 = 0 AS STRING)) AS extensions
"""


def universe(spark: SparkSession, lo: int, hi: int, extra: str = "") -> Any:
    """The universe's rows with ids in [lo, hi), as a DataFrame (with `extra` columns)."""
    columns = UNIVERSE + (f", {extra}" if extra else "")
    return spark.sql(f"SELECT {columns} FROM range({lo}, {hi})")


def at(path: Path) -> str:
    return f"delta.`{path}`"


@contextmanager
def conf(spark: SparkSession, **values: str) -> Iterator[None]:
    """Spark SQL settings for the duration of a block (dots as double underscores)."""
    keys = {k.replace("__", "."): v for k, v in values.items()}
    before = {k: spark.conf.get(k, None) for k in keys}
    for k, v in keys.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def create(
    spark: SparkSession,
    path: Path,
    lo: int,
    hi: int,
    generated: dict[str, tuple[str, Any]] | None = None,
    props: dict[str, str] | None = None,
    extra: str = "",
    commits: int = 2,
) -> None:
    """A table of the universe's rows [lo, hi), written in `commits` appends; `generated`
    adds columns Spark computes (name: (type, expression or IdentityGenerator))."""
    from delta.tables import DeltaTable

    builder = DeltaTable.create(spark).location(str(path))
    builder = builder.addColumns(universe(spark, lo, lo, extra).schema)
    for name, (kind, expression) in (generated or {}).items():
        builder = builder.addColumn(name, kind, generatedAlwaysAs=expression)
    for key, value in (props or {}).items():
        builder = builder.property(key, value)
    builder.execute()
    append(spark, path, lo, hi, extra, commits)


def append(spark: SparkSession, path: Path, lo: int, hi: int, extra: str = "",
           commits: int = 2) -> None:  # fmt: skip
    """Append the universe's rows [lo, hi) in `commits` INSERTs naming the columns they
    hold (a generated or identity column is left to Spark)."""
    step = max(1, -(-(hi - lo) // commits))
    for start in range(lo, hi, step):
        batch = universe(spark, start, min(hi, start + step), extra)
        batch.createOrReplaceTempView("batch")
        names = ", ".join(f"`{c}`" for c in batch.columns)
        spark.sql(f"INSERT INTO {at(path)} ({names}) SELECT {names} FROM batch")


# -- one builder per feature: (spark, path, lo, hi) -> None ----------------------------


def plain(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi)


def deletion_vectors(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Deletion vectors left by a DELETE, an UPDATE and a MERGE."""
    create(spark, path, lo, hi, props={"delta.enableDeletionVectors": "true"})
    spark.sql(f"DELETE FROM {at(path)} WHERE cert_index % 10 = 3")
    spark.sql(
        f"UPDATE {at(path)} SET payload = concat(payload, '-updated') WHERE cert_index % 10 = 5"
    )
    universe(spark, lo, hi).where("id % 10 = 7").createOrReplaceTempView("changes")
    spark.sql(
        f"MERGE INTO {at(path)} t USING changes s ON t.source_url = s.source_url AND"
        " t.cert_index = s.cert_index WHEN MATCHED THEN UPDATE SET t.payload = 'merged'"
    )


def _mapped(mode: str) -> Callable[[SparkSession, Path, int, int], None]:
    def build(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
        create(spark, path, lo, hi, extra="id * 2 AS doomed", props={
            "delta.columnMapping.mode": mode,
            "delta.minReaderVersion": "2" if mode == "name" else "3",
            "delta.minWriterVersion": "5" if mode == "name" else "7",
        })  # fmt: skip
        spark.sql(f"ALTER TABLE {at(path)} RENAME COLUMN payload TO note")
        spark.sql(f"ALTER TABLE {at(path)} DROP COLUMN doomed")

    build.__name__ = f"column_mapping_{mode}"
    return build


column_mapping_name = _mapped("name")
column_mapping_id = _mapped("id")


def liquid_clustering(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi)
    spark.sql(f"ALTER TABLE {at(path)} CLUSTER BY (source_url, cert_index)")
    spark.sql(f"OPTIMIZE {at(path)}")


def v2_checkpoints(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, commits=4, props={
        "delta.checkpointPolicy": "v2", "delta.checkpointInterval": "2",
    })  # fmt: skip


def row_tracking(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, props={"delta.enableRowTracking": "true"})
    spark.sql(f"UPDATE {at(path)} SET payload = upper(payload) WHERE cert_index % 4 = 1")


def type_widening(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """An INT column widened to BIGINT after the first files were written."""
    mid = (lo + hi) // 2
    create(spark, path, lo, mid, extra="CAST(id AS INT) AS size",
           props={"delta.enableTypeWidening": "true"})  # fmt: skip
    spark.sql(f"ALTER TABLE {at(path)} ALTER COLUMN size TYPE BIGINT")
    append(spark, path, mid, hi, extra="CAST(id AS BIGINT) AS size")


def timestamp_ntz(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, extra="CAST(TIMESTAMP'1500-01-01 00:00:00' + make_interval("
           "id, 0, 0, 0, 0, 0, 0) AS TIMESTAMP_NTZ) AS logged_at")  # fmt: skip


def timestamp_micros(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Timestamps as Parquet INT64 microseconds, at both ends of time."""
    with conf(spark, spark__sql__parquet__outputTimestampType="TIMESTAMP_MICROS"):
        create(spark, path, lo, hi, extra=_EDGE_TIMESTAMPS)


_EDGE_TIMESTAMPS = (
    "CASE id % 3 WHEN 0 THEN TIMESTAMP'9999-12-31 23:59:59.999999'"
    " WHEN 1 THEN TIMESTAMP'0001-01-01 00:00:00' ELSE TIMESTAMP'2026-06-01 00:00:00' END"
    " AS valid_until"
)


def int96_edges(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Spark's default INT96 timestamps, at both ends of time: arrow-rs reads them as
    nanoseconds and 9999-12-31 wraps to 1816 (delta-kernel-rs issue 2709)."""
    create(spark, path, lo, hi, extra=_EDGE_TIMESTAMPS)


def legacy_calendar(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Dates and timestamps before 1582 written in the hybrid Julian calendar, as Spark 2
    wrote them (and Spark 3+ does with the LEGACY rebase modes)."""
    with conf(spark, spark__sql__parquet__datetimeRebaseModeInWrite="LEGACY",
              spark__sql__parquet__int96RebaseModeInWrite="LEGACY"):  # fmt: skip
        create(spark, path, lo, hi)


def identity_column(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    from delta.tables import IdentityGenerator

    create(spark, path, lo, hi, generated={"row_id": ("BIGINT", IdentityGenerator())})


def generated_column(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, generated={"seen_day": ("DATE", "CAST(seen_at AS DATE)")})


def check_constraint(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi)
    spark.sql(f"ALTER TABLE {at(path)} ADD CONSTRAINT known_index CHECK (cert_index >= 0)")


def change_data_feed(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, props={"delta.enableChangeDataFeed": "true"})
    spark.sql(f"UPDATE {at(path)} SET payload = lower(payload) WHERE cert_index % 6 = 2")


def in_commit_timestamps(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    create(spark, path, lo, hi, props={"delta.enableInCommitTimestamps": "true"})


def escaped_partitions(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Partitioned by columns whose values need escaping in paths."""
    extra = ("concat('a b/c=d%', CAST(id % 2 AS STRING), ':#?') AS shelf,"
             " CASE WHEN id % 4 = 0 THEN NULL ELSE id % 3 END AS bucket")  # fmt: skip
    rows = universe(spark, lo, hi, extra)
    rows.write.format("delta").partitionBy("shelf", "bucket").save(str(path))


def variant(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    doc = "parse_json(concat('{\"n\":', CAST(id AS STRING), '}')) AS doc"
    create(spark, path, lo, hi, extra=doc)


def variant_checkpointed(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """A variant column and a checkpoint (the shape the issue saw fail to scan; the
    checkpoint Spark 4.0.1 writes here scanned fine)."""
    variant(spark, path, lo, hi)
    checkpoint(spark, path)


def variant_nested(spark: SparkSession, path: Path, lo: int, hi: int) -> None:
    """Variants inside a map, an array and a struct, checkpointed: the issue's failure named
    `map<string, struct<metadata: binary, value: binary>>`, a map of variants as Arrow
    sees it. Spark 4.0.1 (and 4.1.1 with Delta 4.2.0, tried once) writes tables of this
    shape that delta-rs reads exactly; a table it could not decode is refused with exit 2
    (tests/integration/test_hostile_input.py, tests/unit/test_delta_errors.py)."""
    v = "parse_json(concat('{\"n\":', CAST(id AS STRING), '}'))"
    extra = f"map('a', {v}) AS docs, array({v}) AS doc_list, named_struct('v', {v}) AS doc_box"
    create(spark, path, lo, hi, extra=extra)
    checkpoint(spark, path)


BUILDERS: dict[str, Callable[[SparkSession, Path, int, int], None]] = {
    b.__name__: b
    for b in (
        plain, deletion_vectors, column_mapping_name, column_mapping_id, liquid_clustering,
        v2_checkpoints, row_tracking, type_widening, timestamp_ntz, timestamp_micros,
        int96_edges, legacy_calendar, identity_column, generated_column, check_constraint,
        change_data_feed, in_commit_timestamps, escaped_partitions, variant,
        variant_checkpointed, variant_nested,
    )
}  # fmt: skip


# -- Spark's reading -------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """A table as Spark reads it: its columns and types, and every row as JSON by key."""

    schema: tuple[tuple[str, str], ...]
    rows: dict[Key, str]

    def union(self, staging: Reading) -> dict[Key, str]:
        """What main must hold after merging `staging` into this: its rows, plus
        staging's rows for every key it lacks (the universe's copies of a key are equal)."""
        return {**staging.rows, **self.rows}


def read(spark: SparkSession, path: Path) -> Reading:
    frame = spark.read.format("delta").load(str(path))
    schema = tuple((f.name, f.dataType.simpleString()) for f in frame.schema.fields)
    names = [name for name, _ in schema]
    json_of = "to_json(struct(*), map('ignoreNullFields', 'false'))"
    found: dict[Key, str] = {}
    for row in frame.selectExpr("source_url", "cert_index", f"{json_of} AS j").collect():
        key = (row["source_url"], row["cert_index"])
        assert key not in found, f"{path}: key {key} is in the table twice"
        found[key] = row["j"]
    assert names, path
    return Reading(schema, found)


def checkpoint(spark: SparkSession, path: Path) -> None:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, str(path)).checkpoint()


def history(spark: SparkSession, path: Path) -> list[str]:
    return [r["operation"] for r in spark.sql(f"DESCRIBE HISTORY {at(path)}").collect()]


def dumps(rows: dict[Key, str]) -> list[str]:
    """Rows in key order, for a readable difference."""
    return [rows[k] for k in sorted(rows)]
