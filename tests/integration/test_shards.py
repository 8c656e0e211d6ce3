"""One merge over N processes (`--shard i/N`), on real tables, local and on S3: the shards
insert exactly the union between them, staging is deleted once and only after the last,
a shard killed half-way is rerun without loss or duplicate."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess

import pyarrow as pa
import pytest

from stagingmerge_merger.contract import SHARDS_DIR, Outcome
from tests.helpers import CLI, CliResult, ct, expected_union, run_cli

pytestmark = pytest.mark.parametrize(
    "store", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


def staged(store, parts: int = 4, rows: int = 60) -> tuple:
    """main holds every third position of logs 0-2; staging repeats some keys across files."""
    main_rows = ct([0, 1, 2] * 40, [3 * (i // 3) for i in range(120)], seed=1)
    store.write("main", main_rows)
    parts_written = []
    for part in range(parts):
        table = ct([0, 1, 2] * (rows // 3), [part * 15 + i // 3 for i in range(rows)], seed=part)
        store.write("staging", table)
        parts_written.append(table)
    return main_rows, pa.concat_tables(parts_written)


def shard_run(store, shard: str, *extra: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cli(
        "--main", store.uri("main"), "--staging", store.uri("staging"), "--shard", shard,
        "--batch-rows", "20", *extra, env={**store.env, **(env or {})},
    )  # fmt: skip


def at_once(store, count: int, *extra: str) -> list[CliResult]:
    """All shards as concurrent processes, the way an Indexed Job runs them."""
    procs = [
        subprocess.Popen(
            [
                CLI,
                "--log-format",
                "json",
                "--main",
                store.uri("main"),
                "--staging",
                store.uri("staging"),
                "--shard",
                f"{i}/{count}",
                "--batch-rows",
                "20",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **store.env},
        )
        for i in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(
            CliResult(proc.returncode, out, err, json.loads(out.strip().splitlines()[-1]))
        )
    return results


SPREAD = "staging's files are not laid out by key"


def summed(results: list[CliResult], key: str) -> int:
    return sum(int(r.metrics[key]) for r in results)


def test_shards_at_once_insert_exactly_the_union_and_delete_staging_once(store):
    main_rows, staging_rows = staged(store)
    results = at_once(store, 3)

    assert [r.code for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    new = store.rows("main").num_rows - main_rows.num_rows
    assert summed(results, "inserted") == new
    assert summed(results, "staging_rows") == staging_rows.num_rows
    assert (
        summed(results, "inserted")
        + summed(results, "skipped_existing")
        + summed(results, "skipped_duplicates")
        == staging_rows.num_rows
    )
    assert sorted(r.metrics["shard"] for r in results) == ["0/3", "1/3", "2/3"]
    assert [r.metrics["staging_deleted"] for r in results].count(True) == 1
    assert max(r.metrics["shards_done"] for r in results) == 3
    # shards commit side by side but never trip over each other's keys: whatever commits
    # landed between a shard's catch-up and its commit, only their files are read
    assert all(r.metrics["main_key_scans"] == 1 for r in results)
    assert summed(results, "duplicates_repaired") == 0
    assert not store.exists("staging")


def test_a_shard_killed_mid_run_is_rerun_and_the_last_shard_deletes_staging(store):
    main_rows, staging_rows = staged(store)
    first = shard_run(store, "0/2")
    assert first.code == 0 and not first.metrics["staging_deleted"]
    killed = shard_run(store, "1/2", env={"STAGINGMERGE_FAILPOINT": "batch-after-commit"})
    assert killed.code == -9 and store.exists("staging")

    again = shard_run(store, "1/2")
    assert again.code == 0, again.stderr[-2000:]
    assert again.metrics["staging_deleted"] and again.metrics["shards_done"] == 2
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    assert not store.exists("staging")
    # a rerun of any shard now: nothing to merge, main untouched
    late = shard_run(store, "0/2")
    assert late.code == 0 and late.metrics["outcome"] == Outcome.NOTHING_TO_MERGE
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))


def test_every_shard_can_rerun_after_all_merged_with_keep_staging(store):
    main_rows, staging_rows = staged(store, parts=2)
    for _ in range(2):
        results = [shard_run(store, f"{i}/2", "--keep-staging") for i in range(2)]
        assert all(r.code == 0 for r in results)
    assert summed(results, "inserted") == 0  # the second round found everything merged
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    assert store.exists("staging")


def test_a_dry_run_of_shards_writes_nothing_anywhere(store):
    main_rows, staging_rows = staged(store, parts=2)
    before = store.objects("staging")
    results = [shard_run(store, f"{i}/2", "--dry-run") for i in range(2)]
    assert all(r.code == 0 and r.metrics["outcome"] == Outcome.DRY_RUN for r in results)
    union = expected_union(main_rows, staging_rows)
    assert summed(results, "inserted") == union.num_rows - main_rows.num_rows
    assert store.objects("staging") == before
    assert store.keys("main") == sorted(
        zip(main_rows["source_url"].to_pylist(), main_rows["cert_index"].to_pylist(), strict=True)
    )


def test_shards_of_an_empty_staging_delete_it_once(store):
    store.write("main", ct([0], [0], seed=1))
    store.write("staging", ct([0], [0], seed=1).slice(0, 0))
    results = at_once(store, 2)
    assert all(r.code == 0 and r.metrics["outcome"] == Outcome.NOTHING_TO_MERGE for r in results)
    assert [r.metrics["staging_deleted"] for r in results].count(True) == 1
    assert not store.exists("staging")


@pytest.mark.parametrize("features", [False, True])
def test_shards_into_a_missing_main_create_it_once(store, features):
    """Both shards find main missing and race to create it. `features`: staging has a
    timestamp_ntz column and a NOT NULL one, so main's protocol
    lists table features, and the shards that race to create main also race to declare
    the `invariants` feature its NOT NULL column implies."""
    staging_rows = ct([0, 1] * 30, [i // 2 for i in range(60)], seed=3)
    if features:
        at = pa.array([dt.datetime(2026, 1, 1)] * 60, pa.timestamp("us"))  # timestamp_ntz
        staging_rows = staging_rows.append_column("logged_at", at)
        strict = staging_rows.schema.set(1, staging_rows.schema.field(1).with_nullable(False))
        staging_rows = staging_rows.cast(strict)
    store.write("staging", staging_rows)
    results = at_once(store, 2)
    assert [r.code for r in results] == [0, 0], [r.metrics.get("error") for r in results]
    if features:
        protocol = store.table("main").protocol()
        assert {"invariants", "timestampNtz"} <= set(protocol.writer_features or [])
    # the shard that lost the race for version 0 did not commit its create again as
    # version 1 (delta-rs retries a create's commit unless told not to): one table id
    # throughout (read version by version: moto does not answer history()'s listing)
    latest = store.table("main").version()
    ids = {store.table_at("main", v).metadata().id for v in range(latest + 1)}
    assert len(ids) == 1, ids
    assert store.keys("main") == sorted(
        zip(
            staging_rows["source_url"].to_pylist(),
            staging_rows["cert_index"].to_pylist(),
            strict=True,
        )
    )
    assert summed(results, "inserted") == 60


def test_a_large_staging_shards_by_the_first_recorded_plan(store, tmp_path):
    """Past the planning sample the cuts depend on read order: the first shard records
    them, and every other shard (here with a different sample size, so different cuts of
    its own) uses the recorded ones."""
    main_rows, staging_rows = staged(store, parts=6)
    first = shard_run(store, "0/3", "--key-sample-rows", "7")
    assert first.code == 0 and first.metrics["shards_done"] == 1
    recorded = [o for o in store.objects("staging") if o.startswith(SHARDS_DIR)]
    assert any(o.endswith("plan.arrows") for o in recorded), recorded
    rest = [shard_run(store, f"{i}/3", "--key-sample-rows", "13") for i in (1, 2)]
    assert all(r.code == 0 for r in rest)
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    assert not store.exists("staging") and rest[-1].metrics["staging_deleted"]


def test_staging_written_between_shards_is_kept_and_a_rerun_merges_the_rest(store):
    """Shard 0 merges version v; a writer appends to staging; shard 1 then plans version
    v+1 afresh. Nobody deletes staging (no version has every shard done), nothing is
    lost, and running every shard again merges what is left and deletes staging."""
    main_rows, staging_rows = staged(store, parts=2)
    first = shard_run(store, "0/2")
    late = ct([0, 1, 2] * 10, [500 + i // 3 for i in range(30)], seed=99)
    store.write("staging", late)
    second = shard_run(store, "1/2")
    assert first.code == second.code == 0
    assert first.metrics["staging_version"] != second.metrics["staging_version"]
    assert not first.metrics["staging_deleted"] and not second.metrics["staging_deleted"]
    assert store.exists("staging")
    again = [shard_run(store, f"{i}/2") for i in range(2)]
    assert all(r.code == 0 for r in again)
    assert [r.metrics["staging_deleted"] for r in again].count(True) == 1
    everything = pa.concat_tables([staging_rows, late])
    assert store.rows("main").equals(expected_union(main_rows, everything))


def test_shards_of_a_staging_written_in_key_order_cut_it_by_file_statistics(store):
    """One log's backfill, each file a run of rising cert_index: the cuts come from the
    log's file statistics (no shard reads staging's other keys to place them), the shards
    split the rows evenly, and they insert exactly the union."""
    main_rows = ct([0] * 40, list(range(0, 80, 2)), seed=1)
    store.write("main", main_rows)
    parts = [ct([0] * 30, list(range(part * 30, part * 30 + 30)), seed=part) for part in range(4)]
    for part in parts:
        store.write("staging", part)
    staging_rows = pa.concat_tables(parts)
    results = at_once(store, 3)
    assert all(r.code == 0 for r in results), [r.stderr for r in results]
    planned = [
        json.loads(line)
        for r in results
        for line in r.stderr.splitlines()
        if '"shard planned"' in line
    ]
    assert {p["cuts_from"] for p in planned} == {"file statistics"}
    assert not any(SPREAD in r.stderr for r in results)  # each reads only its own files
    assert sorted(int(r.metrics["staging_rows"]) for r in results) == [40, 40, 40]
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    assert summed(results, "inserted") == 120 - 40  # main held the 40 even ones below 80
    assert not store.exists("staging")


def test_shards_of_a_staging_whose_files_mix_the_key_space_say_each_reads_all_of_it(store):
    """Every staging file holds all three logs: a shard's span meets every file, so each
    shard reads all of staging's rows to merge its part. The merge is exact and each shard
    warns, naming the rows it reads and the rows it merges."""
    main_rows, staging_rows = staged(store)
    results = at_once(store, 2)
    assert [r.code for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert store.rows("main").equals(expected_union(main_rows, staging_rows))
    warnings = [
        json.loads(line) for r in results for line in r.stderr.splitlines() if SPREAD in line
    ]
    assert [w["level"] for w in warnings] == ["warning", "warning"]
    assert [w["staging_rows_read"] for w in warnings] == [staging_rows.num_rows] * 2
    assert sum(w["staging_rows"] for w in warnings) == staging_rows.num_rows
