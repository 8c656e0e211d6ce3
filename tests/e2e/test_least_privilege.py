"""Least privilege, measured by the real API server: the operator runs from the chart in
both install modes; its ServiceAccount's requests, read back from the audit log, are all
allowed, and every rule the chart grants it was needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import cluster_release
from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import Cli, Kubectl, Release, spec_for, wait_for
from tests.e2e.rbac import granted, service_account_user, unused, uses
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e
# Checked by OwnerReferencesPermissionEnforcement inside the Job's create (a Job's
# ownerReference with blockOwnerDeletion needs it), so never a request of its own.
BY_ADMISSION = ("update", "stagingmerge.io", "stagingmerges/finalizers")


def exercise(kubectl: Kubectl, tmp_path: Path) -> None:
    """A merge that succeeds and expires by its TTL (the one delete the operator may do),
    and one into the same main that is queued behind it, then fails on bad input."""
    main = tmp_path / "main"
    write(main, ct([2], [9]))  # so "bad" fails whichever of the two runs first
    write(tmp_path / "ok", ct([0] * 3, range(3)))
    write(tmp_path / "bad", ct([1], [1]).drop_columns(["chain"]))
    kubectl.apply("ok", {**spec_for(main, tmp_path / "ok"), "ttlSecondsAfterFinished": 1})
    kubectl.apply("bad", spec_for(main, tmp_path / "bad"))
    kubectl.wait("bad", "False")
    wait_for(lambda: kubectl.get("ok") is None, what="ok deleted by its TTL")
    assert (ct([0], [2])["source_url"][0].as_py(), 2) in key_list(main)


@pytest.mark.parametrize("mode", ["cluster-wide", "watchNamespaces"])
def test_every_request_is_allowed_and_every_rule_is_used(
    mode: str, control_plane: ControlPlane, kubectl_cli: Cli, helm: Cli,
    install_operator: Callable[..., Release], kubectl: Kubectl, tmp_path: Path,
) -> None:  # fmt: skip
    if mode == "cluster-wide":
        # an earlier release there (the session's CRD install) left its Lease behind, as
        # `helm uninstall` does: without it this install creates one, as a first one would
        release = cluster_release(control_plane, kubectl_cli, helm)
        kubectl_cli("delete", "lease", "stagingmerge-operator", "-n", release.namespace,
                    "--ignore-not-found")  # fmt: skip
    mark = control_plane.audit_mark()
    release = release.install() if mode == "cluster-wide" else install_operator()
    try:
        exercise(kubectl, tmp_path)
        account = release.operator_pod()["spec"]["serviceAccountName"]  # type: ignore[index]
        user = service_account_user(release.namespace, account)
        # the lease is renewed (patched) every third of its duration: wait for one
        wait_for(
            lambda: (
                ("patch", "coordination.k8s.io", "leases", release.namespace)
                in uses(control_plane.audit_events(mark), user)[0]
            ),
            what="a lease renewal in the audit log",
        )
        docs = list(yaml.safe_load_all(helm("get", "manifest", release.name, "-n",
                                            release.namespace)))  # fmt: skip
    finally:
        if mode == "cluster-wide":
            release.uninstall()
    grants = granted(docs, user)
    used, refused = uses(control_plane.audit_events(mark), user)
    assert refused == [], release.logs()[-5000:]
    assert ("create", "batch", "jobs", kubectl.namespace) in used
    assert unused(grants, used) == {BY_ADMISSION}, "granted but never used"
    # and nothing it did needed more than the chart grants (the server said so: no 403)
    assert {(v, g, r) for v, g, r, _ in used} <= set(grants)
