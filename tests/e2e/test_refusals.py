"""What a real API server refuses, and Jobs that are not ours: the operator reports each as
a status with the reason, never an endless silent retry, and never adopts another's Job."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from tests.e2e.harness import spec_for, wait_for
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e


def test_a_spec_the_api_server_would_refuse_is_invalid_before_any_job(
    kubectl, operator, runner, tmp_path
):
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.apply(
        "picky",
        spec_for(
            main,
            staging,
            nodeSelector={"pool": "gpu-"},  # a label value may not end with '-'
            tolerations=[{"key": "k", "operator": "Exists", "value": "v"}],
        ),
    )
    condition = kubectl.wait("picky", "False")
    assert condition["reason"] == "InvalidSpec"
    assert "spec.nodeSelector.pool 'gpu-' is not a valid label value" in condition["message"]
    assert kubectl.jobs() == []


def test_credentials_in_storage_options_are_refused(kubectl, operator, runner, tmp_path):
    kubectl.apply(
        "leaky",
        spec_for(
            tmp_path / "m",
            tmp_path / "s",
            storageOptions={"AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_REGION": "eu-west-1"},
        ),
    )
    condition = kubectl.wait("leaky", "False")
    assert condition["reason"] == "InvalidSpec" and "storageSecretRef" in condition["message"]
    assert "hunter2" not in condition["message"] and kubectl.jobs() == []


def test_a_job_the_api_server_refuses_becomes_a_status(kubectl, operator, runner, tmp_path):
    """A namespace whose ResourceQuota allows no Jobs: the real ResourceQuota admission
    refuses the Job (403), which retrying cannot change."""
    kubectl.core.create_namespaced_resource_quota(kubectl.namespace, {
        "metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}},
    })  # fmt: skip
    wait_for(
        lambda: (
            kubectl.core.read_namespaced_resource_quota("no-jobs", kubectl.namespace).status.hard
        ),
        what="the quota controller to account the namespace",
    )
    kubectl.apply("refused", spec_for(tmp_path / "m", tmp_path / "s"))
    condition = kubectl.wait("refused", "False")
    assert condition["reason"] == "JobRefused"
    assert "refused Job refused-g1 (403)" in condition["message"]
    assert "exceeded quota: no-jobs" in condition["message"]
    warnings = wait_for(lambda: [e for e in kubectl.events("refused") if e["type"] == "Warning"])
    assert warnings[0]["reason"] == "JobRefused"


def test_names_that_sanitise_alike_get_jobs_of_their_own(kubectl, operator, runner, tmp_path):
    main = tmp_path / "main"
    for name, log in (("a.b", 0), ("a-b", 1)):
        write(tmp_path / name, ct([log] * 3, range(3), seed=log))
        kubectl.apply(name, spec_for(main, tmp_path / name))
    for name in ("a.b", "a-b"):
        assert kubectl.wait(name, "True")["reason"] == "Merged"
    jobs = sorted(j["metadata"]["name"] for j in kubectl.jobs())
    assert len(jobs) == 2 and "a-b-g1" in jobs
    assert len(key_list(main)) == 6


def test_a_job_left_by_another_object_is_not_adopted(kubectl, operator, runner, tmp_path):
    """A Job named as this StagingMerge's would be, owned by something else (an earlier
    StagingMerge of the same name, orphaned): reported, and no merge is claimed."""
    staging = tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.batch.create_namespaced_job(
        kubectl.namespace,
        {
            "metadata": {
                "name": "again-g1",
                "labels": {"app.kubernetes.io/managed-by": "someone-else"},
            },
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                        "restartPolicy": "Never",
                    }
                },
            },
        },
    )
    kubectl.apply("again", spec_for(tmp_path / "main", staging))
    condition = kubectl.wait("again", "False")
    assert condition["reason"] == "JobConflict" and "again-g1" in condition["message"]
    assert staging.exists() and not (tmp_path / "main").exists()


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers: a store that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    server.close()


def test_a_failing_job_keeps_its_main_until_its_pods_are_gone(
    kubectl, operator, runner, s3_server, bucket, silent_endpoint
):
    """FailureTarget is set while the pod still terminates (and may commit a batch in its
    grace period): the next merge into the same main waits for Failed and no pods left.

    The first merge's store never answers, so it can only end by its deadline, however
    fast or slow this machine is; the second shares its main table (the same URI) but
    reaches the real store."""
    from tests.stores import Store

    store = Store("s3", f"s3://{bucket}", options=s3_server.options, server=s3_server)
    store.write("second", ct([2] * 5, range(5), seed=9))
    kubectl.secret("s3", s3_server.env)
    kubectl.secret("hung", {**s3_server.env, "AWS_ENDPOINT_URL": silent_endpoint})
    main = store.uri("main")
    kubectl.apply(
        "first",
        {
            "main": {"uri": main},
            "staging": {"uri": store.uri("first")},
            "storageSecretRef": {"name": "hung"},
            # long enough for its pod to start on a loaded machine (the deadline counts
            # from the Job's start: at 1 s it could pass before the pod ever ran)
            "activeDeadlineSeconds": 15,
            "backoffLimit": 0,
        },
    )
    wait_for(lambda: runner.attempts_of("first-g1"), what="the first merge to start")
    kubectl.apply(
        "second",
        {
            "main": {"uri": main},
            "staging": {"uri": store.uri("second")},
            "storageSecretRef": {"name": "s3"},
        },
    )

    assert kubectl.wait("first", "False")["reason"] == "DeadlineExceeded"
    kubectl.wait("second", "True")

    ended = runner.attempts_of("first-g1")[0].ended
    assert ended is not None and runner.attempts_of("second-g1")[0].started >= ended
    assert len(store.keys("main")) == 5


def test_a_pod_that_cannot_start_does_not_hold_its_main_forever(
    kubectl, operator, runner, tmp_path
):
    """A ServiceAccount missing in the namespace: no pod is ever created. The Job's deadline
    (the operator's default when the spec sets none) ends it, and the status says so."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(staging, ct([0], [1]))
    kubectl.apply(
        "stuck", spec_for(main, staging, serviceAccountName="nobody", activeDeadlineSeconds=2)
    )
    condition = kubectl.wait("stuck", "False")
    assert condition["reason"] == "DeadlineExceeded"
    assert 'serviceaccount "nobody" not found' in runner.pod_refusals("stuck-g1")
    assert runner.attempts_of("stuck-g1") == [] and staging.exists()
