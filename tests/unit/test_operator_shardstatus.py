"""A parallel merge on the status (pure): indexes, per-shard state, summed metrics, the
queue's next in line and the TTL's due time."""

from __future__ import annotations

import pytest

from stagingmerge_merger.contract import Outcome
from stagingmerge_operator import conditions as c
from stagingmerge_operator import shardstatus
from stagingmerge_operator.shardstatus import ShardPod


@pytest.mark.parametrize(
    ("text", "indexes"),
    [(None, set()), ("", set()), ("0", {0}), ("0-2,5", {0, 1, 2, 5}), ("1,3-4", {1, 3, 4})],
)
def test_job_index_intervals(text, indexes):
    assert shardstatus.parse_indexes(text) == indexes


def shard_metrics(**values):
    base = {
        "outcome": Outcome.MERGED,
        "staging_rows": 10,
        "inserted": 4,
        "skipped_existing": 5,
        "skipped_duplicates": 1,
        "batches": 2,
        "main_version_before": 3,
        "main_version_after": 5,
        "duration_seconds": 1.5,
        "staging_deleted": False,
        "main_files": 7,
    }
    return {**base, **values}


def test_summed_metrics_add_up_and_keep_the_extremes():
    total = shardstatus.sum_metrics(
        [
            shard_metrics(),
            shard_metrics(
                inserted=6,
                skipped_existing=3,
                main_version_before=4,
                main_version_after=9,
                duration_seconds=2.5,
                staging_deleted=True,
                main_files=9,
            ),
        ]
    )
    assert total is not None
    assert (total["staging_rows"], total["inserted"], total["skipped_existing"]) == (20, 10, 8)
    assert total["inserted"] + total["skipped_existing"] + total["skipped_duplicates"] == 20
    assert (total["main_version_before"], total["main_version_after"]) == (3, 9)
    assert (
        total["duration_seconds"] == 2.5 and total["staging_deleted"] and total["main_files"] == 9
    )
    assert total["outcome"] == Outcome.MERGED and total["shards_reported"] == 2


def test_the_worst_shard_outcome_is_the_merge_outcome():
    assert shardstatus.sum_metrics([]) is None
    nothing = shardstatus.sum_metrics([shard_metrics(outcome=Outcome.NOTHING_TO_MERGE)] * 2)
    assert nothing is not None and nothing["outcome"] == Outcome.NOTHING_TO_MERGE
    mixed = shardstatus.sum_metrics(
        [shard_metrics(), shard_metrics(outcome=Outcome.INVALID_INPUT, error="bad schema")]
    )
    assert mixed is not None and (mixed["outcome"], mixed["error"]) == (
        Outcome.INVALID_INPUT,
        "bad schema",
    )
    worst = shardstatus.sum_metrics(
        [
            shard_metrics(outcome=Outcome.STAGING_NOT_DELETED),
            shard_metrics(outcome=Outcome.DUPLICATES_LEFT),
            shard_metrics(outcome=Outcome.INVALID_INPUT),
        ]
    )
    assert worst is not None and worst["outcome"] == Outcome.DUPLICATES_LEFT
    kept = shardstatus.sum_metrics(
        [shard_metrics(), shard_metrics(outcome=Outcome.STAGING_NOT_DELETED)]
    )
    assert kept is not None and kept["outcome"] == Outcome.STAGING_NOT_DELETED


def test_shards_that_read_different_versions_of_staging_are_not_a_whole_merge():
    total = shardstatus.sum_metrics(
        [shard_metrics(staging_version=3), shard_metrics(staging_version=4)]
    )
    assert total is not None and total["outcome"] == Outcome.STAGING_CHANGED
    assert "shards read versions 3, 4" in total["error"]
    done = c.job_state(indexed_job(succeeded=3, completedIndexes="0-2", conditions=[
        {"type": "Complete", "status": "True"}]))  # fmt: skip
    outcome = c.outcome_of(done, total)
    assert outcome.phase == "Failed" and "change the spec to run again" in outcome.message


def test_shard_lines_follow_the_job_and_the_pods():
    lines = shardstatus.shard_statuses(
        4,
        frozenset({0}),
        frozenset({3}),
        {1: ShardPod("Running", None), 2: ShardPod("Failed", None)},
        {0: shard_metrics(staging_deleted=True)},
    )
    assert [line["state"] for line in lines] == ["Succeeded", "Running", "Running", "Failed"]
    assert lines[0] == {
        "index": 0,
        "state": "Succeeded",
        "inserted": 4,
        "stagingRows": 10,
        "batches": 2,
        "stagingDeleted": True,
    }


def indexed_job(**status):
    return {
        "metadata": {"name": "j"},
        "spec": {"completionMode": "Indexed", "completions": 3},
        "status": status,
    }


def test_an_indexed_job_reads_as_shards():
    running = c.job_state(indexed_job(active=2, succeeded=1, completedIndexes="1"))
    assert running.indexed and running.completed_indexes == {1} and not running.success_target
    outcome = c.outcome_of(running, None)
    assert (outcome.phase, outcome.message) == ("Running", "Job j is merging: 1 of 3 shards done")
    assert c.progress(outcome, running, None) == "1/3 shards"
    done = c.job_state(indexed_job(succeeded=3, completedIndexes="0-2"))
    assert done.success_target
    failed = c.job_state(
        indexed_job(
            failed=4,
            succeeded=2,
            completedIndexes="0,2",
            failedIndexes="1",
            conditions=[{"type": "Failed", "status": "True", "reason": "FailedIndexes"}],
        )
    )
    outcome = c.outcome_of(failed, None)
    assert outcome.phase == "Failed" and outcome.message.startswith("shard(s) 1 of 3 failed")
    assert "the other shards merged their spans" in outcome.message
