"""The merge matrix on every store: a local folder and S3 (moto's real S3 API on loopback).

The CLI runs as a process; for S3 it finds the endpoint and credentials in the
standard AWS_* environment variables, as it would from a Kubernetes Secret.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from stagingmerge_merger.contract import Outcome
from tests.helpers import ct, expected_union, run_cli
from tests.s3 import SECRET_KEY


def merge(store, *args: str, main: str = "main", staging: str = "staging"):
    return run_cli("--main", store.uri(main), "--staging", store.uri(staging), *args, env=store.env)


def test_inserts_skips_and_deduplicates(store):
    main_rows = ct([0, 1] * 5, [i // 2 for i in range(10)], seed=1)
    first = ct([0, 1, 0, 0], [3, 7, 8, 8], seed=2)
    later = ct([1, 1], [7, 9], seed=3)
    store.write("main", main_rows, partition_by=["seen_date"])
    store.write("staging", first)
    store.write("staging", later)

    result = merge(store, "--batch-rows", "4")

    assert result.code == 0, result.stderr
    m = result.metrics
    assert (m["inserted"], m["skipped_existing"], m["skipped_duplicates"]) == (3, 1, 2)
    assert store.rows("main").equals(expected_union(main_rows, pa.concat_tables([first, later])))
    assert m["staging_deleted"] and not store.exists("staging")


def test_rerun_is_idempotent(store):
    store.write("main", ct([0] * 3, range(3), seed=1))
    store.write("staging", ct([0] * 4, range(2, 6), seed=2))
    assert merge(store, "--keep-staging").code == 0
    before = (store.rows("main"), store.table("main").version())

    again = merge(store, "--keep-staging")

    assert again.code == 0 and again.metrics["inserted"] == 0
    assert store.table("main").version() == before[1]
    assert store.rows("main").equals(before[0])


def test_missing_and_empty_staging_are_nothing_to_merge(store):
    store.write("main", pa.table({"id": [1]}))
    missing = merge(store, "--keys", "id")
    DeltaTable.create(
        store.uri("staging"), pa.schema([("id", pa.int64())]), storage_options=store.options or None
    )
    empty = merge(store, "--keys", "id")
    assert (missing.code, missing.metrics["outcome"]) == (0, Outcome.NOTHING_TO_MERGE)
    assert (empty.code, empty.metrics["outcome"]) == (0, Outcome.NOTHING_TO_MERGE)
    assert not store.exists("staging") and store.table("main").version() == 0


def test_missing_main_is_created(store):
    staging_rows = ct([0, 1, 0], [1, 1, 1], seed=4)
    store.write("staging", staging_rows)
    result = merge(store)
    assert result.code == 0 and result.metrics["main_created"]
    assert store.table("main").metadata().partition_columns == ["seen_date"]
    assert len(store.keys("main")) == 2


def test_deleting_staging_leaves_siblings_alone(store):
    store.write("lake/main", ct([0], [0], seed=1))
    store.write("lake/run-a", ct([0], [1], seed=2))
    store.write("lake/run-a-sibling", ct([0], [2], seed=3))
    store.write("lake/run-a2", ct([0], [3], seed=4))
    siblings = store.objects("lake/run-a-sibling") + store.objects("lake/run-a2")
    files = len(store.objects("lake/run-a"))

    result = merge(store, main="lake/main", staging="lake/run-a")

    assert result.code == 0, result.stderr
    assert result.metrics["staging_objects_deleted"] == files + 1  # + the completion marker
    assert not store.exists("lake/run-a")
    assert store.objects("lake/run-a-sibling") + store.objects("lake/run-a2") == siblings


def test_allow_list_refuses_to_delete_elsewhere(store):
    store.write("main", ct([0], [0], seed=1))
    store.write("staging", ct([0], [1], seed=2))
    env = {**store.env, "STAGINGMERGE_ALLOWED_PREFIXES": store.uri("backfills")}
    result = run_cli("--main", store.uri("main"), "--staging", store.uri("staging"), env=env)
    assert result.code == 2
    assert "outside STAGINGMERGE_ALLOWED_PREFIXES" in result.error_lines[0]
    assert store.exists("staging") and store.table("main").version() == 0


@pytest.mark.s3
def test_options_on_the_command_line_work_too(s3_server, bucket):
    from tests.stores import Store

    store = Store("s3", f"s3://{bucket}", options=s3_server.options, server=s3_server)
    store.write("staging", ct([0], [1]))
    args = [
        arg
        for key, value in s3_server.options.items()
        for arg in ("--storage-option", f"{key}={value}")
    ]
    env = {k: "" for k in s3_server.env}  # nothing from the environment
    result = run_cli("--main", store.uri("main"), "--staging", store.uri("staging"), *args, env=env)
    assert result.code == 0, result.stderr
    assert SECRET_KEY not in result.stdout + result.stderr
    assert store.keys("main") and not store.exists("staging")
