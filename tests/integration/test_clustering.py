"""`stagingmerge-cluster` on real tables, run as a process: local folders and S3 (moto).

Main is laid out as a live writer leaves it: day partitions (`seen_date`), several files
per day, every file mixing all logs. After clustering, every row is still there exactly
once (compared column by column), the partitions it rewrote are recognised on the next
run, and an appender committing meanwhile keeps its rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger.contract import Outcome
from tests.e2e.harness import wait_for
from tests.helpers import CLUSTER_CLI, ct, rows, run_cli

DAYS, FILES_PER_DAY, LOGS = 4, 3, 8
LOG_SPAN = 10**10


def day_file(day: int, part: int, rows_per_file: int, seed: int) -> pa.Table:
    """One file of a live writer's day: every log, in arrival order; keys unique across
    (day, part) for parts of one size."""
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=day)
    base = (day * 1_000_000 + part) * rows_per_file // LOGS
    return ct(
        [i % LOGS for i in range(rows_per_file)],
        # each log at its own height of cert_index, as real logs are: a file's cert_index
        # statistics then span every log's, and prune nothing for a backfill
        [LOG_SPAN * (i % LOGS) + base + i // LOGS for i in range(rows_per_file)],
        seed=seed,
        seen_start=start + timedelta(seconds=part % 3600),
        seen_step=timedelta(microseconds=100),
    )


def live_main(uri: str, options: dict[str, str] | None = None, rows_per_file: int = 400) -> None:
    for day in range(DAYS):
        for part in range(FILES_PER_DAY):
            write_deltalake(
                uri,
                day_file(day, part, rows_per_file, seed=day * 10 + part),
                partition_by=["seen_date"],
                mode="append",
                storage_options=options,
            )


def cluster(uri: str, *args: str, env: dict[str, str] | None = None):
    return run_cli("--main", uri, *args, env=env, command=CLUSTER_CLI)


def files_per_day(uri: str, options: dict[str, str] | None = None) -> dict[str, int]:
    actions = pa.table(DeltaTable(uri, storage_options=options).get_add_actions(flatten=True))
    days = actions.column("partition.seen_date").to_pylist()
    return {d: days.count(d) for d in sorted(set(days))}


def test_every_day_but_the_newest_is_rewritten_once_and_keeps_every_row(tmp_path):
    main = str(tmp_path / "main")
    live_main(main)
    before, version = rows(main), DeltaTable(main).version()

    dry = cluster(main, "--dry-run")
    assert dry.code == 0 and dry.metrics["partitions_due"] == DAYS - 1
    assert DeltaTable(main).version() == version  # a dry run writes nothing

    first = cluster(main)
    assert first.code == 0, first.stderr
    m = first.metrics
    assert (m["outcome"], m["partitions"], m["partitions_skipped_newest"]) == (
        Outcome.CLUSTERED,
        4,
        1,
    )
    assert m["partitions_rewritten"] == DAYS - 1 and m["rows_rewritten"] == 3 * 3 * 400
    assert m["main_version_after"] == version + DAYS - 1  # one commit per partition
    assert rows(main).equals(before)
    layout = files_per_day(main)
    assert list(layout.values()) == [1, 1, 1, FILES_PER_DAY]  # the newest day untouched

    again = cluster(main)
    assert (again.code, again.metrics["outcome"]) == (0, Outcome.NOTHING_TO_DO)
    assert again.metrics["partitions_already_clustered"] == DAYS - 1
    assert DeltaTable(main).version() == m["main_version_after"]

    # a late arrival into an old day makes that day (and only it) due again
    oldest = sorted(layout)[0]
    write_deltalake(main, day_file(0, 100_000, 40, seed=99), mode="append")
    late = cluster(main)
    assert late.metrics["partitions_rewritten"] == 1
    assert files_per_day(main)[oldest] == 1
    assert cluster(main, "--skip-newest", "0").metrics["partitions_rewritten"] == 1  # newest


def test_max_partitions_takes_the_oldest_first(tmp_path):
    main = str(tmp_path / "main")
    live_main(main, rows_per_file=80)
    result = cluster(main, "--max-partitions", "2")
    assert result.code == 0 and result.metrics["partitions_rewritten"] == 2
    assert result.metrics["partitions_left"] == 1
    assert list(files_per_day(main).values()) == [1, 1, FILES_PER_DAY, FILES_PER_DAY]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "seen_date"], "partition columns cannot order"),
        (["--by", "nope"], "nope"),
        (["--skip-newest", "-1"], "--skip-newest"),
        (["--max-partitions", "0"], "--max-partitions"),
    ],
)
def test_bad_input_is_exit_2_and_changes_nothing(tmp_path, args, message):
    main = str(tmp_path / "main")
    live_main(main, rows_per_file=16)
    version = DeltaTable(main).version()
    result = cluster(main, *args)
    assert (result.code, result.metrics["outcome"]) == (2, Outcome.INVALID_INPUT)
    assert message in result.metrics["error"]
    assert DeltaTable(main).version() == version


def test_a_missing_main_is_exit_2(tmp_path):
    result = cluster(str(tmp_path / "nothing"))
    assert result.code == 2 and "not a Delta table" in result.metrics["error"]


def test_killed_after_a_partition_then_rerun_finishes_the_rest(tmp_path):
    main = str(tmp_path / "main")
    live_main(main, rows_per_file=80)
    before = rows(main)
    killed = cluster(main, env={"STAGINGMERGE_FAILPOINT": "cluster-after-commit:2"})
    assert killed.code == -signal.SIGKILL
    assert rows(main).equals(before)

    rerun = cluster(main)
    assert rerun.code == 0 and rerun.metrics["partitions_already_clustered"] == 2
    assert rerun.metrics["partitions_rewritten"] == DAYS - 1 - 2
    assert rows(main).equals(before)


def test_killed_mid_rewrite_loses_nothing(tmp_path):
    """SIGKILL as soon as the first partition is logged: the second is being rewritten."""
    main = str(tmp_path / "main")
    live_main(main, rows_per_file=2000)
    before = rows(main)
    proc = subprocess.Popen(
        [CLUSTER_CLI, "--log-format", "json", "--main", main],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"clustered"' in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGKILL, 0)  # it may have been quicker than the signal
    assert rows(main).equals(before)
    rerun = cluster(main)
    assert rerun.code == 0 and rows(main).equals(before)
    assert cluster(main).metrics["outcome"] == Outcome.NOTHING_TO_DO


def test_an_appender_committing_meanwhile_keeps_its_rows(tmp_path):
    """A writer appends into every day, old ones included, for as long as the clustering
    runs (and, to be sure it overlaps, at least twice while the run is held after its
    first commit); afterwards main holds the original rows plus exactly the appended ones."""
    main = str(tmp_path / "main")
    live_main(main, rows_per_file=3000)
    appended: list[pa.Table] = []
    done = threading.Event()

    def appender() -> None:
        n = 0
        while not done.is_set():
            batch = day_file(n % DAYS, 100_000 + n, 16, seed=1000 + n)
            write_deltalake(main, batch, mode="append")
            appended.append(batch)
            n += 1

    before = rows(main)
    pause = tmp_path / "pause"
    proc = subprocess.Popen(
        [CLUSTER_CLI, "--log-format", "json", "--main", main, "--skip-newest", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STAGINGMERGE_PAUSE": f"cluster-after-commit:{pause}"},
    )
    thread = threading.Thread(target=appender)
    thread.start()
    wait_for(lambda: pause.with_suffix(".waiting").exists() or proc.poll() is not None, 600)
    seen = len(appended)
    wait_for(lambda: len(appended) >= seen + 2, 600)
    pause.with_suffix(".go").touch()
    out, err = proc.communicate(timeout=300)
    done.set()
    thread.join()

    assert proc.returncode == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert m["partitions_rewritten"] + m["partitions_conflicted"] == DAYS
    expected = pa.concat_tables(
        [before, *(b.select(before.column_names).cast(before.schema) for b in appended)]
    )
    assert rows(main).equals(
        expected.sort_by([("source_url", "ascending"), ("cert_index", "ascending")])
    )


@pytest.mark.s3
def test_on_s3(s3_server, bucket):
    uri = f"s3://{bucket}/main"
    live_main(uri, s3_server.options, rows_per_file=80)
    before = rows(uri, options=s3_server.options)
    env = {**os.environ, **s3_server.options}
    result = cluster(uri, env=env)
    assert result.code == 0, result.stderr
    assert result.metrics["partitions_rewritten"] == DAYS - 1
    assert rows(uri, options=s3_server.options).equals(before)
    assert cluster(uri, env=env).metrics["outcome"] == Outcome.NOTHING_TO_DO


# --- what the merge reports about main's layout ---------------------------------------


def key_chunk_bytes(main: str) -> dict[str, int]:
    """Each data file's key-column bytes, from its footer (pyarrow, on the local file)."""
    import pyarrow.parquet as pq

    found = {}
    for path in pa.table(DeltaTable(main).get_add_actions(flatten=True)).column("path"):
        meta = pq.read_metadata(f"{main}/{path.as_py()}")
        found[path.as_py()] = sum(
            meta.row_group(g).column(c).total_compressed_size
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
            if meta.row_group(g).column(c).path_in_schema in ("source_url", "cert_index")
        )
    return found


