"""The API server misbehaving for a while: errors, conflicts, slow answers, watches that
expire. The operator must converge to the right status with exactly one Job per
generation. The real server will not give these answers on demand, so the operator pod
reaches it through the fault proxy (controlplane/faultproxy.py); everything the proxy
does not answer itself is the real server's answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.controlplane.faultproxy import Fault, FaultProxy
from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import Kubectl, Release, wait_for
from tests.e2e.rbac import service_account_user
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    running = FaultProxy(control_plane.pki, control_plane.port).start()
    yield running
    running.stop()


def behind(proxy: FaultProxy) -> dict[str, str]:
    """The operator's variables that send its API calls through the proxy."""
    port = str(proxy.port)
    return {"KUBERNETES_SERVICE_PORT": port, "KUBERNETES_SERVICE_PORT_HTTPS": port}


def test_status_converges_through_api_errors_and_timeouts(
    install_operator: Callable[..., Release], proxy: FaultProxy, kubectl: Kubectl, runner,
    tmp_path,
) -> None:  # fmt: skip
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    install_operator(STAGINGMERGE_API_TIMEOUT_SECONDS="1", **behind(proxy))
    merges = f"/apis/stagingmerge.io/v1alpha1/namespaces/{kubectl.namespace}/stagingmerges"
    jobs = f"/apis/batch/v1/namespaces/{kubectl.namespace}/jobs"
    for fault in [
        Fault("PATCH", f"{merges}/[^/]+/status", times=8, status=500),
        Fault("POST", jobs, times=2, status=409),
        Fault("GET", f"{jobs}/[^/]+", times=4, status=503),
        Fault("GET", f"{merges}/[^/]+", times=3, delay=2.5),  # past the 1 s client timeout
        Fault(
            "GET", f"/api/v1/namespaces/{kubectl.namespace}/pods", times=3, status=500, watch=False
        ),
    ]:
        proxy.inject(fault)

    kubectl.apply("stormy", {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}})
    condition = kubectl.wait("stormy", "True")

    assert condition["reason"] == "Merged"
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["stormy-g1"]
    assert len(runner.attempts_of("stormy-g1")) == 1
    status = kubectl.get("stormy")["status"]
    assert status["metrics"]["inserted"] == 3 and status["observedGeneration"] == 1
    assert len(key_list(main)) == 6
    assert all(f.times == 0 for f in proxy.faults), [(f.path, f.times) for f in proxy.faults]


def test_job_events_are_selected_by_the_server_and_survive_410(
    control_plane: ControlPlane, install_operator: Callable[..., Release], proxy: FaultProxy,
    kubectl: Kubectl, runner, tmp_path,
) -> None:  # fmt: skip
    """The merge Jobs' watch sends its label selector to the API server (no other Job
    reaches the operator) and lists again after 410 Gone. The poll period is an hour (one
    watch window and one resync an hour), so only the Job events can move this merge
    along."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 3, range(3), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    kubectl.batch.create_namespaced_job(
        kubectl.namespace,
        {
            "metadata": {"name": "someone-elses"},
            "spec": {
                "suspend": True,  # Kueue's, say: the Job controller leaves it alone
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                        "restartPolicy": "Never",
                    }
                },
            },
        },
    )
    watch = proxy.inject(Fault("GET", f"/apis/batch/v1/namespaces/{kubectl.namespace}/jobs",
                               times=2, status=410, watch=True))  # fmt: skip
    mark = control_plane.audit_mark()
    operator = install_operator("--set", "operator.queuePollSeconds=3600", **behind(proxy))
    # both 410s before the merge exists: only a watch that listed again can see its Job
    wait_for(lambda: watch.times == 0, what="the Job watch to be sent 410 Gone twice")
    kubectl.apply("watched", {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}})
    condition = kubectl.wait("watched", "True")
    assert condition["reason"] == "Merged" and len(key_list(main)) == 6

    account = operator.operator_pod()["spec"]["serviceAccountName"]  # type: ignore[index]
    user = service_account_user(operator.namespace, account)
    job_reads = [
        event["requestURI"]
        for event in control_plane.audit_events(mark)
        if event["user"]["username"] == user
        and (event.get("objectRef") or {}).get("resource") == "jobs"
        and event["verb"] in ("list", "watch")
    ]
    selectors = [parse_qs(urlsplit(uri).query).get("labelSelector", [""])[0] for uri in job_reads]
    assert job_reads and all(
        "app.kubernetes.io/managed-by=stagingmerge-operator" in s.split(",") for s in selectors
    ), job_reads
