"""The API server misbehaving for a while: errors, conflicts, slow answers. The operator
must converge to the right status with exactly one Job per generation."""

from __future__ import annotations

import pytest
from kmock._internal import enums

from tests.e2e.cluster import Fault
from tests.e2e.harness import Operator
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
