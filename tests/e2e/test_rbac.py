"""Least privilege, measured: the operator runs against the emulator enforcing the chart's
RBAC (tests/e2e/emulator/rbac.py) in both install modes; every request it makes is allowed, and
every rule the chart grants it is used."""

from __future__ import annotations

import pytest

from tests.e2e.emulator.cluster import OPERATOR_TOKEN, RunningCluster
from tests.e2e.emulator.jobrunner import JobRunner
from tests.e2e.emulator.rbac import HELM, OPERATOR, Authorizer, render_chart, unused
from tests.e2e.harness import Kubectl, Operator, wait_for
from tests.e2e.test_operator import spec_for
from tests.helpers import ct, key_list, write

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not HELM.exists(), reason="needs helm (make test fetches it)"),
]
MODES = {
    "cluster-wide": ((), {}),
    "watchNamespaces": (
        ("--set", "watchNamespaces={default}"),
        {"STAGINGMERGE_NAMESPACES": "default"},
    ),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_request_is_allowed_and_every_rule_is_used(tmp_path, mode):
    values, env = MODES[mode]
    authorizer = Authorizer.from_manifests(render_chart(*values), {OPERATOR_TOKEN: OPERATOR})
    cluster = RunningCluster(authorizer).start()
    kubectl = Kubectl(cluster)
    runner = JobRunner(kubectl.api, tmp_path / "pods").start()
    operator = Operator(
        cluster,
        tmp_path,
        STAGINGMERGE_LEADER_ELECTION_NAMESPACE="stagingmerge",  # what the chart sets
        STAGINGMERGE_LEADER_LEASE_SECONDS="2",
        **env,
    ).start()
    try:
        main = tmp_path / "main"
        write(main, ct([2], [9]))  # so "bad" fails whichever of the two runs first
        write(tmp_path / "ok", ct([0] * 3, range(3)))
        write(tmp_path / "bad", ct([1], [1]).drop_columns(["chain"]))
        # "ok" is deleted by its TTL once it finished (the one delete the operator may do)
        kubectl.apply("ok", {**spec_for(main, tmp_path / "ok"), "ttlSecondsAfterFinished": 1})
        kubectl.apply("bad", spec_for(main, tmp_path / "bad"))  # same main: queued, then fails
        kubectl.wait("bad", "False", timeout=90)
        wait_for(lambda: kubectl.get("ok") is None, timeout=90, what="ok deleted by its TTL")
        assert (ct([0], [2])["source_url"][0].as_py(), 2) in key_list(main)
        # the lease is renewed (patched) every third of its 2 s
        wait_for(lambda: ("patch", "coordination.k8s.io", "leases") in authorizer.used)
    finally:
        operator.stop()
        runner.stop()
        cluster.stop()
    assert authorizer.refused == [], operator.logs()[-5000:]
    assert unused(authorizer) == set(), "granted but never used"
    assert runner.errors == []
