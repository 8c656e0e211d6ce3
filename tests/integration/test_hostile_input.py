"""Hostile and broken input (issue 29): the merge never deletes outside staging, never
deletes rows it did not merge, and never reports success over a wrong main.

Every run given a staging with links in it is confined to its test's folder
(tests/confine.py): were the deletion ever to follow a link again, the link to `/` would
otherwise erase the machine running the tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from stagingmerge_merger.contract import Outcome
from tests.helpers import (
    CLI,
    CliResult,
    ct,
    expected_union,
    key_list,
    rows,
    run_cli,
    tree_hash,
    write,
)

LOG = "_delta_log"


def commit(table: Path, version: int) -> Path:
    return table / LOG / f"{version:020d}.json"


def three_commits(path: Path, seed: int, start: int = 0) -> Path:
    for part in range(3):
        write(path, ct([0] * 4, range(start + part * 4, start + part * 4 + 4), seed=seed + part))
    return path


# --- 1. deleting staging never leaves it -------------------------------------------------


def test_links_inside_staging_are_deleted_as_links_and_what_they_reach_is_kept(tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    sibling = tmp_path / "sibling"
    (sibling / "deep").mkdir(parents=True)
    (sibling / "deep" / "precious.parquet").write_bytes(b"not staging's")
    (sibling / "notes.txt").write_text("keep me")
    (staging / "to-folder").symlink_to(sibling)
    (staging / "to-file").symlink_to(sibling / "notes.txt")
    (staging / "nested").mkdir()
    (staging / "nested" / "to-folder").symlink_to(sibling / "deep")
    (staging / "dangling").symlink_to(tmp_path / "nothing-here")
    outside = tree_hash(sibling)
    expected = expected_union(rows(main), rows(staging))

    result = run_cli("--main", str(main), "--staging", str(staging), confined_to=tmp_path)

    assert result.code == 0, result.stderr
    assert result.metrics["outcome"] == Outcome.MERGED and not staging.exists()
    assert tree_hash(sibling) == outside
    assert rows(main).equals(expected)


@pytest.mark.parametrize("target", ["main", "main/_delta_log", "parent", "root"])
def test_a_staging_linking_into_main_is_refused_before_any_write(tmp_path, target):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    reach = {"main": main, "main/_delta_log": main / LOG, "parent": tmp_path, "root": Path("/")}
    (staging / "link").symlink_to(reach[target])
    before = tree_hash(main, staging)

    result = run_cli("--main", str(main), "--staging", str(staging), confined_to=tmp_path)

    assert result.code == 2, result.stderr
    assert result.metrics["outcome"] == Outcome.INVALID_INPUT
    assert "holds a symbolic link into main" in result.error_lines[0]
    assert tree_hash(main, staging) == before


def test_a_link_to_the_root_in_local_staging_is_removed_as_a_link(tmp_path, store):
    """Main elsewhere (a bucket): the link to `/` cannot reach it, so the merge goes on and
    deletes the link itself; everything it reached (here a canary beside staging) stays."""
    if store.kind == "local":
        pytest.skip("main must be outside the local disk")
    main = store.write("main", ct([0] * 3, range(3), seed=1))
    staging = write(tmp_path / "staging", ct([0] * 4, range(2, 6), seed=2))
    canary = tmp_path / "canary"
    canary.write_text("outside staging")
    (staging / "root").symlink_to("/")
    expected = sorted(set(store.keys("main")) | set(key_list(staging)))

    result = run_cli("--main", main, "--staging", str(staging), env=store.env, confined_to=tmp_path)

    assert result.code == 0, result.stderr
    assert not staging.exists() and canary.read_text() == "outside staging"
    assert store.keys("main") == expected


# --- 2, 3. a log no writer could produce -------------------------------------------------


def empty_last(table: Path) -> str:
    commit(table, 2).write_bytes(b"")
    return "00000000000000000002.json is empty"


def actionless(table: Path) -> str:
    commit(table, 2).write_text("\n\n")
    return "00000000000000000002.json holds no action"


def truncated(table: Path) -> str:
    raw = commit(table, 1).read_bytes()
    commit(table, 1).write_bytes(raw[: len(raw) // 2])
    return "00000000000000000001.json does not parse"


def gap(table: Path) -> str:
    commit(table, 1).unlink()
    return "lacks commit 00000000000000000001.json"


def hint_to_nothing(table: Path) -> str:
    (table / LOG / "_last_checkpoint").write_text(json.dumps({"version": 1, "size": 3}))
    return "_last_checkpoint names checkpoint 1, which is not there"


def hint_unparseable(table: Path) -> str:
    (table / LOG / "_last_checkpoint").write_text('{"version": ')
    return "_last_checkpoint does not parse"


def not_one_action(table: Path) -> str:
    lines = commit(table, 2).read_text().splitlines()
    commit(table, 2).write_text("\n".join(["[1, 2]", *lines]) + "\n")
    return "line 1 is not one Delta action"


def missing_data_file(table: Path) -> str:
    """The file the last commit added is gone (its keys overlap the other table's)."""
    actions = [json.loads(line) for line in commit(table, 2).read_text().splitlines()]
    (table / next(a["add"]["path"] for a in actions if "add" in a)).unlink()
    return "its log names a data file that is not there"


def nested_json_flipped(table: Path) -> str:
    lines = commit(table, 0).read_text().splitlines()
    lines = [line.replace('\\"type\\":\\"struct', '\\"type\\"(\\"struct', 1) for line in lines]
    commit(table, 0).write_text("\n".join(lines) + "\n")
    return "its log does not parse"


def declared_as(column: str, declared: object) -> Callable[[Path], str]:
    """The schema in the log declares `column` in a type its files cannot be read as (a
    table rewritten by hand, a writer's bug): Arrow's cast fails on every attempt, so
    the merge must not report it as a storage failure worth retrying forever."""

    def mutate(table: Path) -> str:
        for version in range(3):
            actions = [json.loads(line) for line in commit(table, version).read_text().splitlines()]
            for action in actions:
                if "metaData" in action:
                    schema = json.loads(action["metaData"]["schemaString"])
                    next(f for f in schema["fields"] if f["name"] == column)["type"] = declared
                    action["metaData"]["schemaString"] = json.dumps(schema)
                # no statistics (a writer may keep none), or their values would not parse
                # in the declared type and the log be refused before any file is read
                action.get("add", {}).pop("stats", None)
            commit(table, version).write_text("".join(json.dumps(a) + "\n" for a in actions))
        return "cannot decode its data as its schema declares"

    return mutate


BROKEN: dict[str, Callable[[Path], str]] = {
    "a data file the log names is gone": missing_data_file,
    "a schema inside the log that does not parse": nested_json_flipped,
    "empty last commit": empty_last,
    "commit with no action": actionless,
    "truncated commit": truncated,
    "gap in the commits": gap,
    "checkpoint hint to nothing": hint_to_nothing,
    "unparseable checkpoint hint": hint_unparseable,
    "a line that is no action": not_one_action,
}


@pytest.mark.parametrize("role", ["staging", "main"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_log_no_writer_could_leave_is_invalid_input_and_changes_nothing(tmp_path, case, role):
    main = three_commits(tmp_path / "main", seed=1)
    staging = three_commits(tmp_path / "staging", seed=5, start=8)
    message = BROKEN[case](main if role == "main" else staging)
    before = tree_hash(tmp_path)

    result = run_cli("--main", str(main), "--staging", str(staging))

    assert result.code == 2, result.stderr
    assert result.metrics["outcome"] == Outcome.INVALID_INPUT
    assert len(result.error_lines) == 1
    assert message in result.error_lines[0]
    assert str(main if role == "main" else staging) in result.error_lines[0]  # names it
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("column", ["cert_link", "source_url"])
@pytest.mark.parametrize("main_exists", [False, True], ids=["new main", "main"])
def test_data_that_does_not_decode_as_declared_is_invalid_input(tmp_path, column, main_exists):
    """A column (a key column too) declared `long` over files holding strings, in staging
    and, when it exists, in main as well (so their schemas agree and only the data is
    wrong): exit 2 before any write, not a retry loop; nothing changes."""
    main, staging = tmp_path / "main", three_commits(tmp_path / "staging", seed=5, start=8)
    message = declared_as(column, "long")(staging)
    if main_exists:
        declared_as(column, "long")(three_commits(main, seed=1))
    before = tree_hash(tmp_path)

    result = run_cli("--main", str(main), "--staging", str(staging))

    assert result.code == 2, result.stderr
    assert result.metrics["outcome"] == Outcome.INVALID_INPUT
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert tree_hash(tmp_path) == before and main.exists() == main_exists


def test_a_valid_checkpoint_is_read_from_and_older_commits_may_be_gone(tmp_path):
    """What the audit must not refuse: a checkpoint with the commits before it cleaned up."""
    main = three_commits(tmp_path / "main", seed=1)
    DeltaTable(str(main)).create_checkpoint()
    write(main, ct([1], [0], seed=9))
    commit(main, 0).unlink()
    commit(main, 1).unlink()
    staging = three_commits(tmp_path / "staging", seed=5, start=8)
    expected = expected_union(rows(main), rows(staging))

    result = run_cli("--main", str(main), "--staging", str(staging))

    assert result.code == 0, result.stderr
    assert rows(main).equals(expected)


# --- 8, 10. a complete merge whose staging cannot be deleted -----------------------------


@contextlib.contextmanager
def undeletable(path: Path) -> Iterator[None]:
    """`path` cannot be deleted until the block ends: its folder read-only for a normal
    user; for root (who ignores modes) the file is made immutable with chattr."""
    if os.geteuid() != 0:
        path.parent.chmod(0o555)
        try:
            yield
        finally:
            path.parent.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)]).returncode:
        pytest.skip("no way to make a file undeletable for root here (chattr)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("stuck", ["a log file", "a data file"])
def test_staging_that_cannot_be_deleted_is_its_own_outcome_and_a_rerun_finishes(tmp_path, stuck):
    main = three_commits(tmp_path / "main", seed=1)
    staging = three_commits(tmp_path / "staging", seed=5, start=8)
    expected = expected_union(rows(main), rows(staging))
    data = sorted(staging.glob("*.parquet"))[0]
    with undeletable(commit(staging, 1) if stuck == "a log file" else data):
        first = run_cli("--main", str(main), "--staging", str(staging))
        merged = rows(main)
        assert first.code == 1, first.stderr
        assert first.metrics["outcome"] == Outcome.STAGING_NOT_DELETED
        assert first.metrics["staging_deleted"] is False
        assert "staging could not be deleted" in first.error_lines[0]
        assert merged.equals(expected)
        again = run_cli("--main", str(main), "--staging", str(staging))
        assert again.code == 1 and again.metrics["outcome"] == Outcome.STAGING_NOT_DELETED
    version = DeltaTable(str(main)).version()

    rerun = run_cli("--main", str(main), "--staging", str(staging))

    assert rerun.code == 0, rerun.stderr
    assert rerun.metrics["inserted"] == 0 and rerun.metrics["staging_deleted"] is True
    assert not staging.exists()
    assert DeltaTable(str(main)).version() == version and rows(main).equals(expected)


def test_a_staging_half_deleted_inside_its_log_is_not_taken_for_a_new_table(tmp_path):
    """Killed while deleting `_delta_log/` (some commits gone, a later one left): the marker
    says this staging was merged, so the rerun finishes the deletion and inserts nothing."""
    main = three_commits(tmp_path / "main", seed=1)
    staging = three_commits(tmp_path / "staging", seed=5, start=8)
    expected = expected_union(rows(main), rows(staging))
    with undeletable(commit(staging, 2)):
        first = run_cli("--main", str(main), "--staging", str(staging))
    assert first.code == 1 and first.metrics["outcome"] == Outcome.STAGING_NOT_DELETED
    assert not commit(staging, 0).exists() and commit(staging, 2).exists()

    rerun = run_cli("--main", str(main), "--staging", str(staging))

    assert rerun.code == 0, rerun.stderr
    assert rerun.metrics["outcome"] == Outcome.NOTHING_TO_MERGE and not staging.exists()
    assert rows(main).equals(expected)


def test_a_marker_for_another_main_does_not_delete_a_half_deleted_log(tmp_path):
    """The marker names the main it was merged into: merging the same (half-deleted,
    gapped) staging into another main is refused as a broken log, and deletes nothing."""
    main = three_commits(tmp_path / "main", seed=1)
    staging = three_commits(tmp_path / "staging", seed=5, start=8)
    with undeletable(commit(staging, 2)):
        run_cli("--main", str(main), "--staging", str(staging))
    other = three_commits(tmp_path / "other", seed=3)
    before = tree_hash(staging, other)

    result = run_cli("--main", str(other), "--staging", str(staging))

    assert result.code == 2, result.stderr
    assert "lacks commit" in result.error_lines[0]
    assert tree_hash(staging, other) == before


# --- 9. a duplicate the repair cannot remove ---------------------------------------------


def paused_run(args: list[str], point: str, pause: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [CLI, "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STAGINGMERGE_PAUSE": f"{point}:{pause}"},
    )
    while not Path(f"{pause}.waiting").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    return proc


def finished(proc: subprocess.Popen[str]) -> CliResult:
    out, err = proc.communicate(timeout=300)
    metrics = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return CliResult(proc.returncode, out, err, metrics)


def test_an_append_only_main_that_refuses_the_repair_fails_and_keeps_staging(tmp_path):
    """Another writer appends some of the batch's keys between our read and our commit, to a
    main with delta.appendOnly: the repair cannot rewrite them. The run fails with the keys
    named and staging kept; reruns fail the same until main accepts the rewrite, and then
    the rerun leaves each key once."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 4, range(4), seed=1), configuration={"delta.appendOnly": "true"})
    write(staging, ct([0] * 12, range(4, 16), seed=2))
    args = ["--main", str(main), "--staging", str(staging)]
    proc = paused_run(args, "batch-before-commit", tmp_path / "pause")
    write(main, ct([0] * 3, range(4, 7), seed=3))  # three of our keys, theirs first
    Path(f"{tmp_path / 'pause'}.go").touch()
    first = finished(proc)

    assert first.code == 1, first.stderr
    assert first.metrics["outcome"] == Outcome.DUPLICATES_LEFT
    assert "holds these keys twice" in first.error_lines[0]
    assert staging.exists() and len(key_list(main)) == 4 + 3 + 12
    again = run_cli(*args)
    assert again.code == 1 and again.metrics["outcome"] == Outcome.DUPLICATES_LEFT
    assert staging.exists()

    DeltaTable(str(main)).alter.set_table_properties({"delta.appendOnly": "false"})
    rerun = run_cli(*args)

    assert rerun.code == 0, rerun.stderr
    keys = key_list(main)
    assert len(keys) == len(set(keys)) == 16 and not staging.exists()
    assert rerun.metrics["duplicates_repaired"] == 3


def test_nothing_to_insert_still_fails_while_a_recorded_repair_is_owed(tmp_path):
    """The duplicate's record outlives a rerun that finds nothing new in staging."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 2, range(2), seed=1), configuration={"delta.appendOnly": "true"})
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    args = ["--main", str(main), "--staging", str(staging)]
    proc = paused_run(args, "batch-before-commit", tmp_path / "pause")
    write(main, ct([0] * 4, range(2, 6), seed=3))  # every key of ours, theirs first
    Path(f"{tmp_path / 'pause'}.go").touch()
    assert finished(proc).metrics["outcome"] == Outcome.DUPLICATES_LEFT

    again = run_cli(*args)

    assert again.code == 1 and again.metrics["outcome"] == Outcome.DUPLICATES_LEFT
    assert staging.exists() and len(key_list(main)) == 2 + 4 + 4


# --- 12. the termination message ---------------------------------------------------------


def test_a_huge_error_still_fits_the_termination_message(tmp_path):
    """A schema mismatch over hundreds of non-ASCII column names: the metrics file (the
    termination message) stays valid JSON within the kubelet's 4096 bytes, the error's
    start kept."""
    import pyarrow as pa

    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, pa.table({"id": [1]}))
    wide = {"id": [2], **{f'колонка_ü_{i:03d}_"quoted"': [i] for i in range(400)}}
    write(staging, pa.table(wide))
    metrics_file = tmp_path / "metrics.json"

    result = run_cli(
        "--main", str(main), "--staging", str(staging), "--keys", "id",
        "--metrics-file", str(metrics_file),
    )  # fmt: skip

    assert result.code == 2, result.stderr
    raw = metrics_file.read_bytes()
    assert len(raw) <= 4096
    reported = json.loads(raw)
    assert reported["outcome"] == Outcome.INVALID_INPUT
    assert reported["error"].startswith("schema mismatch: staging has columns main lacks")
    assert reported["error"].endswith(" [...]")


