"""The session's SparkSession (Spark 4.0 with Delta 4.0, local, two cores)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tools import spark_session as session


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [jar.name for jar in session.jars() if not jar.is_file()]
    if missing:
        pytest.skip(
            f"no Delta jars ({', '.join(missing)}): run tools/get_delta_jars.py (make test does)"
        )
    spark = session.start(tmp_path_factory.mktemp("spark"))
    yield spark
    spark.stop()
