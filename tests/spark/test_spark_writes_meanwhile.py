"""Spark writes to main while the real CLI merges into it (issue 24, item 5).

The merge is held at a failpoint (`STAGINGMERGE_PAUSE`): at the start of its first batch,
with the first batch's rows written to files but not committed, or just after its first
commit. There Spark commits one of four operations to main, then the merge goes on:

- a blind append (INSERT) of rows whose keys overlap staging's and main's;
- an insert-only MERGE INTO of such rows;
- an OPTIMIZE ZORDER BY, rewriting every file of main;
- a DELETE that writes deletion vectors, of keys staging does not hold.

Afterwards Spark's reading of main holds exactly what the two writers' rules say: no key
twice by the merge's doing (a key twice only where Spark's own blind append put it
there), nothing lost but what the DELETE removed, and the merge's metrics count exactly
the rows it added. Each operation runs at every hold point, at least five times in all.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CLI, CliResult
from tests.spark.tables import at, history

pytestmark = pytest.mark.spark

MAIN = range(0, 300)  # main's keys before the merge: cert_index 0..299, log index % 3
STAGED = range(200, 600)  # staging's: 100 of them in main already
SPARK = range(150, 700, 5)  # the rows Spark writes meanwhile: some in main, some staged
DELETED = [i for i in MAIN if i < 200 and i % 7 == 0]  # in main, not in staging
BATCH_ROWS = 50  # staging's 400 rows in 8 batches: the hold comes early in the merge
HOLDS = ("batch-start", "batch-before-commit", "batch-after-commit")
LOOPS = 5  # per operation, cycling through the hold points

Key = tuple[str, int]


def key(i: int) -> Key:
    return (f"https://ct.example/log/{i % 3}", i)


def rows_sql(ids: range | list[int], tag: str) -> str:
    """A SELECT of rows for cert_index in `ids`, their payload telling who wrote them."""
    listed = ", ".join(str(i) for i in ids)
    return (
        "SELECT concat('https://ct.example/log/', CAST(id % 3 AS STRING)) AS source_url,"
        f" id AS cert_index, concat('{tag}-', CAST(id AS STRING)) AS payload"
        f" FROM range(0, {max(ids) + 1}) WHERE id IN ({listed})"
    )


def write(spark: Any, path: Path, ids: range, tag: str, commits: int, props: str = "") -> None:
    spark.sql(
        f"CREATE TABLE {at(path)} (source_url STRING NOT NULL, cert_index BIGINT NOT NULL,"
        f" payload STRING) USING delta {props}"
    )
    for part in range(commits):
        spark.sql(f"INSERT INTO {at(path)} {rows_sql(list(ids)[part::commits], tag)}")


def content(spark: Any, path: Path) -> Counter[tuple[Key, str]]:
    """Every row of main as Spark reads it: ((log, index), payload), with multiplicity."""
    frame = spark.read.format("delta").load(str(path))
    return Counter(
        ((r["source_url"], r["cert_index"]), r["payload"]) for r in frame.collect()
    )  # fmt: skip


# -- Spark's operations, and what main must hold after each ------------------------------


def blind_append(spark: Any, main: Path) -> None:
    spark.sql(f"INSERT INTO {at(main)} {rows_sql(SPARK, 'spark')}")


def insert_only_merge(spark: Any, main: Path) -> None:
    spark.sql(rows_sql(SPARK, "spark")).createOrReplaceTempView("incoming")
    spark.sql(
        f"MERGE INTO {at(main)} t USING incoming s ON t.source_url = s.source_url"
        " AND t.cert_index = s.cert_index WHEN NOT MATCHED THEN INSERT *"
    )


def optimize_zorder(spark: Any, main: Path) -> None:
    spark.sql(f"OPTIMIZE {at(main)} ZORDER BY (cert_index)")


def delete_with_dvs(spark: Any, main: Path) -> None:
    spark.sql(f"DELETE FROM {at(main)} WHERE cert_index IN ({', '.join(map(str, DELETED))})")


OPERATIONS: dict[str, Callable[[Any, Path], None]] = {
    "blind-append": blind_append,
    "insert-only-merge": insert_only_merge,
    "optimize-zorder": optimize_zorder,
    "delete-with-deletion-vectors": delete_with_dvs,
}


def expected(operation: str, spark_saw: set[Key]) -> Counter[tuple[Key, str]]:
    """Main after the merge and Spark's operation. `spark_saw`: main's keys when Spark
    acted (main's own, and a first batch's when the merge was held after its commit)."""
    want: Counter[tuple[Key, str]] = Counter()
    present = set()
    for i in MAIN:
        if not (operation.startswith("delete") and i in DELETED):
            want[key(i), f"main-{i}"] += 1
            present.add(key(i))
    for i in STAGED:  # merged before Spark acted: Spark's blind append may add a copy
        if key(i) in spark_saw and key(i) not in present:
            want[key(i), f"staged-{i}"] += 1
            present.add(key(i))
    for i in SPARK:
        if operation == "blind-append" or (
            operation == "insert-only-merge" and key(i) not in spark_saw
        ):
            want[key(i), f"spark-{i}"] += 1
            present.add(key(i))
    for i in STAGED:  # the merge adds a staged key exactly when nothing above holds it
        if key(i) not in present:
            want[key(i), f"staged-{i}"] += 1
    return want


# -- the scenario ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Main (in four commits, deletion vectors on) and staging, written by Spark once;
    every iteration works on copies."""
    root = tmp_path_factory.mktemp("written")
    dvs = "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
    write(spark, root / "main", MAIN, "main", commits=4, props=dvs)
    write(spark, root / "staging", STAGED, "staged", commits=3)
    return {"main": root / "main", "staging": root / "staging"}


