"""A local SparkSession with Delta Lake: the reference engine of the Spark tests, and the
Spark contender of bench/run.py.

Spark 4.0 and Delta 4.0 as pinned in pyproject.toml's dev extra; the Delta jars are the
ones tools/get_delta_jars.py put in .tools/delta/<version>/ (given as paths, so nothing
is resolved from Maven at run time). Two cores, a small driver (the tests'), no UI, every
time in UTC.
Spark writes timestamps as Parquet INT96 here, as it does by default everywhere.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tools import get_delta_jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def jars() -> list[Path]:
    """The Delta jars for the installed delta-spark (missing ones included)."""
    return get_delta_jars.jars(importlib.metadata.version("delta-spark"))


def start(workdir: Path, memory: str = "1g", cores: str = "2") -> SparkSession:
    """`cores`: local threads, "*" for every core."""
    from pyspark.sql import SparkSession

    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # local mode talks to itself only: bind to loopback, whatever the hostname resolves to
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    threads = str(os.cpu_count() or 2) if cores == "*" else cores
    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("stagingmerge")
        .config("spark.jars", ",".join(str(j) for j in jars()))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        .config("spark.driver.memory", memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", threads)
        .config("spark.default.parallelism", threads)
        # Delta replays its log in this many tasks (default 50)
        .config("spark.databricks.delta.snapshotPartitions", threads)
        # VACUUM lists files in this many tasks (default 10,000: 40 s for a tiny table here)
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", threads)
        .config("spark.sql.session.timeZone", "UTC")
        .config(
            "spark.driver.extraJavaOptions", f"-Duser.timezone=UTC -Dderby.system.home={workdir}"
        )
        .config("spark.sql.warehouse.dir", str(workdir / "warehouse"))
        .config("spark.local.dir", str(workdir / "local"))
        # VACUUM with a zero retention, as the interop checks run it
        .config("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
