"""queue.py: which merges may run into a main table now, and expiry.py: when a finished
one is deleted (pure functions over the objects the API server returns)."""

from __future__ import annotations

from datetime import UTC, datetime

from stagingmerge_operator import queue
from stagingmerge_operator.expiry import expiry
from stagingmerge_operator.jobs import main_key


def merge(name, phase=None, main="s3://lake/main", created="2026-01-01T00:00:00Z", **status):
    return {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created,
                     "uid": f"uid-{name}"},
        "spec": {"main": {"uri": main}, "staging": {"uri": f"s3://lake/staging/{name}"}},
        "status": {"phase": phase, **status} if phase else {},
    }  # fmt: skip


def job(name, owner, finished=False, active=0):
    conditions = [{"type": "Complete", "status": "True"}] if finished else []
    return {
        "metadata": {"name": name, "namespace": "ns", "ownerReferences": [{"uid": owner}]},
        "spec": {},
        "status": {"conditions": conditions, "active": active},
    }


def test_running_on_a_main_means_a_job_and_a_run_not_ended():
    assert queue.holds_a_slot(merge("r", "Running", jobName="r-g1"))
    assert queue.holds_a_slot(merge("p", "Pending", jobName="p-g1"))
    assert not queue.holds_a_slot(merge("q", "Queued"))
    assert not queue.holds_a_slot(merge("d", "Succeeded", jobName="d-g1"))
    assert not queue.holds_a_slot(merge("s", "Suspended"))


def test_next_in_line_takes_the_oldest_queued_up_to_the_free_slots():
    merges = [
        merge("running", "Running", jobName="running-g1"),
        merge("q3", "Queued", created="2026-01-01T00:00:03Z"),
        merge("q1", "Queued", created="2026-01-01T00:00:01Z"),
        merge("q2", "Queued", created="2026-01-01T00:00:02Z"),
        merge("other", "Queued", main="s3://lake/other"),
        merge("done", "Succeeded", jobName="done-g1"),
    ]
    assert queue.next_in_line(merges, 1) == {("ns", "other")}
    assert queue.next_in_line(merges, 3) == {("ns", "q1"), ("ns", "q2"), ("ns", "other")}
    only = queue.next_in_line(merges, 2, only=main_key("s3://lake/main"))
    assert only == {("ns", "q1")}
    assert queue.fleet_counts(merges) == {"s3://lake/main": (3, 1), "s3://lake/other": (1, 0)}


def test_a_merge_waits_for_running_jobs_of_others_and_older_queued_merges():
    key = main_key("s3://lake/main")
    me = merge("me", created="2026-01-01T00:00:05Z")
    theirs = job("a-g1", "uid-a", active=1)
    mine = job("me-g1", "uid-me", active=1)  # its own Job (a replay) never blocks it
    done = job("b-g1", "uid-b", finished=True)
    older = merge("older", "Queued", created="2026-01-01T00:00:01Z")
    younger = merge("younger", "Queued", created="2026-01-01T00:00:09Z")
    elsewhere = merge("away", "Queued", main="s3://lake/other", created="2026-01-01T00:00:01Z")
    assert queue.blocker(me, key, 1, [theirs, mine, done], []) == "Job ns/a-g1"
    assert queue.blocker(me, key, 1, [mine, done], [older, younger]) == "StagingMerge ns/older"
    assert queue.blocker(me, key, 1, [mine, done], [younger, elsewhere]) is None
    assert queue.blocker(me, key, 2, [theirs], [older]) == (
        "Job ns/a-g1, StagingMerge ns/older (2 at a time)"
    )
    assert queue.blocker(me, key, 3, [theirs], [older]) is None


def test_a_job_that_ended_with_a_pod_still_running_holds_its_slot():
    ended = job("a-g1", "uid-a", finished=True, active=0)
    ended["status"]["terminating"] = 1
    assert queue.job_holds_a_slot(ended)
    assert not queue.job_holds_a_slot(job("b-g1", "uid-b", finished=True))


def test_a_finished_merge_is_due_ttl_seconds_after_it_finished():
    finished = merge("m", "Succeeded", completionTime="2026-01-01T00:10:00Z")
    assert expiry(finished) is None  # no TTL: kept
    finished["spec"]["ttlSecondsAfterFinished"] = 30
    assert expiry(finished) == datetime(2026, 1, 1, 0, 10, 30, tzinfo=UTC)
    running = merge("r", "Running")
    running["spec"]["ttlSecondsAfterFinished"] = 0
    assert expiry(running) is None
    failed_on_spec = merge(
        "f",
        "Failed",
        conditions=[{"type": "Succeeded", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    )
    failed_on_spec["spec"]["ttlSecondsAfterFinished"] = 0
    assert expiry(failed_on_spec) == datetime(2026, 1, 1, tzinfo=UTC)
