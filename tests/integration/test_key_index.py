"""The key-range index through the real CLIs, on every store: `stagingmerge-index` builds
it, resumably; a merge into a live-writer main (every file mixing all logs, so the Delta
statistics prune nothing) reads only the files that can hold staging's keys; and an index
that is truncated, random, another table's, forged or stale costs time, never a key —
each merge is judged against the same merge into an identical main without an index,
over every column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger import rangeindex
from stagingmerge_merger.contract import KEY_INDEX_DIR, Outcome
from stagingmerge_merger.storage import Prefix, parse_location
from tests.helpers import ct, run_cli

INDEX_CLI = str(Path(sys.executable).with_name("stagingmerge-index"))
COMMITS = 6
PER_LOG = 100  # rows of each log in each commit
KEYS = ["source_url", "cert_index"]
HEIGHT = 10**6  # log L's cert_index starts at L * HEIGHT: every file spans all of them


def live_main(store, name: str) -> str:
    """A main as a live writer leaves it: each commit one file of logs 0-2 interleaved in
    arrival order, each log at its own height."""
    for commit in range(COMMITS):
        pairs = [
            (log, log * HEIGHT + commit * PER_LOG + i) for i in range(PER_LOG) for log in range(3)
        ]
        store.write(name, ct([p[0] for p in pairs], [p[1] for p in pairs], seed=commit))
    return store.uri(name)


def backfill(store, name: str) -> str:
    """Log 1's entries from the middle of main's last commit on: half in main already."""
    start = HEIGHT + (COMMITS - 1) * PER_LOG + PER_LOG // 2
    indexes = list(range(start, start + PER_LOG))
    store.write(name, ct([1] * len(indexes), indexes, seed=99))
    return store.uri(name)


def index(store, name: str, *args: str):
    return run_cli("--main", store.uri(name), *args, env=store.env, command=INDEX_CLI)


def merge(store, main: str, *args: str):
    return run_cli(
        "--main", store.uri(main), "--staging", store.uri("staging"), "--keep-staging", *args,
        env=store.env,
    )  # fmt: skip


def objects(store, name: str) -> Prefix:
    return Prefix(parse_location(store.uri(name)), store.options)


def index_files(store, name: str) -> list[str]:
    return sorted(n for n, _ in objects(store, name).list(KEY_INDEX_DIR))


def test_the_index_prunes_what_statistics_cannot_and_the_merge_is_exact(store):
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")

    built = index(store, "indexed")
    assert built.code == 0, built.stderr
    assert built.metrics["outcome"] == Outcome.INDEXED
    assert (
        built.metrics["files_indexed"] == COMMITS
        and built.metrics["entries_written"] == 3 * COMMITS
    )
    again = index(store, "indexed")
    assert again.metrics["outcome"] == Outcome.NOTHING_TO_DO
    assert again.metrics["files_already_indexed"] == COMMITS

    fast, plain = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert fast.code == plain.code == 0, fast.stderr + plain.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    assert fast.metrics["inserted"] == plain.metrics["inserted"] == PER_LOG // 2
    # the statistics of every file span log 1's range; the index leaves only the last one
    assert plain.metrics["main_files_scanned"] == COMMITS
    assert plain.metrics["main_files_pruned_by_index"] == 0
    assert fast.metrics["main_files_scanned"] == 1
    assert fast.metrics["main_files_pruned_by_index"] == COMMITS - 1
    assert fast.metrics["key_index_bytes_read"] > 0


# storage-independent behaviour: local and S3 cover the two kinds (the main test runs on all)
LOCAL_AND_S3 = pytest.mark.parametrize(
    "store", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


@LOCAL_AND_S3
def test_indexing_resumes_and_a_dry_run_writes_nothing(store):
    live_main(store, "main")
    dry = index(store, "main", "--dry-run")
    assert dry.code == 0 and dry.metrics["outcome"] == Outcome.DRY_RUN
    assert dry.metrics["files_indexed"] == COMMITS and index_files(store, "main") == []
    first = index(store, "main", "--files-per-pass", "4")
    assert first.metrics["index_files_written"] == 2
    one = index_files(store, "main")[0]
    objects(store, "main").delete(f"{KEY_INDEX_DIR}/{one}")  # as if the run died after one
    rest = index(store, "main", "--files-per-pass", "4")
    assert rest.metrics["files_already_indexed"] + rest.metrics["files_indexed"] == COMMITS
    assert 0 < rest.metrics["files_indexed"] < COMMITS


def test_indexing_a_main_it_cannot_serve_is_refused(tmp_path):
    main = tmp_path / "main"
    write_deltalake(str(main), ct([0, 1], [1, 2], seed=1), partition_by=["source_url"])
    refused = run_cli("--main", str(main), command=INDEX_CLI)
    assert refused.code == 2 and refused.metrics["outcome"] == Outcome.INVALID_INPUT
    assert "partition column" in refused.metrics["error"]


def _truncated(store, name: str) -> None:
    prefix = objects(store, name)
    for file in index_files(store, name):
        data = prefix.read(f"{KEY_INDEX_DIR}/{file}")
        assert data is not None
        prefix.put(f"{KEY_INDEX_DIR}/{file}", data[: len(data) // 2])


def _random(store, name: str) -> None:
    prefix = objects(store, name)
    for file in index_files(store, name):
        prefix.delete(f"{KEY_INDEX_DIR}/{file}")
    data = os.urandom(4096)
    prefix.put(f"{KEY_INDEX_DIR}/{rangeindex.file_name(data, 5)}", data)


def _other_table(store, name: str) -> None:
    """The index of another main (same data, same file names are not: another table id)."""
    live_main(store, "other")
    assert index(store, "other").code == 0
    prefix, other = objects(store, name), objects(store, "other")
    for file in index_files(store, name):
        prefix.delete(f"{KEY_INDEX_DIR}/{file}")
    for file in index_files(store, "other"):
        data = other.read(f"{KEY_INDEX_DIR}/{file}")
        assert data is not None
        prefix.put(f"{KEY_INDEX_DIR}/{file}", data)


def _forged(store, name: str) -> None:
    """Well-formed files of this table whose entries say log 1 lies elsewhere in every
    file, with counts that do not add up to the log's."""
    table = DeltaTable(store.uri(name), storage_options=store.options or None)
    prefix = objects(store, name)
    for file in index_files(store, name):
        data = prefix.read(f"{KEY_INDEX_DIR}/{file}")
        assert data is not None
        schema = rangeindex.entry_schema(_key_schema(table))
        entries = rangeindex.decode(file, data, table.metadata().id, KEYS, schema)
        for column, value in (("low", 0), ("high", 1), ("rows", 1)):
            at = entries.schema.get_field_index(column)
            values = pa.array([value] * entries.num_rows, pa.int64())
            entries = entries.set_column(at, entries.schema.field(at), values)
        prefix.delete(f"{KEY_INDEX_DIR}/{file}")
        rangeindex.write(prefix, entries, table.metadata().id, KEYS, 1)