CASES = [
    (operation, hold)
    for operation in OPERATIONS
    for hold in itertools.islice(itertools.cycle(HOLDS), LOOPS)
]


@pytest.mark.parametrize(
    ("operation", "hold"), CASES, ids=[f"{o}-{h}-{n % LOOPS}" for n, (o, h) in enumerate(CASES)]
)
def test_spark_writing_to_main_meanwhile(spark, tables, tmp_path, operation, hold):
    main, staging = tmp_path / "main", tmp_path / "staging"
    shutil.copytree(tables["main"], main)
    shutil.copytree(tables["staging"], staging)
    before = history(spark, main)

    spark_saw: set[Key] = set()

    def meanwhile() -> None:
        spark_saw.update(k for k, _ in content(spark, main))
        OPERATIONS[operation](spark, main)

    result = merge_holding(main, staging, hold, tmp_path / "hold", meanwhile)

    assert result.code == 0, f"{result.code} {result.metrics.get('error')}"
    after = content(spark, main)
    want = expected(operation, spark_saw)
    assert after == want, f"{operation} at {hold}: {diff(after, want)}"
    staged_in = sum(n for (_, payload), n in after.items() if payload.startswith("staged-"))
    m = result.metrics
    assert m["inserted"] == staged_in
    assert m["inserted"] + m["skipped_existing"] + m["skipped_duplicates"] == len(STAGED)
    assert not staging.exists()
    newest_first = history(spark, main)
    since = newest_first[: len(newest_first) - len(before)]
    assert SPARK_OPERATION[operation] in since, f"Spark did nothing: {since}"
    if operation.startswith("delete"):
        assert deletion_vectors_in(main), "Spark's DELETE wrote no deletion vector"


# how DESCRIBE HISTORY names each operation
SPARK_OPERATION = {
    "blind-append": "WRITE",
    "insert-only-merge": "MERGE",
    "optimize-zorder": "OPTIMIZE",
    "delete-with-deletion-vectors": "DELETE",
}


def deletion_vectors_in(main: Path) -> bool:
    return any('"deletionVector":{' in p.read_text() for p in (main / "_delta_log").glob("*.json"))


def diff(after: Counter, want: Counter) -> str:
    extra, missing = after - want, want - after
    return f"{sum(extra.values())} rows too many {sorted(extra)[:5]}, " + (
        f"{sum(missing.values())} missing {sorted(missing)[:5]}"
    )


def merge_holding(
    main: Path, staging: Path, hold: str, flag: Path, meanwhile: Callable[[], None]
) -> CliResult:
    """Run the real CLI held at `hold` (STAGINGMERGE_PAUSE); call `meanwhile` while it
    waits there, then let it go on; return how it ended."""
    env = {**os.environ, "STAGINGMERGE_PAUSE": f"{hold}:{flag}"}
    argv = [CLI, "--log-format", "json", "--main", str(main), "--staging", str(staging)]
    argv += ["--batch-rows", str(BATCH_ROWS)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    waiting = Path(f"{flag}.waiting")
    try:
        while not waiting.exists():  # the merge reaches its hold point, or ends without
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"the merge ended before reaching {hold}: {proc.stderr.read()[-2000:]}")
        meanwhile()
    finally:
        Path(f"{flag}.go").touch()
    out, err = proc.communicate(timeout=600)
    metrics = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return CliResult(proc.returncode, out, err, metrics)
