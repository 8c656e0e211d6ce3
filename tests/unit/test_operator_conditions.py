from stagingmerge_merger.contract import Outcome, parse_report
from stagingmerge_operator import conditions as c


def job(**status):
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


def cond(type_, status):
    return {"type": type_, "status": status, "reason": "True" if status == "True" else "X"}


def test_job_states():
    running = c.job_state(job(active=1, startTime="t0"))
    assert running.active and not running.finished and running.attempts == 1
    done = c.job_state(
        job(succeeded=1, conditions=[cond("SuccessCriteriaMet", "True"), cond("Complete", "True")])
    )
    assert done.finished and done.succeeded
    failed = c.job_state(
        job(
            failed=3,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "m",
                }
            ],
        )
    )
    assert failed.finished and not failed.succeeded and failed.attempts == 3
    assert failed.failure_reason == "BackoffLimitExceeded"
    target = c.job_state(
        job(
            failed=1,
            terminating=1,
            conditions=[{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}],
        )
    )
    # Kubernetes >= 1.31 sets FailureTarget while the pods still terminate (and may commit
    # a batch in their grace period): not the end of the run, and its main stays taken
    assert not target.finished and target.pods_running
    outcome = c.outcome_of(target, None)
    assert outcome.phase == c.RUNNING and "waiting for its pods to stop" in outcome.message
    criteria_met = c.job_state(job(active=1, conditions=[cond("SuccessCriteriaMet", "True")]))
    assert not criteria_met.finished and criteria_met.pods_running
    gone = c.job_state(
        job(failed=1, conditions=[cond("FailureTarget", "True"), cond("Failed", "True")])
    )
    assert gone.finished and not gone.pods_running
    waiting = c.job_state({"metadata": {"name": "j"}, "spec": {"suspend": True}})
    assert waiting.suspended and waiting.attempts == 0


def test_metrics_from_a_termination_message():
    assert parse_report('{"inserted": 3}\n') == {"inserted": 3}
    assert parse_report('garbage\n{"a": 1}') == {"a": 1}
    assert parse_report("") is None and parse_report("not json") is None


def test_outcomes():
    ok = c.job_state(job(succeeded=1, conditions=[cond("Complete", "True")]))
    assert c.outcome_of(ok, {"outcome": Outcome.MERGED, "inserted": 5}).reason == "Merged"
    assert c.outcome_of(ok, {"outcome": Outcome.NOTHING_TO_MERGE}).reason == "NothingToMerge"
    bad = c.job_state(
        job(
            failed=1,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "exit 2",
                }
            ],
        )
    )
    invalid = c.outcome_of(bad, {"outcome": Outcome.INVALID_INPUT, "error": "schema mismatch: x"})
    assert (invalid.phase, invalid.reason, invalid.message) == (
        "Failed",
        "InvalidInput",
        "schema mismatch: x",
    )
    retried = c.job_state(
        job(
            failed=4,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "m",
                }
            ],
        )
    )
    failed = c.outcome_of(retried, {"outcome": Outcome.FAILED, "error": "store down"})
    assert failed.reason == "MergeFailed" and failed.message == "after 4 attempt(s): store down"
    deadline = c.job_state(
        job(
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "late",
                }
            ]
        )
    )
    assert c.outcome_of(deadline, None).reason == "DeadlineExceeded"
    left = c.outcome_of(retried, {"outcome": Outcome.DUPLICATES_LEFT, "error": "keys twice: (1,)"})
    assert (left.phase, left.reason) == ("Failed", "DuplicatesLeft")
    assert left.message == "keys twice: (1,)"
    kept = c.outcome_of(retried, {"outcome": Outcome.STAGING_NOT_DELETED})
    assert (kept.phase, kept.reason) == ("Failed", "StagingNotDeleted")
    assert "staging could not be deleted" in kept.message
    assert c.outcome_of(c.job_state(job(active=1)), None).phase == "Running"
    assert c.outcome_of(c.job_state(job()), None).phase == "Pending"


