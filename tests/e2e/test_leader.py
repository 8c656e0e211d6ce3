"""Two operator processes against one cluster: only the Lease holder reconciles; when it
dies, the other takes over once the lease expires."""

from __future__ import annotations

import kubernetes
import pytest

from tests.e2e.harness import Operator, wait_for
from tests.e2e.test_operator import spec_for
from tests.helpers import ct, write

pytestmark = pytest.mark.e2e
LEASE = {
    "STAGINGMERGE_LEADER_ELECTION_NAMESPACE": "stagingmerge",
    "STAGINGMERGE_LEADER_LEASE_SECONDS": "2",
}


def holder(kubectl) -> str | None:
    api = kubernetes.client.CoordinationV1Api(kubectl.api)
    try:
        return api.read_namespaced_lease(
            "stagingmerge-operator", "stagingmerge"
        ).spec.holder_identity
    except kubernetes.client.exceptions.ApiException:
        return None


def test_only_the_lease_holder_reconciles(cluster, kubectl, runner, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Operator(cluster, tmp_path / "a", **LEASE).start()
    second = None
    try:
        wait_for(lambda: holder(kubectl), what="the first operator to hold the lease")
        held_by_first = holder(kubectl)
        second = Operator(cluster, tmp_path / "b", **LEASE).start()
        wait_for(lambda: "waiting to take over" in second.logs(), what="the second to wait")

        write(tmp_path / "s1", ct([0] * 3, range(3)))
        kubectl.apply("m1", spec_for(tmp_path / "main", tmp_path / "s1"))
        kubectl.wait("m1", "True", timeout=90)
        assert "created Job m1-g1" in first.logs() and "created Job" not in second.logs()

        first.stop(kill=True)  # no goodbye: the lease just stops being renewed
        wait_for(
            lambda: holder(kubectl) not in (None, held_by_first),
            timeout=60,
            what="the second operator to take over the lease",
        )
        write(tmp_path / "s2", ct([1] * 3, range(3)))
        kubectl.apply("m2", spec_for(tmp_path / "main", tmp_path / "s2"))
        kubectl.wait("m2", "True", timeout=90)
        assert "created Job m2-g1" in second.logs()
    finally:
        first.stop()
        if second is not None:
            second.stop()
