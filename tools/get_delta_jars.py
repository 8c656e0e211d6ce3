"""Put the Delta Lake jars for the installed delta-spark in .tools/delta/<version>/.

The Spark tests (tests/spark/) run a local SparkSession with Delta. pyspark and
delta-spark come from PyPI, pinned in pyproject.toml's dev extra; delta-spark's Python
package holds no jars, so the two it needs (io.delta:delta-spark_2.13 and
io.delta:delta-storage, the version of the installed delta-spark) are fetched once from
Maven Central by `mvn dependency:copy` with strict checksums. Spark is then given their
paths (`spark.jars`), never Maven coordinates, so every later session is offline.
Keyed by version: a new pin fetches a new folder, an unchanged one does nothing.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / ".tools"
SCALA = "2.13"


def artifacts(version: str) -> list[str]:
    return [f"io.delta:delta-spark_{SCALA}:{version}", f"io.delta:delta-storage:{version}"]


def folder(version: str) -> Path:
    return TOOLS / "delta" / version


def jars(version: str) -> list[Path]:
    return [folder(version) / f"{a.split(':')[1]}-{version}.jar" for a in artifacts(version)]


def main() -> int:
    version = importlib.metadata.version("delta-spark")
    wanted = jars(version)
    if all(jar.is_file() for jar in wanted):
        return 0
    mvn = shutil.which("mvn")
    if mvn is None:
        print("mvn not found: the Spark tests need Delta's jars from Maven", file=sys.stderr)
        return 1
    print(f"fetching the Delta {version} jars from Maven Central (first time only)")
    started = time.monotonic()
    partial = folder(version).with_name(f"{version}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for artifact in artifacts(version):
        subprocess.run(
            [mvn, "--batch-mode", "--quiet", "-Dstyle.color=never", "--strict-checksums",
             "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={partial}"],
            check=True,
        )  # fmt: skip
    shutil.rmtree(folder(version), ignore_errors=True)
    partial.rename(folder(version))  # all or nothing: a half fetch is never taken as done
    missing = [jar.name for jar in wanted if not jar.is_file()]
    if missing:
        print(f"mvn did not produce {missing}", file=sys.stderr)
        return 1
    print(f"fetched in {time.monotonic() - started:.0f} s: {folder(version)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
