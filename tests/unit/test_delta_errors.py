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


# a footer not fetched because the store throttled or failed: seen with a 503 storm past
# object_store's retries, once read as "its log names a data file that is not there"
PASSING_FETCH = [
    "External error: Parquet error: Parquet error: Failed to fetch metadata for file"
    " twin/part-0.parquet: Object Store error: Generic S3 error: Error performing GET"
    " http://127.0.0.1:1/b/twin/part-0.parquet in 281ms, after 2 retries - Server returned"
    " non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>",
    "Parquet error: Failed to fetch metadata for file x.parquet: Generic GCS error: 429 Too"
    " Many Requests",
    "Parquet error: Failed to fetch metadata for file x.parquet: error sending request:"
    " operation timed out",
]


@pytest.mark.parametrize("text", PASSING_FETCH)
def test_a_footer_not_fetched_in_a_storm_is_retryable_not_a_missing_file(text):
    error = raised(text, "scan")
    assert error.exit_code == EXIT_RETRY
    assert "not there" not in str(error)


def test_a_footer_of_a_file_that_is_gone_is_a_broken_table():
    error = raised(
        "Parquet error: Failed to fetch metadata for file x.parquet: Object at location"
        " x.parquet not found: 404 Not Found",
        "scan",
    )
    assert error.exit_code == EXIT_INVALID and "names a data file that is not there" in str(error)
