"""spec.parallelism: one merge as a real Indexed Job of shards; the real Job controller
decides retries (backoffLimitPerIndex) and failures (podFailurePolicy on exit code 2),
and the node agent runs each index's pod as a merge process."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.e2e.harness import spec_for, wait_for
from tests.helpers import ct, expected_union, rows, write

pytestmark = pytest.mark.e2e


def indexes(field: str) -> set[int]:
    """A Job's completedIndexes/failedIndexes ("0,1", "1,3-5") as a set: the real Job
    controller writes two neighbours as "0,1", longer runs as ranges."""
    found: set[int] = set()
    for part in filter(None, field.split(",")):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def tables(tmp_path: Path) -> tuple[Path, Path, pa.Table, pa.Table]:
    """main holds every other position of logs 0-1 up to 200; staging 4 files up to 400."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    main_rows = ct([0, 1] * 100, [2 * (i // 2) for i in range(200)], seed=1)
    write(main, main_rows)
    parts = [
        ct([0, 1] * 100, [p * 100 + i // 2 for i in range(200)], seed=10 + p) for p in range(4)
    ]
    for part in parts:
        write(staging, part)
    return main, staging, main_rows, pa.concat_tables(parts)


def test_two_shards_merge_the_union_once_and_a_killed_shard_is_retried_alone(
    kubectl, operator, runner, tmp_path
):
    main, staging, main_rows, staging_rows = tables(tmp_path)
    pause = tmp_path / "pause"
    # every shard holds after its first commit; the test kills shard 1 there
    hooks = kubectl.hooks(STAGINGMERGE_PAUSE=f"batch-after-commit:{pause}")
    kubectl.apply("wide", spec_for(main, staging, parallelism=2, batchRows=60, **hooks))
    # shard 1's first commit (its commitInfo names the shard): it is held right after it
    wait_for(
        lambda: any(
            commit.get("stagingmerge.shard") == "1/2" for commit in DeltaTable(str(main)).history()
        ),
        what="shard 1's first commit",
    )
    victim = wait_for(
        lambda: next((a for a in runner.attempts_of("wide-g1") if a.index == 1), None),
        what="shard 1 started",
    )
    wait_for(lambda: kubectl.get("wide")["status"].get("phase") == "Running")
    victim.kill()  # a node dying under shard 1
    wait_for(
        lambda: len([a for a in runner.attempts_of("wide-g1") if a.index == 1]) == 2,
        what="shard 1 retried",
    )
    Path(f"{pause}.go").touch()
    condition = kubectl.wait("wide", "True")

    assert condition["reason"] == "Merged"
    assert rows(main).equals(expected_union(main_rows, staging_rows))
    assert not staging.exists()
    status = kubectl.get("wide")["status"]
    assert status["progress"] == "2/2 shards"
    assert [s["state"] for s in status["shards"]] == ["Succeeded", "Succeeded"]
    assert [s["stagingDeleted"] for s in status["shards"]].count(True) == 1
    m = status["metrics"]
    new = rows(main).num_rows - main_rows.num_rows
    assert m["inserted"] == sum(s["inserted"] for s in status["shards"])
    # metrics are each shard's last attempt's: the batch the killed attempt committed is
    # counted by the retry as already in main
    killed_batch = 60
    assert m["inserted"] == new - killed_batch
    assert m["skipped_existing"] == staging_rows.num_rows - new + killed_batch
    assert m["staging_rows"] == staging_rows.num_rows
    assert m["inserted"] + m["skipped_existing"] + m["skipped_duplicates"] == m["staging_rows"]
    assert m["staging_deleted"] and m["shards_reported"] == 2
    attempts = {i: len([a for a in runner.attempts_of("wide-g1") if a.index == i]) for i in (0, 1)}
    assert attempts == {0: 1, 1: 2}  # the Job retried the killed shard alone
    (job,) = kubectl.jobs()
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    assert indexes(job["status"]["completedIndexes"]) == {0, 1}


def test_shards_that_keep_failing_fail_the_merge_and_a_new_generation_finishes_it(
    kubectl, operator, runner, tmp_path
):
    """Every attempt of every shard dies before its first commit: backoffLimitPerIndex
    gives up on each, the merge fails naming the shards, staging is kept; a spec change
    (the retry a user makes) runs generation 2, which merges everything."""
    main, staging, main_rows, staging_rows = tables(tmp_path)
    hooks = kubectl.hooks(STAGINGMERGE_FAILPOINT="batch-start")
    kubectl.apply("flaky", spec_for(main, staging, parallelism=2, backoffLimit=1, **hooks))
    condition = kubectl.wait("flaky", "False")
    assert condition["reason"] == "MergeFailed"
    assert "shard(s) 0,1 of 2 failed" in condition["message"]
    assert staging.exists() and rows(main).num_rows == main_rows.num_rows
    assert len(runner.attempts_of("flaky-g1")) == 4  # 2 shards x (1 + backoffLimit 1)
    (job,) = kubectl.jobs()
    assert indexes(job["status"]["failedIndexes"]) == {0, 1}

    kubectl.hooks()  # the failpoint gone from the Secret the pods read
    kubectl.patch_spec("flaky", {"batchRows": 100})
    wait_for(lambda: kubectl.get("flaky")["status"].get("runGeneration") == 2)
    assert kubectl.wait("flaky", "True")["reason"] == "Merged"
    assert rows(main).equals(expected_union(main_rows, staging_rows))
    assert not staging.exists()
    assert kubectl.get("flaky")["status"]["progress"] == "2/2 shards"


def test_bad_input_in_a_parallel_merge_fails_it_at_once_as_invalid_input(
    kubectl, operator, runner, tmp_path
):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0], [0]))
    write(staging, ct([0, 1], [1, 2]).drop_columns(["chain"]))  # schema mismatch: exit 2
    kubectl.apply("bad", spec_for(main, staging, parallelism=2, backoffLimit=3))
    condition = kubectl.wait("bad", "False")
    assert condition["reason"] == "InvalidInput"
    assert "main has columns staging lacks: chain" in condition["message"]
    assert all(a.number == 1 for a in runner.attempts_of("bad-g1"))  # exit 2: never retried
    assert staging.exists() and rows(main).num_rows == 1