def _stale(store, name: str) -> None:
    """main rewritten after it was indexed (OPTIMIZE): every file is new, none indexed."""
    table = DeltaTable(store.uri(name), storage_options=store.options or None)
    table.optimize.compact()


def _key_schema(table: DeltaTable) -> pa.Schema:
    schema = pa.schema(table.schema().to_arrow())
    return pa.schema([pa.field(n, schema.field(n).type) for n in KEYS])


BREAKAGES = {
    "truncated": _truncated,
    "random bytes": _random,
    "another table's": _other_table,
    "forged counts": _forged,
    "stale after OPTIMIZE": _stale,
}


@LOCAL_AND_S3
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_index_costs_time_never_a_key(store, breakage):
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")
    assert index(store, "indexed").code == 0
    BREAKAGES[breakage](store, "indexed")
    if breakage == "stale after OPTIMIZE":
        DeltaTable(store.uri("plain"), storage_options=store.options or None).optimize.compact()
    got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert got.code == want.code == 0, got.stderr + want.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    assert got.metrics["main_files_pruned_by_index"] == 0
    assert got.metrics["inserted"] == want.metrics["inserted"] == PER_LOG // 2


def test_a_kill_while_indexing_leaves_nothing_that_misleads(tmp_path):
    """kill -9 after the first pass: the passes written stay, a torn file (as a store
    without atomic puts leaves one) is ignored, the merge is exact and a rerun resumes."""
    from tests.stores import Store

    store = Store("local", str(tmp_path))
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")
    argv = [
        INDEX_CLI,
        "--log-format",
        "json",
        "--main",
        store.uri("indexed"),
        "--files-per-pass",
        "1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # progress, not time: the first pass is written
        if '"event": "indexed"' in line:
            break
    proc.kill()
    proc.communicate()
    folder = tmp_path / "indexed" / KEY_INDEX_DIR
    whole = sorted(folder.iterdir())
    assert whole
    torn = whole[0].read_bytes()[:100]
    (folder / rangeindex.file_name(whole[0].read_bytes() + b"x", 9)).write_bytes(torn)
    got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert got.code == want.code == 0, got.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    rest = index(store, "indexed")
    assert rest.code == 0 and rest.metrics["index_files_ignored"] == 1
    assert rest.metrics["files_already_indexed"] >= len(whole)


@LOCAL_AND_S3
def test_two_indexers_at_once_and_vacuum_leave_a_usable_index(store):
    """Two `stagingmerge-index` runs at once (two CronJobs, a manual run) each write their
    own files, never over the other's; VACUUM leaves the index alone (it is under `_`)."""
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")
    argv = [INDEX_CLI, "--log-format", "json", "--main", store.uri("indexed")]
    env = {**os.environ, **store.env}
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    for run in runs:
        _out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    before = index_files(store, "indexed")
    assert before
    DeltaTable(store.uri("indexed"), storage_options=store.options or None).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )
    assert index_files(store, "indexed") == before
    got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert got.code == want.code == 0, got.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    assert got.metrics["main_files_pruned_by_index"] == COMMITS - 1


