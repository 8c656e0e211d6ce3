"""The operator as `helm install` runs it, on the real control plane, with the real
`stagingmerge-merge` run in pods by the node agent on real Delta tables."""

from __future__ import annotations

import pytest

from stagingmerge_merger.contract import Outcome
from tests.e2e.harness import slow_tables, spec_for, wait_for
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e


def test_success_puts_conditions_and_metrics_on_the_resource(kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 5, range(5), seed=1))
    write(staging, ct([0] * 5, range(3, 8), seed=2))

    kubectl.apply("backfill", {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}})
    condition = kubectl.wait("backfill", "True")

    merge = kubectl.get("backfill")
    status = merge["status"]
    assert condition["reason"] == "Merged"
    assert status["phase"] == "Succeeded" and status["terminalState"] == "Succeeded"
    assert status["metrics"]["inserted"] == 3 and status["metrics"]["skipped_existing"] == 2
    assert status["jobName"] == "backfill-g1" and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Succeeded": "True",
        "Ready": "True",
        "Stalled": "False",
    }
    assert len(key_list(main)) == 8 and not staging.exists()
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["backfill-g1"]
    wait_for(lambda: {e["reason"] for e in kubectl.events("backfill")} >= {"Started", "Merged"})
    # this test's own operator: it counted this merge only
    operator.scrape_until(
        "stagingmerge_merges_started_total 1.0",
        "stagingmerge_merges_succeeded_total 1.0",
        "stagingmerge_rows_inserted_total 3.0",
    )
    assert operator.ready()


def test_bad_input_fails_at_once_with_the_reason(kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0], [0]))
    write(staging, ct([0], [1]).drop_columns(["chain"]))  # schema mismatch: exit code 2

    kubectl.apply("bad", spec_for(main, staging, backoffLimit=5))
    condition = kubectl.wait("bad", "False")
    # podFailurePolicy FailJob on exit code 2, decided by the real Job controller
    assert condition["reason"] == "InvalidInput"
    assert "main has columns staging lacks: chain" in condition["message"]
    assert len(runner.attempts_of("bad-g1")) == 1  # exit code 2 is never retried
    status = kubectl.get("bad")["status"]
    assert (
        status["terminalState"] == "Failed"
        and status["metrics"]["outcome"] == Outcome.INVALID_INPUT
    )
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Succeeded": "False",
        "Ready": "False",
        "Stalled": "True",
    }
    warnings = wait_for(lambda: [e for e in kubectl.events("bad") if e["type"] == "Warning"])
    assert warnings[0]["reason"] == "InvalidInput"


def test_an_invalid_spec_never_creates_a_job(kubectl, operator, runner, tmp_path):
    """The CRD's CEL rules refuse equal URIs as written (the real API server applies
    them); the operator also compares them normalised."""
    kubectl.apply("same", spec_for(tmp_path / "t", f"file://{tmp_path}/./t"))
    condition = kubectl.wait("same", "False")
    assert condition["reason"] == "InvalidSpec"
    assert "same location" in condition["message"]
    assert kubectl.jobs() == []


def test_a_transient_failure_is_retried_then_succeeds(kubectl, operator, runner, bucket, s3_server):
    from tests.s3 import MotoS3
    from tests.stores import Store

    store = Store("s3", f"s3://{bucket}", options=s3_server.options, server=s3_server)
    store.write("main", ct([0] * 3, range(3), seed=1))
    store.write("staging", ct([0] * 3, range(2, 5), seed=2))
    flaky = MotoS3().start()  # the merge's endpoint: down for the first attempt
    flaky.stop()
    kubectl.secret("s3-credentials", {**s3_server.env, "AWS_ENDPOINT_URL": flaky.endpoint})
    kubectl.apply(
        "flaky",
        {
            "main": {"uri": store.uri("main")},
            "staging": {"uri": store.uri("staging")},
            "storageSecretRef": {"name": "s3-credentials"},
            "storageOptions": {"max_retries": "1", "retry_timeout": "1s"},
        },
    )
    try:
        wait_for(
            lambda: (
                runner.attempts_of("flaky-g1") and runner.attempts_of("flaky-g1")[0].exit_code == 1
            ),
            what="a failed attempt",
        )
        flaky.start()  # the store is back
        condition = kubectl.wait("flaky", "True")
    finally:
        flaky.stop()
    assert condition["reason"] == "Merged"
    assert len(runner.attempts_of("flaky-g1")) >= 2
    status = kubectl.get("flaky")["status"]
    assert status["attempts"] >= 2 and status["metrics"]["inserted"] == 2, [
        a.log_file.read_text()[-3000:] for a in runner.attempts_of("flaky-g1")
    ]
    assert len(store.keys("main")) == 5