def test_transition_time_moves_only_when_status_flips():
    first = c.set_condition(
        [],
        type_="Succeeded",
        status="Unknown",
        reason="Merging",
        message="m",
        generation=1,
        now="t1",
    )
    same = c.set_condition(
        first,
        type_="Succeeded",
        status="Unknown",
        reason="Pending",
        message="n",
        generation=2,
        now="t2",
    )
    flipped = c.set_condition(
        same,
        type_="Succeeded",
        status="True",
        reason="Merged",
        message="done",
        generation=2,
        now="t3",
    )
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["reason"] == "Merged"


def test_conditions_for_each_phase():
    def shape(outcome):
        return {
            x["type"]: (x["status"], x["reason"]) for x in c.conditions_for([], outcome, 1, "t")
        }

    assert shape(c.Outcome("Running", "Merging", "m")) == {
        "Succeeded": ("Unknown", "Merging"),
        "Ready": ("False", "Merging"),
        "Stalled": ("False", "NotStalled"),
    }
    assert shape(c.Outcome("Succeeded", "Merged", "m")) == {
        "Succeeded": ("True", "Merged"),
        "Ready": ("True", "Merged"),
        "Stalled": ("False", "NotStalled"),
    }
    assert shape(c.Outcome("Failed", "InvalidInput", "m")) == {
        "Succeeded": ("False", "InvalidInput"),
        "Ready": ("False", "InvalidInput"),
        "Stalled": ("True", "InvalidInput"),
    }
    assert all(
        x["observedGeneration"] == 1
        for x in c.conditions_for([], c.Outcome("Queued", "Queued", "m"), 1, "t")
    )


def test_progress_column():
    done = c.Outcome("Succeeded", "Merged", "m")
    assert c.progress(done, None, {"batches": 3, "batches_planned": 3}) == "3/3 batches"
    assert c.progress(c.Outcome("Queued", "Queued", "m"), None, None) == "queued"


def test_which_generations_run():
    from stagingmerge_operator.reconcile import wants_run

    assert wants_run({}, "Once", 1)  # never ran
    assert not wants_run({"runGeneration": 1, "phase": "Succeeded"}, "Once", 2)
    assert wants_run({"runGeneration": 1, "phase": "Succeeded"}, "OnSpecChange", 2)
    assert not wants_run({"runGeneration": 2, "phase": "Succeeded"}, "OnSpecChange", 2)
    assert wants_run({"runGeneration": 1, "phase": "Failed"}, "Once", 2)  # a retry by edit
    assert not wants_run({"runGeneration": 1, "phase": "Failed"}, "Once", 1)


def test_the_summary_counts_batches_in_good_english():
    assert c.summary({"inserted": 3, "batches": 1, "duration_seconds": 0.1}).endswith(
        "(1 batch, 0.1 s)"
    )
    assert "(2 batches" in c.summary({"batches": 2})


def test_a_run_that_started_never_reads_as_pending_again():
    """Between SuccessCriteriaMet and Complete, while a pod only terminates, or between a
    failed attempt and the next, the run is Running, never "waiting for its pod" (which
    once showed up as a Pending event after Merging)."""
    cases = {
        "criteria met, pods stopping": job(
            succeeded=1, terminating=1, conditions=[cond("SuccessCriteriaMet", "True")]
        ),
        "criteria met, pods gone": job(
            succeeded=1, conditions=[cond("SuccessCriteriaMet", "True")]
        ),
        "a pod terminating": job(terminating=1),
        "between attempts": job(failed=1),
    }
    for name, body in cases.items():
        outcome = c.outcome_of(c.job_state(body), None)
        assert (outcome.phase, outcome.reason) == (c.RUNNING, c.R_MERGING), name
    assert c.outcome_of(c.job_state(job()), None).phase == c.PENDING  # no pod yet