@LOCAL_AND_S3
def test_merges_keep_an_index_current(store):
    """A main that has an index: the files a merge reads that have no entry (written since
    the index was built, its own commits included) get one, so the next merge skips them;
    a dry run reads the index and writes none."""
    live_main(store, "indexed")
    live_main(store, "plain")
    assert index(store, "indexed").code == 0
    top = HEIGHT + COMMITS * PER_LOG
    runs = []
    for number, (low, high) in enumerate([(top, top + 50), (top + 25, top + 75), (top, top + 10)]):
        indexes = list(range(low, high))
        store.write("staging", ct([1] * len(indexes), indexes, seed=number), mode="overwrite")
        if number == 2:
            dry = merge(store, "indexed", "--dry-run")
            assert dry.metrics["key_index_entries_written"] == 0
        got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
        assert got.code == want.code == 0, got.stderr
        assert store.rows("indexed").equals(store.rows("plain"))
        runs.append(got.metrics)
    # the first merge's commit is read by the second, which indexes it (one log: one entry)
    assert runs[0]["key_index_entries_written"] == 0
    assert runs[1]["key_index_entries_written"] >= 1
    # the third's range lies in the first merge's file only: every other file is skipped
    assert runs[2]["main_files_scanned"] == 1


@LOCAL_AND_S3
def test_merges_build_the_index_on_the_way_then_prune(store):
    """A main nobody indexed: while most files have no entry, delta-rs scans as without an
    index and each merge indexes a sample of them besides; once the index rules out most
    files, a merge reads only the rest and indexes those; from then on it reads only the
    files that hold staging's keys. Every run gives exactly the table an unindexed main
    gets."""
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")
    runs = []
    for _ in range(2 * COMMITS):  # each run indexes at least one more file
        got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
        assert got.code == want.code == 0, got.stderr + want.stderr
        assert store.rows("indexed").equals(store.rows("plain"))
        runs.append(got.metrics)
        if got.metrics["key_index_entries_written"] == 0:
            break
    assert runs[0]["key_index_entries_written"] >= 1  # the first run already indexes a file
    assert runs[0]["main_files_pruned_by_index"] == 0
    assert runs[0]["inserted"] == PER_LOG // 2 and runs[-1]["inserted"] == 0
    # in the end only main's last live commit and the first merge's commit hold log 1's range
    last = runs[-1]
    assert last["main_files_scanned"] == 2
    assert last["main_files_pruned_by_index"] == COMMITS - 1
    assert last["key_index_entries_written"] == 0
    built = index(store, "indexed")
    assert built.metrics["outcome"] == Outcome.NOTHING_TO_DO, built.metrics