def test_operator_restart_mid_run_keeps_one_job(kubectl, operator, runner, tmp_path):
    main, staging = slow_tables(tmp_path)
    kubectl.apply("restart", spec_for(main, staging, batchRows=20))
    wait_for(lambda: runner.attempts_of("restart-g1"), what="the merge to start")
    operator.stop(kill=True)  # SIGKILL: its container restarts, as a kubelet restarts it
    operator.start()

    condition = kubectl.wait("restart", "True")

    assert condition["reason"] == "Merged"
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["restart-g1"]
    assert len(runner.attempts_of("restart-g1")) == 1
    keys = key_list(main)
    assert len(keys) == len(set(keys)) == 800  # main's 4 keys are among staging's 800


def test_two_merges_into_one_main_run_one_after_the_other(kubectl, operator, runner, tmp_path):
    main, first = slow_tables(tmp_path, files=15)
    second = tmp_path / "second"
    write(second, ct([2] * 10, range(10), seed=99))

    kubectl.apply("first", spec_for(main, first, batchRows=20))
    wait_for(lambda: runner.attempts_of("first-g1"), what="the first merge to start")
    kubectl.apply("second", spec_for(main, second))
    queued = wait_for(
        lambda: (
            (kubectl.get("second").get("status") or {}).get("phase") == "Queued"
            and kubectl.condition("second", "Succeeded")
        ),
        what="second to queue",
    )
    assert queued["reason"] == "Queued" and "first-g1" in queued["message"]

    kubectl.wait("first", "True")
    kubectl.wait("second", "True")

    first_run, second_run = runner.attempts_of("first-g1")[0], runner.attempts_of("second-g1")[0]
    assert first_run.ended is not None and second_run.started >= first_run.ended
    assert len(key_list(main)) == 300 + 10  # main's 4 keys are among first's 300


def test_deleting_the_resource_mid_run_deletes_the_job_and_stops_the_merge(
    kubectl, operator, runner, tmp_path
):
    main, staging = slow_tables(tmp_path)
    kubectl.apply("doomed", spec_for(main, staging, batchRows=20))
    wait_for(lambda: runner.attempts_of("doomed-g1"), what="the merge to start")
    wait_for(
        lambda: "batch done" in runner.attempts_of("doomed-g1")[0].log_file.read_text(),
        what="a first batch",
    )

    kubectl.delete("doomed")

    wait_for(lambda: kubectl.jobs() == [], what="the Job to be garbage-collected")
    attempt = wait_for(
        lambda: (
            runner.attempts_of("doomed-g1")[0].exit_code is not None
            and runner.attempts_of("doomed-g1")[0]
        )
    )
    assert attempt.exit_code == 1  # SIGTERM: stopped after the batch in flight
    assert staging.exists()
    keys = key_list(main)
    assert len(keys) == len(set(keys))


def test_run_policy_once_ignores_later_spec_changes(kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.apply("once", spec_for(main, staging))
    kubectl.wait("once", "True")

    kubectl.patch_spec("once", {"batchRows": 10})

    merge = wait_for(
        lambda: (kubectl.get("once")["status"]["observedGeneration"] == 2) and kubectl.get("once"),
        what="generation 2 to be observed",
    )
    assert merge["status"]["phase"] == "Succeeded"
    assert all(c["observedGeneration"] == 2 for c in merge["status"]["conditions"])
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["once-g1"]


def test_run_policy_on_spec_change_runs_the_new_generation(kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.apply("again", spec_for(main, staging, runPolicy="OnSpecChange"))
    kubectl.wait("again", "True")
    write(staging, ct([0], [2], seed=5))  # a new backfill in the same place

    kubectl.patch_spec("again", {"batchRows": 10})

    wait_for(
        lambda: kubectl.get("again")["status"].get("jobName") == "again-g2",
        what="a Job for generation 2",
    )
    kubectl.wait("again", "True")
    wait_for(lambda: kubectl.get("again")["status"]["phase"] == "Succeeded")
    assert sorted(j["metadata"]["name"] for j in kubectl.jobs()) == ["again-g1", "again-g2"]
    assert len(key_list(main)) == 2


def test_an_unfinished_merge_can_be_deleted_while_the_operator_is_down(
    kubectl, operator, runner, tmp_path
):
    """No finalizer is put on a StagingMerge, so deleting one never waits for the operator
    (nor does deleting its namespace, or uninstalling the release)."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.apply("held", spec_for(main, staging, suspend=True))
    wait_for(lambda: (kubectl.get("held").get("status") or {}).get("phase") == "Suspended")
    assert not kubectl.get("held")["metadata"].get("finalizers")
    operator.stop()

    kubectl.delete("held")

    wait_for(lambda: kubectl.get("held") is None, what="the resource to be gone")