# --- 5. every value Delta can hold -------------------------------------------------------

# The widest values a Delta writer produces: delta-rs (chrono) writes dates and timestamps
# from year -262143 to +262142 (its statistics cannot go further; Spark stops at 9999),
# far inside their physical types (int32 days, int64 microseconds).
DAY_MAX, DAY_MIN = 95026236, -96465292  # +262142-12-31, -262143-01-01
US_MAX, US_MIN = 8210266876799999999, -8334601228800000000  # the same years, in microseconds
PAST_9999 = 2932897  # 10000-01-01, the first day Python's date cannot hold


def physical_rows(path: Path) -> list[tuple]:
    """Every row with dates and timestamps as their stored integers (Python's datetime
    cannot hold them all), read by delta-rs's own scan, sorted."""
    from deltalake import QueryBuilder

    query = QueryBuilder().register("t", DeltaTable(str(path))).execute("SELECT * FROM t")
    table = pa.table(query.read_all())

    def stored(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_struct(kind):
            return pa.struct([field.with_type(stored(field.type)) for field in kind])
        if pa.types.is_date32(kind):
            return pa.int32()
        return pa.int64() if pa.types.is_timestamp(kind) else kind

    columns = [column.cast(stored(column.type)).to_pylist() for column in table.columns]
    return sorted(zip(*columns, strict=True), key=lambda row: row[0])  # by key


def test_date_keys_past_year_9999_to_the_widest_a_writer_produces(tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    days = pa.date32()
    write(main, pa.table({"d": pa.array([5, PAST_9999], days), "v": [0, 0]}))
    far = [DAY_MIN, -1, 5, PAST_9999, PAST_9999 + 1, DAY_MAX - 1, DAY_MAX]
    for part in range(2):  # two files: the keys meet in more than one batch
        write(staging, pa.table({"d": pa.array(far, days), "v": [part + 1] * len(far)}))
    before = {row[0] for row in physical_rows(main)}

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "d",
                     "--batch-rows", "3")  # fmt: skip

    assert result.code == 0, result.stderr
    got = physical_rows(main)
    assert [row[0] for row in got] == sorted(set(far) | before)  # each key once
    assert result.metrics["inserted"] == len(set(far) - before) and not staging.exists()


def timestamps(values: list[int], tz: str | None = None) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz=tz))


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_copies_differing_in_timestamps_past_9999_have_one_winner_in_any_order(tmp_path, tz):
    """The first-copy rule's fingerprint takes values Python cannot hold: the same copy wins
    whichever order staging's files hold them in."""
    copies = {
        "t": timestamps([US_MAX, US_MIN, 0, US_MAX - 1], tz),
        "d": pa.array([DAY_MAX, DAY_MIN, 0, PAST_9999], pa.date32()),
        "nested": pa.array(
            [{"at": US_MAX}, {"at": US_MIN}, {"at": 0}, {"at": 1}],
            pa.struct([("at", pa.timestamp("us", tz=tz))]),
        ),
    }
    winners = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        root = tmp_path / "-".join(map(str, order))
        main, staging = root / "main", root / "staging"
        write(main, pa.table({"id": [100], **{k: v.slice(2, 1) for k, v in copies.items()}}))
        for i in order:
            write(staging, pa.table({"id": [1], **{k: v.slice(i, 1) for k, v in copies.items()}}))

        result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id")

        assert result.code == 0, result.stderr
        got = [row for row in physical_rows(main) if row[0] == 1]
        assert len(got) == 1 and result.metrics["skipped_duplicates"] == 3
        winners.append(got[0])
    assert winners[0] == winners[1] == winners[2]


def test_first_by_a_timestamp_past_9999_picks_the_earliest(tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, pa.table({"id": [100], "t": timestamps([0])}))
    write(
        staging,
        pa.table({"id": [1, 1, 1, 2], "t": timestamps([US_MAX, US_MAX - 7, US_MAX - 3, 5])}),
    )

    result = run_cli("--main", str(main), "--staging", str(staging), "--keys", "id",
                     "--first-by", "t")  # fmt: skip

    assert result.code == 0, result.stderr
    assert physical_rows(main) == [(1, US_MAX - 7), (2, 5), (100, 0)]