@LOCAL_AND_S3
def test_shards_at_once_each_add_to_the_index(store, tmp_path):
    """Two shards of one merge, held until both have read the (empty) index, then let go:
    each writes its own index file, never over the other's, and the index they leave is
    whole, usable, and the merge exact."""
    live_main(store, "indexed")
    live_main(store, "plain")
    backfill(store, "staging")
    env = {**os.environ, **store.env}
    runs, pauses = [], [tmp_path / f"shard{i}" for i in range(2)]
    for shard, pause in enumerate(pauses):
        argv = [
            str(Path(sys.executable).with_name("stagingmerge-merge")),
            "--log-format", "json", "--keep-staging", "--shard", f"{shard}/2",
            "--main", store.uri("indexed"), "--staging", store.uri("staging"),
        ]  # fmt: skip
        runs.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**env, "STAGINGMERGE_PAUSE": f"key-index-loaded:{pause}"},
            )
        )
    for run, pause in zip(runs, pauses, strict=True):
        while not Path(f"{pause}.waiting").exists():  # readiness, not time
            assert run.poll() is None, run.communicate()[1]
            time.sleep(0.05)
    for pause in pauses:
        Path(f"{pause}.go").touch()
    written = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        written.append(json.loads(out.strip().splitlines()[-1])["key_index_entries_written"])
    assert all(written), written
    assert len(index_files(store, "indexed")) == 2
    want = merge(store, "plain", "--no-key-index")
    assert want.code == 0 and store.rows("indexed").equals(store.rows("plain"))
    rest = index(store, "indexed", "--dry-run")
    assert rest.metrics["index_files_ignored"] == 0
    assert rest.metrics["files_already_indexed"] >= 1


@LOCAL_AND_S3
def test_a_clustered_file_is_read_by_row_group_and_left_unindexed(store):
    """An indexed main, then a file of sorted keys in 50-row row groups with string
    statistics truncated to 12 characters: the merge reads only the row groups whose
    statistics meet staging's ranges, exactly, and gives that file no entry (it was not
    read whole)."""
    from deltalake import WriterProperties

    live_main(store, "indexed")
    live_main(store, "plain")
    assert index(store, "indexed").code == 0
    ordered = [(log, log * HEIGHT + 10**5 + i) for log in range(3) for i in range(300)]
    rows = ct([p[0] for p in ordered], [p[1] for p in ordered], seed=42)
    props = WriterProperties(max_row_group_size=50, statistics_truncate_length=12)
    for name in ("indexed", "plain"):
        write_deltalake(
            store.uri(name), rows, mode="append", writer_properties=props,
            storage_options=store.options or None,
        )  # fmt: skip
    indexes = list(range(HEIGHT + 10**5 + 120, HEIGHT + 10**5 + 420))  # 180 held, 120 new
    store.write("staging", ct([1] * len(indexes), indexes, seed=7))
    got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert got.code == want.code == 0, got.stderr + want.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    assert got.metrics["inserted"] == want.metrics["inserted"] == 120
    assert got.metrics["main_files_scanned"] == 1  # the sorted file; every live one pruned
    assert got.metrics["main_files_pruned_by_index"] == COMMITS
    assert got.metrics["key_index_entries_written"] == 0


