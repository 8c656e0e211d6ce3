"""The API server misbehaving for a while: errors, conflicts, slow answers. The operator
must converge to the right status with exactly one Job per generation."""

from __future__ import annotations

import pytest
from kmock._internal import enums

from tests.e2e.emulator.cluster import OPERATOR_TOKEN, Fault
from tests.e2e.harness import Operator, wait_for
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e


def on(action, plural, subresource=None, method=None):
    def matches(request) -> bool:
        return (
            request.action == action
            and request.resource is not None
            and request.resource.plural == plural
            and request.subresource == subresource
            and (method is None or request.method == method)
        )

    return matches


def test_status_converges_through_api_errors_and_timeouts(cluster, kubectl, runner, tmp_path):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    for fault in [
        Fault(on(enums.action.UPDATE, "stagingmerges", "status"), times=8, status=500),
        Fault(on(enums.action.CREATE, "jobs"), times=2, status=409),
        Fault(on(enums.action.FETCH, "jobs"), times=4, status=503),
        Fault(on(enums.action.FETCH, "stagingmerges"), times=3, status=None, delay=2.5),
        Fault(on(enums.action.LIST, "pods"), times=3, status=500),
    ]:
        cluster.inject(fault)
    operator = Operator(cluster, tmp_path, STAGINGMERGE_API_TIMEOUT_SECONDS="1").start()
    try:
        kubectl.apply("stormy", {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}})
        condition = kubectl.wait("stormy", "True", timeout=120)
    finally:
        operator.stop()

    assert condition["reason"] == "Merged"
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["stormy-g1"]
    assert len(runner.attempts_of("stormy-g1")) == 1
    status = kubectl.get("stormy")["status"]
    assert status["metrics"]["inserted"] == 3 and status["observedGeneration"] == 1
    assert len(key_list(main)) == 6
    assert all(f.times == 0 for f in cluster.emulator.faults), "every fault was hit"


def test_job_events_are_selected_by_the_server_and_survive_410(cluster, kubectl, runner, tmp_path):
    """The merge Jobs' watch sends its label selector to the API server (no other Job
    reaches the operator) and lists again after 410 Gone. The poller is set to an hour, so
    only the watch can move this merge along."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    kubectl.batch.create_namespaced_job(
        "default",
        {
            "metadata": {"name": "someone-elses"},
            "spec": {
                "suspend": True,  # Kueue's, say; the job runner leaves it alone
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "image": "x", "command": ["true"]}],
                        "restartPolicy": "Never",
                    }
                },
            },
        },
    )
    cluster.inject(Fault(on(enums.action.WATCH, "jobs"), times=2, status=410))
    operator = Operator(cluster, tmp_path, STAGINGMERGE_QUEUE_POLL_SECONDS="3600").start()
    try:
        # both 410s before the merge exists: only a watch that listed again can see its Job
        # (a merge this small can end between the first 410 and the second)
        wait_for(
            lambda: all(f.times == 0 for f in cluster.emulator.faults),
            timeout=120,
            what="the Job watch to be sent 410 Gone twice",
        )
        kubectl.apply("watched", {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}})
        condition = kubectl.wait("watched", "True", timeout=120)
    finally:
        operator.stop()
    assert condition["reason"] == "Merged" and len(key_list(main)) == 6
    job_reads = [
        r
        for r in cluster.emulator.served
        if r.headers.get("Authorization") == f"Bearer {OPERATOR_TOKEN}"
        and r.resource is not None
        and r.resource.plural == "jobs"
        and r.action in (enums.action.LIST, enums.action.WATCH)
    ]
    assert job_reads and all(
        "app.kubernetes.io/managed-by=stagingmerge-operator"
        in r.params.get("labelSelector", "").split(",")
        for r in job_reads
    ), [(r.action, dict(r.params)) for r in job_reads]
