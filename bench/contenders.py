"""The reference contenders of bench/run.py, each run as its own process.

    python bench/contenders.py append|original|spark MAIN STAGING

Each prints one JSON line with "inserted" (spark: also "startup_seconds", the JVM's and
the session's start, and "merge_seconds", the MERGE alone). None deletes staging.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger.delta import Handoff, plain_schema
from stagingmerge_merger.sample import LOGS

ORIGINAL_BATCH = 8_192
PREDICATE = "target.source_url = source.source_url AND target.cert_index = source.cert_index"


def plain_append(main: str, staging: str) -> int:
    """The limit: read staging, append the rows known to be new, never look at main.

    Which rows are new is known from how bench/run.py generated the data (an oracle,
    the same rule as run.in_main, vectorised)."""
    oracle = json.loads((Path(staging).parent / "oracle.json").read_text())
    bases = pa.array(oracle["bases"], pa.int64())
    urls = pa.array([url for _, url in LOGS[: len(oracle["bases"])]])
    staging_table = DeltaTable(staging)
    staging_schema = plain_schema(pa.schema(staging_table.schema().to_arrow()))
    inserted = 0

    def batches():
        nonlocal inserted
        for raw in staging_table.scan():  # delta-rs's own reader, as the merge reads
            batch = pa.record_batch(raw).select(staging_schema.names).cast(staging_schema)
            base = bases.take(pc.index_in(batch["source_url"], urls))
            offset = pc.subtract(pc.subtract(batch["cert_index"], base), oracle["low"])
            held = pc.greater(
                pc.floor(pc.multiply(pc.add(offset, 1).cast(pa.float64()), oracle["overlap"])),
                pc.floor(pc.multiply(offset.cast(pa.float64()), oracle["overlap"])),
            )
            keep = batch.filter(pc.invert(held))
            inserted += keep.num_rows
            yield keep

    dt = DeltaTable(main)
    schema = plain_schema(pa.schema(dt.schema().to_arrow()))
    # delta-rs's writer cannot pull from a delta-rs scan on its own runtime: the rows are
    # handed over from a thread, exactly as the merge does it.
    handoff = Handoff(b.select(schema.names).cast(schema) for b in batches())
    with handoff.feeding():
        write_deltalake(dt, handoff.reader(schema), mode="append")
    return inserted


def original(main: str, staging: str) -> int:
    """The original design: collect all of staging, then one MERGE per ~8 K rows."""
    source = DeltaTable(staging)
    schema = plain_schema(pa.schema(source.schema().to_arrow()))
    rows = pa.table(source.scan()).select(schema.names).cast(schema)
    dt = DeltaTable(main)
    inserted = 0
    for start in range(0, rows.num_rows, ORIGINAL_BATCH):
        metrics = (
            dt.merge(
                rows.slice(start, ORIGINAL_BATCH),
                PREDICATE,
                source_alias="source",
                target_alias="target",
            )
            .when_not_matched_insert_all()
            .execute()
        )
        inserted += int(metrics["num_target_rows_inserted"])
    return inserted


SPARK_MEMORY = os.environ.get("BENCH_SPARK_MEMORY", "6g")


def spark(main: str, staging: str) -> dict[str, float]:
    """Delta Spark's own answer: `MERGE INTO main USING staging ON <keys> WHEN NOT MATCHED
    THEN INSERT *`, with Delta's insert-only merge optimisation on (its default, set so it
    stays on). Local, on every core, the driver holding BENCH_SPARK_MEMORY (6g)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tools import spark_session

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as work:
        session = spark_session.start(Path(work), memory=SPARK_MEMORY, cores="*")
        session.conf.set("spark.databricks.delta.merge.optimizeInsertOnlyMerge.enabled", "true")
        session.sql("SELECT 1").collect()  # the JVM, the session and Delta's classes are up
        ready = time.monotonic()
        row = session.sql(
            f"MERGE INTO delta.`{main}` AS target USING delta.`{staging}` AS source"
            f" ON {PREDICATE} WHEN NOT MATCHED THEN INSERT *"
        ).collect()[0]
        merged = time.monotonic()
        gateway = session.sparkContext._gateway  # type: ignore[attr-defined]
        session.stop()
        # the JVM is this process's child: reaped here, its peak RSS reaches run.py's wait4
        gateway.proc.stdin.close()
        gateway.proc.wait()
    return {
        "inserted": int(row["num_inserted_rows"]),
        "startup_seconds": round(ready - started, 2),
        "merge_seconds": round(merged - ready, 2),
    }


def main() -> None:
    name, main_uri, staging_uri = sys.argv[1:4]
    if name == "spark":
        answer: dict[str, float] = spark(main_uri, staging_uri)
    else:
        answer = {
            "inserted": {"append": plain_append, "original": original}[name](main_uri, staging_uri)
        }
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    os._exit(0)  # delta-rs issue 2184: do not let interpreter teardown abort after commit


if __name__ == "__main__":
    main()