@LOCAL_AND_S3
def test_indexing_compacts_many_index_files_and_drops_stale_entries(store):
    """Merges and passes leave many small index files, which every merge reads: past
    eight, `stagingmerge-index` folds them into one (a dry run says it would, and writes
    nothing); after an OPTIMIZE it drops the rewritten files' entries. The merge through
    the compacted index is exact and prunes as before."""
    live_main(store, "indexed")
    live_main(store, "plain")
    first = index(store, "indexed", "--files-per-pass", "1")
    assert first.metrics["index_files_compacted"] == 0
    assert len(index_files(store, "indexed")) == COMMITS
    for commit in range(COMMITS, COMMITS + 3):  # the live writer goes on
        pairs = [
            (log, log * HEIGHT + commit * PER_LOG + i) for i in range(PER_LOG) for log in range(3)
        ]
        for name in ("indexed", "plain"):
            store.write(name, ct([p[0] for p in pairs], [p[1] for p in pairs], seed=commit))
    dry = index(store, "indexed", "--files-per-pass", "1", "--dry-run")
    assert dry.metrics["index_files_compacted"] == COMMITS + 3
    assert len(index_files(store, "indexed")) == COMMITS
    folded = index(store, "indexed", "--files-per-pass", "1")
    assert folded.code == 0, folded.stderr
    assert folded.metrics["files_indexed"] == 3
    assert folded.metrics["index_files_compacted"] == COMMITS + 3
    assert folded.metrics["entries_dropped"] == 0
    assert len(index_files(store, "indexed")) == 1
    backfill(store, "staging")
    got, want = merge(store, "indexed"), merge(store, "plain", "--no-key-index")
    assert got.code == want.code == 0, got.stderr + want.stderr
    assert store.rows("indexed").equals(store.rows("plain"))
    assert got.metrics["main_files_pruned_by_index"] >= COMMITS - 1

    DeltaTable(store.uri("indexed"), storage_options=store.options or None).optimize.compact()
    again = index(store, "indexed")
    assert again.code == 0, again.stderr
    assert again.metrics["entries_dropped"] >= 3 * (COMMITS + 3)
    assert again.metrics["files_already_indexed"] == 0  # every file is new after OPTIMIZE
    assert len(index_files(store, "indexed")) == 1
    assert index(store, "indexed").metrics["outcome"] == Outcome.NOTHING_TO_DO


def test_a_merge_that_finds_the_index_far_behind_says_so_once(tmp_path):
    """Past the threshold of bytes with no entry (STAGINGMERGE_INDEX_BEHIND_BYTES here 1),
    one warning line names `stagingmerge-index` for this main, with the files and bytes."""
    from tests.stores import Store

    store = Store("local", str(tmp_path))
    live_main(store, "main")
    backfill(store, "staging")
    env = {**store.env, "STAGINGMERGE_INDEX_BEHIND_BYTES": "1"}
    where = ("--main", store.uri("main"), "--staging", store.uri("staging"), "--keep-staging")
    got = run_cli(*where, env=env)
    assert got.code == 0, got.stderr
    lines = [json.loads(line) for line in got.stderr.splitlines() if "index is behind" in line]
    assert len(lines) == 1, got.stderr
    assert f"stagingmerge-index --main {store.uri('main')}" in lines[0]["event"]
    assert lines[0]["level"] == "warning" and lines[0]["files"] == COMMITS
    assert lines[0]["bytes"] > 0
    quiet = run_cli(*where)
    assert quiet.code == 0 and quiet.metrics["main_files_scanned"] > 0, quiet.stderr
    assert "index is behind" not in quiet.stderr  # the default threshold is 1 GiB
