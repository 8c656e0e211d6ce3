"""The node agent under the real controllers (issue 23, part 3): pods the real Job
controller creates and the real scheduler binds run as processes with a kubelet's
environment; their exit codes and termination messages are what the Job controller
decides on; deletion honours the grace period; an image nobody builds fails as a pull."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import Cli

# bare pods and Jobs of busybox: the agent's own behaviour, not the chart's pods
pytestmark = pytest.mark.pod_security("privileged")


def apply(kubectl: Cli, namespace: str, *objects: dict[str, Any]) -> None:
    for body in objects:
        body.setdefault("metadata", {})["namespace"] = namespace
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def get(kubectl: Cli, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json"))
    return result


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, **spec, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
            "containers": [container]}}},
    }  # fmt: skip


def finished(kubectl: Cli, plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = get(kubectl, "job", name, "-n", namespace)
        conditions = found.get("status", {}).get("conditions") or []
        done = any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                   for c in conditions)  # fmt: skip
        return found if done else None

    result: dict[str, Any] = plane.wait(check, f"Job {name} finished")
    return result


def pods_of(kubectl: Cli, namespace: str, job_name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(
        kubectl, "pods", "-n", namespace, "-l", f"job-name={job_name}"
    )["items"]
    return items


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def test_pods_get_a_kubelets_environment(
    control_plane: ControlPlane, kubectl: Cli, namespace: str
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"TOKEN": "s3cr3t"}}  # fmt: skip
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"REGION": "eu-west-1"}}  # fmt: skip
    script = (
        'printf "%s|%s|%s|%s|%s|%s" "$TOKEN" "$APP_REGION" "$POD" "$JOB_COMPLETION_INDEX" '
        '"$GREETING" "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)" '
        "> /dev/termination-log"
    )
    sources = [{"secretRef": {"name": "creds"}},
               {"configMapRef": {"name": "settings"}, "prefix": "APP_"}]  # fmt: skip
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi $(APP_REGION)"},
    ]
    indexed = job(
        "env", script, completionMode="Indexed", completions=2, parallelism=2,
        container={"envFrom": sources, "env": env},
    )  # fmt: skip
    apply(kubectl, namespace, secret, config, indexed)

    done = finished(kubectl, control_plane, namespace, "env")
    assert done["status"]["succeeded"] == 2 and done["status"]["completedIndexes"] == "0,1"
    messages = sorted(terminated(p)["message"] for p in pods_of(kubectl, namespace, "env"))
    names = sorted(p["metadata"]["name"] for p in pods_of(kubectl, namespace, "env"))
    indexes = [m.split("|")[3] for m in messages]
    assert indexes == ["0", "1"]
    for message, name in zip(messages, names, strict=True):
        assert (
            message == f"s3cr3t|eu-west-1|{name}|{message.split('|')[3]}|hi eu-west-1|{namespace}"
        )
    assert not Path("/dev/termination-log").exists()  # each pod had its own


def test_the_job_controller_decides_on_exit_codes(
    control_plane: ControlPlane, kubectl: Cli, namespace: str
) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "main", "operator": "In", "values": [2]}}]}  # fmt: skip
    apply(kubectl, namespace, job("bad-input", "echo refused > /dev/termination-log; exit 2",
                                  backoffLimit=3, podFailurePolicy=policy))  # fmt: skip

    done = finished(kubectl, control_plane, namespace, "bad-input")
    conditions = {c["type"]: c for c in done["status"]["conditions"]}
    assert conditions["Failed"]["reason"] == "PodFailurePolicy"
    assert conditions["FailureTarget"]["status"] == "True"  # set before Failed
    (pod,) = pods_of(kubectl, namespace, "bad-input")  # FailJob: no retry
    assert terminated(pod)["exitCode"] == 2 and terminated(pod)["message"] == "refused\n"
    assert pod["status"]["phase"] == "Failed"


def test_a_pod_token_is_its_own(control_plane: ControlPlane, kubectl: Cli, namespace: str) -> None:
    who = (
        "import kubernetes, json, pathlib; kubernetes.config.load_incluster_config(); "
        "r = kubernetes.client.AuthenticationV1Api().create_self_subject_review({}); "
        "pathlib.Path('/dev/termination-log').write_text(json.dumps("
        "kubernetes.client.ApiClient().sanitize_for_serialization(r.status.user_info)))"
    )
    apply(kubectl, namespace, job("whoami", "", container={"command": [sys.executable, "-c", who]}))

    finished(kubectl, control_plane, namespace, "whoami")
    (pod,) = pods_of(kubectl, namespace, "whoami")
    user = json.loads(terminated(pod)["message"])
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == [pod["metadata"]["name"]]


def test_deletion_honours_the_grace_period(
    control_plane: ControlPlane, kubectl: Cli, namespace: str, tmp_path: Path
) -> None:
    forever = "while :; do sleep 0.1; done"
    polite = f"trap 'touch {tmp_path}/stopped; exit 0' TERM; touch {tmp_path}/up; {forever}"
    stubborn = f"trap '' TERM; touch {tmp_path}/up2; {forever}"
    pods = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
            "terminationGracePeriodSeconds": grace, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}}
        for name, grace, script in (("polite", 60, polite), ("stubborn", 1, stubborn))
    ]  # fmt: skip
    apply(kubectl, namespace, *pods)
    control_plane.wait(lambda: (tmp_path / "up").exists() and (tmp_path / "up2").exists(),
                       "both pods running")  # fmt: skip

    kubectl("delete", "pod", "polite", "stubborn", "-n", namespace)  # waits until gone

    assert (tmp_path / "stopped").exists()  # SIGTERM reached the polite one's trap
    assert get(kubectl, "pods", "-n", namespace)["items"] == []  # SIGKILL ended the other


def test_an_image_nobody_builds_is_not_pulled(
    control_plane: ControlPlane, kubectl: Cli, namespace: str
) -> None:
    apply(kubectl, namespace, job("unknown", "true", container={"image": "example.com/nope:1"}))

    def waiting() -> dict[str, Any] | None:
        pods = pods_of(kubectl, namespace, "unknown")
        statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
        return statuses[0]["state"].get("waiting") if statuses else None

    state = control_plane.wait(waiting, "the pod's pull failure")
    assert state["reason"] == "ErrImagePull" and "example.com/nope:1" in state["message"]
