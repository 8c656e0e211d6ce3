"""delta.translate_errors: what delta-rs and Arrow raise becomes one MergeError with the
exit code that says whether a retry can help."""

from __future__ import annotations

import pytest

from stagingmerge_merger.delta import translate_errors
from stagingmerge_merger.errors import EXIT_INVALID, EXIT_RETRY, MergeError
from stagingmerge_merger.storage import parse_location

TABLE = parse_location("s3://bucket/staging")

# the words of real failures (the first two seen on Spark-written tables)
UNDECODABLE = [
    "C Data interface error: External error: Arrow error: Can't view array of type"
    " map<string, struct<metadata: binary, value: binary>>",
    "C Data interface error: External error: Arrow error: Cast error: Cannot cast string"
    " 'https://ct.example/log/1' to value of Int64 type",
    "Execution error: Cannot cast column 'doc' from 'Utf8' (physical data type) to"
    " 'Struct(\"a\": Int32)' (logical data type)",
]
TRANSIENT = [
    "Generic S3 error: Error after 10 retries in 2.1s, max_retries:10, retry_timeout:180s,"
    " source:error sending request for url (http://127.0.0.1:9000/bucket/x.parquet)",
    "C Data interface error: External error: Object Store error: Generic LocalFileSystem"
    " error: Unable to open file /tmp/x.parquet: Too many open files (os error 24)",
]


def raised(text: str, action: str) -> MergeError:
    with pytest.raises(MergeError) as caught, translate_errors(TABLE, {}, action):
        raise Exception(text)  # what deltalake's streams raise
    return caught.value


@pytest.mark.parametrize("text", UNDECODABLE)
@pytest.mark.parametrize("action", ["scan", "query"])
def test_data_that_does_not_decode_is_invalid_input_when_read(text, action):
    error = raised(text, action)
    assert error.exit_code == EXIT_INVALID
    assert "cannot decode its data as its schema declares" in str(error)
    assert str(TABLE) in str(error) and "\n" not in str(error)


@pytest.mark.parametrize("text", UNDECODABLE[1:])
def test_a_cast_failing_in_a_write_is_not_blamed_on_the_table(text):
    """Our own rows failing a cast while appended is a bug of ours: worth a report and a
    retry, never "rewrite your table"."""
    error = raised(text, "append to")
    assert error.exit_code == EXIT_RETRY
    assert "cannot decode" not in str(error)


@pytest.mark.parametrize("text", TRANSIENT)
def test_storage_failures_stay_worth_retrying(text):
    assert raised(text, "scan").exit_code == EXIT_RETRY
