"""The real control plane itself, and the chart on it (issue 23, parts 1 and 2): the
components built from the pinned modules answer, the controllers the operator relies on
act (ServiceAccounts, the root CA ConfigMap, Jobs creating pods, the scheduler, the
Deployment chain), the server enforces the CRD's schema and Pod Security, and every
request lands in the audit log."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.e2e.controlplane.plane import ROOT, ControlPlane
from tests.e2e.harness import Cli, Release

# bare pods and Jobs of busybox: the agent's own behaviour, not the chart's pods
pytestmark = pytest.mark.pod_security("privileged")

SAMPLE = ROOT / "crds" / "samples" / "stagingmerge.io_v1alpha1_stagingmerge.yaml"


def pinned_kubernetes() -> str:
    text = (ROOT / "tools" / "k8s" / "go.mod").read_text()
    return next(
        line.split()[1]
        for line in text.splitlines()
        if line.strip().startswith("k8s.io/kubernetes ")
    )


def get(kubectl: Cli, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json"))
    return result


def test_components_built_from_the_pins_answer(control_plane: ControlPlane, kubectl: Cli) -> None:
    versions = json.loads(kubectl("version", "-o", "json"))
    assert versions["serverVersion"]["gitVersion"] == pinned_kubernetes()
    assert versions["clientVersion"]["gitVersion"] == pinned_kubernetes()
    ready = kubectl("get", "--raw", "/readyz?verbose")
    assert "readyz check passed" in ready and "[+]etcd ok" in ready


def test_controllers_act(control_plane: ControlPlane, kubectl: Cli, namespace: str) -> None:
    # root-ca-certificate-publisher: the CA in-cluster clients verify the server with
    def root_ca() -> str:
        found = kubectl.run("get", "configmap", "kube-root-ca.crt", "-n", namespace, "-o", "json")
        return found.stdout

    published = json.loads(control_plane.wait(root_ca, "kube-root-ca.crt"))["data"]["ca.crt"]
    assert published.strip() == control_plane.pki.ca.read_text().strip()
    # the Job controller creates the pod, the scheduler binds it to the agent's node
    kubectl("create", "job", "probe", "-n", namespace, "--image=busybox", "--", "true")
    assert "condition met" in kubectl(
        "wait", "--for=condition=Complete", "job/probe", "-n", namespace, "--timeout=-1s"
    )
    (pod,) = get(kubectl, "pods", "-n", namespace, "-l", "job-name=probe")["items"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["spec"]["nodeName"] == "node-1"
    assert pod["status"]["phase"] == "Succeeded"


def test_every_request_is_audited(
    control_plane: ControlPlane, kubectl: Cli, namespace: str
) -> None:
    def created() -> list[dict[str, Any]]:
        return [
            e for e in control_plane.audit_events()
            if e["verb"] == "create" and e["objectRef"].get("resource") == "namespaces"
            and e["objectRef"].get("name") == namespace
        ]  # fmt: skip

    event = control_plane.wait(created, "the audit event of the namespace's creation")[0]
    assert event["user"]["username"] == "admin"
    assert event["responseStatus"]["code"] == 201
    assert event["annotations"]["authorization.k8s.io/decision"] == "allow"


def test_chart_installs_on_the_real_server(
    control_plane: ControlPlane, kubectl: Cli, release: Release, namespace: str
) -> None:
    assert "condition met" in kubectl(
        "wait", "--for=condition=Established", "crd/stagingmerges.stagingmerge.io"
    )
    # the Deployment and ReplicaSet controllers made the operator pod; Pod Security
    # admission (restricted, enforced) let it in; it runs as the chart's ServiceAccount
    pod = release.operator_pod()
    assert pod is not None
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    labels = get(kubectl, "namespace", release.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    account = pod["spec"]["serviceAccountName"]
    assert account != "default"

    sample = yaml.safe_load(SAMPLE.read_text())
    sample["metadata"]["namespace"] = namespace
    accepted = kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(sample))
    assert "created (server dry run)" in accepted

    bad = json.loads(json.dumps(sample))
    bad["spec"]["batchRows"] = 0
    refused = kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(bad))
    assert refused.returncode != 0 and "is invalid" in refused.stderr, refused.stderr
    assert "spec.batchRows" in refused.stderr

    operator = f"system:serviceaccount:{release.namespace}:{account}"
    can = kubectl.run("auth", "can-i", "create", "jobs.batch", "-n", namespace, "--as", operator)
    assert can.stdout.strip() == "yes"
    cannot = kubectl.run("auth", "can-i", "delete", "nodes", "--as", operator)
    assert cannot.stdout.strip() == "no"