def test_the_merge_reports_main_reads_and_points_at_clustering(tmp_path):
    main, staging = str(tmp_path / "main"), str(tmp_path / "staging")
    live_main(main, rows_per_file=800)
    # the oldest stretch of one log, as a backfill: half of it is in main already
    old = day_file(0, 0, 800, seed=5)
    log7 = old.filter(pa.compute.equal(old["source_url"], old["source_url"][LOGS - 1]))
    write_deltalake(staging, log7)
    write_deltalake(
        staging,
        ct([LOGS - 1] * 100, [LOG_SPAN * (LOGS - 1) + 10**9 + i for i in range(100)]),
        mode="append",
    )

    def dry_merge():
        return run_cli(
            *("--main", main, "--staging", staging, "--keep-staging", "--dry-run"),
            env={"STAGINGMERGE_UNCLUSTERED_WARN_BYTES": "1"},  # any read counts, for the test
        )

    unclustered = dry_merge()
    m = unclustered.metrics
    chunks = key_chunk_bytes(main)
    assert unclustered.code == 0 and m["main_key_scans"] == 1
    assert m["main_files"] == m["main_files_scanned"] == len(chunks) == DAYS * FILES_PER_DAY
    assert m["main_key_bytes_read"] == sum(chunks.values())
    assert "stagingmerge-cluster --main" in unclustered.stderr

    assert cluster(main, "--skip-newest", "0", "--target-size", "16K").code == 0
    clustered = dry_merge()
    c = clustered.metrics
    assert (c["skipped_existing"], c["inserted"]) == (m["skipped_existing"], m["inserted"])
    assert c["main_files"] > DAYS and c["main_files_scanned"] < c["main_files"] / 2
    assert c["main_key_bytes_read"] < m["main_key_bytes_read"] / 2
    assert "stagingmerge-cluster --main" not in clustered.stderr


