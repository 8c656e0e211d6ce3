"""Two operators for one set of namespaces: only the Lease holder reconciles; when it dies,
the other takes over once the lease expires.

Two releases of the chart in one namespace stand for two replicas of one Deployment: the
node agent's pods share 127.0.0.1, so two replicas would bind the same ports. Each
release is the same Deployment with ports of its own, contending for the same Lease
(its name is fixed; it lives in the operator's namespace)."""

from __future__ import annotations

from collections.abc import Callable

import kubernetes
import pytest

from tests.e2e.harness import Kubectl, Release, spec_for, wait_for
from tests.helpers import ct, write

pytestmark = pytest.mark.e2e
LEASE_SECONDS = "2"


def holder(kubectl: Kubectl) -> str | None:
    api = kubernetes.client.CoordinationV1Api(kubectl.api)
    try:
        identity: str | None = api.read_namespaced_lease(
            "stagingmerge-operator", kubectl.namespace
        ).spec.holder_identity
        return identity
    except kubernetes.client.exceptions.ApiException:
        return None


def test_only_the_lease_holder_reconciles(
    install_operator: Callable[..., Release], kubectl: Kubectl, runner, tmp_path
) -> None:
    first = install_operator(name="a", STAGINGMERGE_LEADER_LEASE_SECONDS=LEASE_SECONDS)
    wait_for(lambda: holder(kubectl), what="the first operator to hold the lease")
    held_by_first = holder(kubectl)
    second = install_operator(
        "--set", "mergeServiceAccount.create=false",  # the first release made it
        name="b", STAGINGMERGE_LEADER_LEASE_SECONDS=LEASE_SECONDS,
    )  # fmt: skip
    wait_for(lambda: "waiting to take over" in second.logs(), what="the second to wait")

    write(tmp_path / "s1", ct([0] * 3, range(3)))
    kubectl.apply("m1", spec_for(tmp_path / "main", tmp_path / "s1"))
    kubectl.wait("m1", "True")
    assert "created Job m1-g1" in first.logs() and "created Job" not in second.logs()

    first.stop(kill=True)  # no goodbye: the lease just stops being renewed
    first.kubectl("scale", first.deployment, "-n", first.namespace, "--replicas=0")
    wait_for(
        lambda: holder(kubectl) not in (None, held_by_first),
        what="the second operator to take over the lease",
    )
    write(tmp_path / "s2", ct([1] * 3, range(3)))
    kubectl.apply("m2", spec_for(tmp_path / "main", tmp_path / "s2"))
    kubectl.wait("m2", "True")
    assert "created Job m2-g1" in second.logs()
