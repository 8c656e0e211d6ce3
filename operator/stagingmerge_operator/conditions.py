"""Status of a StagingMerge as pure functions: Job state in, status dict out.

Conditions follow metav1.Condition: `type`/`reason` CamelCase, `message` for
people, `lastTransitionTime` moves only when `status` flips, `observedGeneration`
always set. Three types: `Succeeded` (what `kubectl wait` and Argo CD read),
`Ready` and `Stalled` (what kstatus, hence Flux, reads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stagingmerge_merger import contract
from stagingmerge_merger.contract import MergeMetrics, Reason

from .shardstatus import parse_indexes

# phases (status.phase, the "Status" printer column)
QUEUED = "Queued"
SUSPENDED = "Suspended"
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"

# Succeeded-condition reasons
R_QUEUED = "Queued"
R_SUSPENDED = "Suspended"
R_PENDING = "Pending"
R_MERGING = "Merging"
# (those a run's outcome decides are the contract's: contract.Reason)
R_MERGED = Reason.MERGED
R_NOTHING = Reason.NOTHING_TO_MERGE
R_INVALID_SPEC = "InvalidSpec"
R_MERGE_FAILED = Reason.MERGE_FAILED
R_DEADLINE = "DeadlineExceeded"
R_JOB_REFUSED = "JobRefused"  # the API server refused the merge Job (4xx)
R_TTL_DELETE_REFUSED = "TTLDeleteRefused"  # (an Event) the API server refused the TTL's delete
R_JOB_CONFLICT = "JobConflict"  # a Job of that name exists and belongs to something else

TERMINAL_PHASES = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class JobState:
    """What a merge Job says about its run."""

    name: str
    finished: bool  # Complete or Failed: the Job controller is done with it
    succeeded: bool
    active: bool
    pods_running: bool  # pods still active or terminating (they may still commit)
    suspended: bool
    attempts: int
    failure_reason: str | None
    failure_message: str | None
    start_time: str | None
    completion_time: str | None
    success_target: bool = False  # SuccessCriteriaMet (or a pod succeeded), not yet Complete
    completions: int = 1  # shards of an Indexed Job (a parallel merge); 1 otherwise
    completed_indexes: frozenset[int] = frozenset()
    failed_indexes: frozenset[int] = frozenset()

    @property
    def indexed(self) -> bool:
        return self.completions > 1


def job_state(job: Mapping[str, Any]) -> JobState:
    """Read a batch/v1 Job (as a dict in API casing)."""
    status = job.get("status") or {}
    conditions = {
        c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"
    }
    # SuccessCriteriaMet and FailureTarget (Kubernetes >= 1.31) are set while pods may
    # still run or terminate, committing a batch in their grace period: only Complete and
    # Failed end a run.
    done_ok = "Complete" in conditions
    failed = conditions.get("Failed")
    reason = failed or conditions.get("FailureTarget")
    active = int(status.get("active") or 0)
    terminating = int(status.get("terminating") or 0)
    attempts = int(status.get("failed") or 0) + int(status.get("succeeded") or 0) + active
    spec = job.get("spec") or {}
    completions = (
        int(spec.get("completions") or 1) if spec.get("completionMode") == "Indexed" else 1
    )
    return JobState(
        name=job["metadata"]["name"],
        finished=done_ok or failed is not None,
        succeeded=done_ok,
        active=active > 0,
        pods_running=active + terminating > 0,
        suspended=bool(spec.get("suspend")),
        attempts=attempts,
        failure_reason=(reason or {}).get("reason"),
        failure_message=(reason or {}).get("message"),
        start_time=_rfc3339(status.get("startTime")),
        completion_time=_rfc3339(status.get("completionTime")),
        success_target="SuccessCriteriaMet" in conditions
        or int(status.get("succeeded") or 0) >= completions,
        completions=completions,
        completed_indexes=parse_indexes(status.get("completedIndexes")),
        failed_indexes=parse_indexes(status.get("failedIndexes")),
    )


def _rfc3339(stamp: str | None) -> str | None:
    """The client serialises times as +00:00; Kubernetes writes Z. Keep one form."""
    return stamp.replace("+00:00", "Z") if stamp else stamp


@dataclass(frozen=True)
class Outcome:
    """Where a run stands, in the terms the status speaks."""

    phase: str
    reason: str
    message: str


# a failed run's outcomes that have a condition reason of their own (contract.REASON), and
# the message when the run left none
_FAILED_AS = {
    contract.Outcome.INVALID_INPUT: "the merge refused its input",
    contract.Outcome.DUPLICATES_LEFT: "main holds keys twice that were not repaired",
    contract.Outcome.STAGING_NOT_DELETED: "main is complete, but staging could not be deleted",
}


def outcome_of(job: JobState, metrics: Mapping[str, Any] | None) -> Outcome:
    report = MergeMetrics.from_report(dict(metrics)) if metrics else None
    outcome = report.outcome if report else None
    if job.finished and job.succeeded and outcome == contract.Outcome.STAGING_CHANGED:
        # shards that each succeeded, on different versions of staging: not a whole merge
        return Outcome(FAILED, R_MERGE_FAILED, str(report.error if report else None))
    if job.finished and job.succeeded:
        m = metrics or {}
        if outcome == contract.Outcome.NOTHING_TO_MERGE:
            return Outcome(SUCCEEDED, R_NOTHING, "nothing to merge: staging is missing or empty")
        return Outcome(SUCCEEDED, R_MERGED, summary(m) if m else "merge finished")
    if job.finished:
        error = report.error if report else None
        if outcome in _FAILED_AS:  # outcomes with a reason of their own
            own = contract.Outcome(outcome)
            return Outcome(FAILED, contract.REASON[own], error or _FAILED_AS[own])
        if job.failure_reason == R_DEADLINE:  # the Job controller says it with the same word
            return Outcome(
                FAILED, R_DEADLINE, job.failure_message or "activeDeadlineSeconds passed"
            )
        detail = error or job.failure_message or job.failure_reason or "the merge Job failed"
        if job.failed_indexes:
            failed = ",".join(str(i) for i in sorted(job.failed_indexes))
            others = (
                "the other shards merged their spans; "
                if len(job.failed_indexes) < job.completions
                else ""
            )
            return Outcome(
                FAILED,
                R_MERGE_FAILED,
                f"shard(s) {failed} of {job.completions} failed after their retries ({detail});"
                f" {others}staging is kept: fix the cause and run again (change the spec),"
                " only what is missing is inserted",
            )
        return Outcome(FAILED, R_MERGE_FAILED, f"after {job.attempts} attempt(s): {detail}")
    if job.failure_reason:  # FailureTarget: the run is ending, its pods are not gone yet
        return Outcome(
            RUNNING,
            R_MERGING,
            f"Job {job.name} is failing ({job.failure_reason}); waiting for its pods to stop",
        )
    if job.success_target:  # SuccessCriteriaMet: Complete follows once its pods are gone
        return Outcome(
            RUNNING, R_MERGING, f"Job {job.name} succeeded; waiting for its pods to stop"
        )
    if job.active and job.indexed:
        return Outcome(
            RUNNING,
            R_MERGING,
            f"Job {job.name} is merging: {len(job.completed_indexes)} of {job.completions}"
            " shards done",
        )
    if job.active:
        return Outcome(RUNNING, R_MERGING, f"Job {job.name} is merging (attempt {job.attempts})")
    if job.pods_running:  # only terminating pods: a run never goes back to Pending
        return Outcome(RUNNING, R_MERGING, f"Job {job.name}: its pod is stopping")
    if job.attempts > 0 and not job.suspended:
        return Outcome(
            RUNNING, R_MERGING, f"Job {job.name} retries (attempt {job.attempts} failed)"
        )
    if job.suspended:
        return Outcome(PENDING, R_PENDING, f"Job {job.name} waits for admission (suspended)")
    return Outcome(PENDING, R_PENDING, f"Job {job.name} created; waiting for its pod")


def summary(metrics: Mapping[str, Any]) -> str:
    m = MergeMetrics.from_report(dict(metrics))
    return (
        f"inserted {m.inserted} rows, skipped {m.skipped_existing}"
        f" already in main and {m.skipped_duplicates} duplicates in staging"
        f" ({m.batches} batch{'' if m.batches == 1 else 'es'}, {m.duration_seconds} s)"
    )


def progress(outcome: Outcome, job: JobState | None, metrics: Mapping[str, Any] | None) -> str:
    """The "Progress" printer column: shards done/total of a parallel merge, else batches."""
    if job is not None and job.indexed:
        return f"{len(job.completed_indexes)}/{job.completions} shards"
    if metrics and outcome.phase in TERMINAL_PHASES:
        m = MergeMetrics.from_report(dict(metrics))
        return f"{m.batches}/{m.batches_planned} batches"
    if job is not None and job.active:
        return f"attempt {job.attempts}"
    return outcome.phase.lower()


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """`conditions` with one type set; lastTransitionTime kept unless `status` flips."""
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        flipped = condition.get("status") != status
        result.append(
            {
                "type": type_,
                "status": status,
                "observedGeneration": generation,
                "lastTransitionTime": now if flipped else condition.get("lastTransitionTime", now),
                "reason": reason,
                "message": message,
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": status,
                "observedGeneration": generation,
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
        )
    return result


def conditions_for(
    previous: Sequence[Mapping[str, Any]], outcome: Outcome, generation: int, now: str
) -> list[dict[str, Any]]:
    """Succeeded / Ready / Stalled for an outcome."""
    if outcome.phase == SUCCEEDED:
        succeeded, ready, stalled = "True", "True", "False"
    elif outcome.phase == FAILED:
        succeeded, ready, stalled = "False", "False", "True"
    else:
        succeeded, ready, stalled = "Unknown", "False", "False"
    conditions: list[dict[str, Any]] = [dict(x) for x in previous]
    for type_, status in (("Succeeded", succeeded), ("Ready", ready), ("Stalled", stalled)):
        reason = outcome.reason if status != "False" or type_ != "Stalled" else "NotStalled"
        message = outcome.message if reason != "NotStalled" else "no intervention needed"
        conditions = set_condition(
            conditions,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )
    return conditions