def test_a_partition_whose_rewrite_conflicts_is_left_for_the_next_run(tmp_path, monkeypatch):
    """A conflicting commit cannot be timed from outside delta-rs, so the conflict is injected
    (the only mock here): that partition is skipped and counted, the next run rewrites it."""
    from stagingmerge_merger.clustering import ClusterMetrics, ClusterRequest, run_cluster
    from stagingmerge_merger.delta import CommitConflictError, Table
    from stagingmerge_merger.storage import parse_location

    main = str(tmp_path / "main")
    live_main(main, rows_per_file=16)
    real, calls = Table.z_order, []

    def first_conflicts(self, *args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise CommitConflictError("injected: another rewrite of these files committed first")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Table, "z_order", first_conflicts)
    request = ClusterRequest(main=parse_location(main))
    first = run_cluster(request, ClusterMetrics())
    assert (first.outcome, first.partitions_conflicted, first.partitions_rewritten) == (
        Outcome.CLUSTERED,
        1,
        DAYS - 2,
    )
    second = run_cluster(request, ClusterMetrics())
    assert second.partitions_rewritten == 1 and calls[-1] == calls[0]  # the one that conflicted

    monkeypatch.setattr(
        Table, "z_order", lambda *a, **k: (_ for _ in ()).throw(CommitConflictError("injected"))
    )
    write_deltalake(main, day_file(0, 100_000, 16, seed=3), mode="append")
    assert run_cluster(request, ClusterMetrics()).outcome == Outcome.CONFLICTED
