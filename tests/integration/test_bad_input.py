"""Every kind of bad input: exit 2, one error line, and neither table changed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from stagingmerge_merger.contract import Outcome
from tests.helpers import ct, run_cli, tree_hash, write

Setup = Callable[[Path, Path, Path], list[str]]


def ct_pair(main: Path, staging: Path) -> None:
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 3, range(2, 5), seed=2))


def newer_protocol(table: Path) -> None:
    log = table / "_delta_log" / "00000000000000000000.json"
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    for action in actions:
        if "protocol" in action:
            action["protocol"] = {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": ["aFeatureFromTheFuture"],
                "writerFeatures": ["aFeatureFromTheFuture"],
            }
    log.write_text("".join(json.dumps(a) + "\n" for a in actions))


def key_of_another_type(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(main, pa.table({"id": [1], "v": ["a"]}))
    write(staging, pa.table({"id": ["2"], "v": ["b"]}))
    return ["--keys", "id"]


def schema_pair(staging_table: pa.Table):
    def setup(main: Path, staging: Path, _tmp: Path) -> list[str]:
        write(main, pa.table({"id": [1], "v": ["a"]}))
        write(staging, staging_table)
        return ["--keys", "id"]

    return setup


def same(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    return ["--staging", str(main)]


def staging_inside_main(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    write(main / "staging", ct([0], [9]))
    return ["--staging", str(main / "staging")]


def main_inside_staging(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    return ["--main", str(staging / "main")]


def null_keys(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(main, pa.table({"id": [1]}))
    write(staging, pa.table({"id": pa.array([None, 2], pa.int64())}))
    return ["--keys", "id"]


def staging_is_a_file(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(main, ct([0], [0]))
    staging.write_text("not a table")
    return []


def main_is_a_file(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(staging, ct([0], [0]))
    main.write_text("not a table")
    return []


def staging_not_delta(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(main, ct([0], [0]))
    staging.mkdir()
    (staging / "part-0.parquet").write_bytes(b"PAR1")
    return []


def main_not_delta(main: Path, staging: Path, _tmp: Path) -> list[str]:
    write(staging, ct([0], [0]))
    main.mkdir()
    (main / "notes.txt").write_text("hello")
    return []


def plain(*extra: str) -> Setup:
    def setup(main: Path, staging: Path, _tmp: Path) -> list[str]:
        ct_pair(main, staging)
        return list(extra)

    return setup


def staging_newer_protocol(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    newer_protocol(staging)
    return []


def main_newer_protocol(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    newer_protocol(main)
    return []


def list_key(main: Path, staging: Path, _tmp: Path) -> list[str]:
    ct_pair(main, staging)
    return ["--keys", "all_domains"]


CASES: dict[str, tuple[Setup, str]] = {
    "staging is main": (same, "same location or one is inside the other"),
    "staging inside main": (staging_inside_main, "same location or one is inside the other"),
    "main inside staging": (main_inside_staging, "same location or one is inside the other"),
    "missing key column": (plain("--keys", "source_url,nope"), "staging has no key column nope"),
    "key column of another type": (
        key_of_another_type,
        r"column types differ: id \(main long, staging string\)",
    ),
    "key column of an unsupported type": (list_key, "all_domains in staging has type array"),
    "NULL keys": (null_keys, "NULL in key column id: 1 rows"),
    "unknown URI scheme": (
        plain("--staging", "ftp://host/staging"),
        "unsupported URI scheme 'ftp'",
    ),
    "credentials in the URI": (
        plain("--staging", "s3://b/x?X-Amz-Signature=abc"),
        "query strings are not allowed",
    ),
    "staging is a file": (staging_is_a_file, "is a file, not a table directory"),
    "main is a file": (main_is_a_file, "is a file, not a table directory"),
    "staging is not a Delta table": (staging_not_delta, "staging .* is not a Delta table"),
    "main is not a Delta table": (main_not_delta, "main .* is not a Delta table"),
    "negative batch size": (plain("--batch-rows", "-5"), "--batch-rows must be a positive"),
    "zero batch size": (plain("--batch-rows", "0"), "--batch-rows must be a positive"),
    "batch size not a number": (plain("--batch-rows", "many"), "invalid int value: 'many'"),
    "empty key list": (plain("--keys", ""), "--keys must list one or more column names"),
    "a key named twice": (
        plain("--keys", "cert_index,cert_index"),
        "--keys names cert_index more than once",
    ),
    "extra column": (
        schema_pair(pa.table({"id": [2], "v": ["b"], "x": [1]})),
        "staging has columns main lacks: x",
    ),
    "missing column": (schema_pair(pa.table({"id": [2]})), "main has columns staging lacks: v"),
    "changed type": (
        schema_pair(pa.table({"id": [2], "v": [1.5]})),
        r"column types differ: v \(main string, staging double\)",
    ),
    "staging with a newer Delta protocol": (
        staging_newer_protocol,
        "does not support: .*aFeatureFromTheFuture",
    ),
    "main with a newer Delta protocol": (
        main_newer_protocol,
        "does not support: .*aFeatureFromTheFuture",
    ),
    "malformed storage option": (
        plain("--storage-option", "AWS_REGION"),
        "--storage-option needs KEY=VALUE",
    ),
    "unknown log format": (plain("--log-format", "xml"), "invalid choice: 'xml'"),
    # issue 29: every option value checked before anything starts
    "key memory not a number": (plain("--key-memory", "nan"), "--key-memory must be a positive"),
    "infinite key memory": (plain("--key-memory", "inf"), "--key-memory must be a positive"),
    "key memory past any machine": (plain("--key-memory", "1e400"), "must be a positive size"),
    "retries not a number": (
        plain("--storage-option", "max_retries=abc"),
        "storage option max_retries: 'abc' is not a whole number",
    ),
    "retry timeout not a duration": (
        plain("--storage-option", "retry_timeout=forever"),
        "retry_timeout: cannot read 'forever' as a duration",
    ),
    "connect timeout not a duration": (
        plain("--storage-option", "connect_timeout=abc"),
        "connect_timeout: the store cannot use the value 'abc' \\(not a duration\\)",
    ),
    "allow_http not a boolean": (
        plain("--storage-option", "allow_http=maybe"),
        "allow_http: the store cannot use the value 'maybe' \\(not a boolean\\)",
    ),
    "unknown storage option": (
        plain("--storage-option", "aws_secret_acces_key=x"),
        "unknown storage option aws_secret_acces_key",
    ),
    "a % in a local path": (plain("--main", "/tmp/main%41x"), "a '%' in a table path"),
    "a password in an Azure URI": (
        plain("--staging", "abfss://c:KEY@acct.dfs.core.windows.net/s"),
        "a password in the URI is not allowed",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(tmp_path, case):
    setup, message = CASES[case]
    main, staging = tmp_path / "main", tmp_path / "staging"
    extra = setup(main, staging, tmp_path)
    before = tree_hash(tmp_path)

    args = ["--main", str(main), "--staging", str(staging), *extra]
    result = run_cli(*args)

    assert result.code == 2, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    error = result.error_lines[0]
    assert "\n" not in error
    assert re.search(message, error), error
    assert result.metrics["outcome"] == Outcome.INVALID_INPUT
    assert tree_hash(tmp_path) == before


def test_there_are_at_least_fifteen_cases():
    assert len(CASES) >= 15


def test_bad_input_never_writes(tmp_path):
    """A refused run leaves a missing main missing (it is created only once input is valid)."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write_deltalake(
        str(staging), pa.table({"id": [None, 1]}, schema=pa.schema([("id", pa.int64())]))
    )
    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")
    assert result.code == 2 and not main.exists()
