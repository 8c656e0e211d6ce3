"""Which files Spark's own rule reads in its legacy hybrid calendar, and which Delta
writer features the merge refuses: the pure halves of misreads.py and schema.py."""

from __future__ import annotations

import pytest

from stagingmerge_merger import schema
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.misreads import LEGACY_DATETIME, LEGACY_INT96, SPARK_VERSION
from stagingmerge_merger.misreads import legacy_calendar as legacy


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, (False, False)),  # no Spark wrote it: proleptic Gregorian
        ({b"writer.model.name": b"example"}, (False, False)),
        ({SPARK_VERSION: b"2.4.8"}, (True, True)),  # Spark 2 knew one calendar
        ({SPARK_VERSION: b"3.0.3"}, (False, True)),  # 3.0 rebased dates, not INT96
        ({SPARK_VERSION: b"3.5.1"}, (False, False)),
        ({SPARK_VERSION: b"4.0.1", LEGACY_DATETIME: b""}, (True, False)),
        ({SPARK_VERSION: b"4.0.1", LEGACY_INT96: b""}, (False, True)),
        ({SPARK_VERSION: b"3.1.0-SNAPSHOT"}, (False, False)),
        ({SPARK_VERSION: b"nonsense"}, (True, True)),  # unreadable: assume the oldest
    ],
)
def test_spark_s_rule_for_its_legacy_calendar(metadata, expected):
    assert legacy(metadata) == expected


@pytest.mark.parametrize(
    ("version", "named", "expected"),
    [
        (2, None, {"appendOnly", "invariants"}),
        (
            4,
            None,
            {"appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns"},
        ),
        (
            6,
            None,
            {
                "appendOnly",
                "invariants",
                "checkConstraints",
                "changeDataFeed",
                "generatedColumns",
                "columnMapping",
                "identityColumns",
            },
        ),
        (7, ["deletionVectors", "rowTracking"], {"deletionVectors", "rowTracking"}),
        (7, None, set()),
    ],
)
def test_writer_features_of_a_protocol(version, named, expected):
    assert schema.writer_features(version, named) == expected


def test_writer_features_the_merge_cannot_honour_are_refused_by_name():
    schema.check_writable({"appendOnly", "deletionVectors", "columnMapping"}, "main m")
    with pytest.raises(InvalidInputError, match=r"domainMetadata, rowTracking; nothing was"):
        schema.check_writable({"rowTracking", "domainMetadata", "appendOnly"}, "main m")
    with pytest.raises(InvalidInputError, match="identityColumns"):
        schema.check_writable(schema.writer_features(6, None), "main m")
