"""The node agent's kubelet rules (tests/e2e/controlplane/podenv.py): environment,
downward API, `$(VAR)` and the command, checked against the Kubernetes documentation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.controlplane import podenv

POD: dict[str, Any] = {
    "metadata": {"name": "m-0-abc", "namespace": "lake", "uid": "u1",
                 "labels": {"batch.kubernetes.io/job-completion-index": "3"},
                 "annotations": {"a": "b"}},
    "spec": {"nodeName": "node-1", "serviceAccountName": "merge"},
}  # fmt: skip
STORE = {("secret", "creds"): {"KEY": "k", "SECRET": "s"}, ("configmap", "cfg"): {"X": "1"}}


def lookup(kind: str, name: str, key: str | None) -> Any:
    values = STORE.get((kind, name))
    return values if key is None or values is None else values.get(key)


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert podenv.expand("$(A)-$(B)", env) == "1-two"
    assert podenv.expand("$$(A)", env) == "$(A)"  # $$ escapes
    assert podenv.expand("$(MISSING)", env) == "$(MISSING)"  # left as written
    assert podenv.expand("$A", env) == "$A"


def test_environment_orders_sources_as_the_kubelet_does() -> None:
    container = {
        "envFrom": [
            {"secretRef": {"name": "creds"}},
            {"configMapRef": {"name": "cfg"}, "prefix": "P_"},
        ],
        "env": [
            {"name": "KEY", "value": "overridden $(P_X)"},
            {"name": "INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "ONE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "SECRET"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {
                "resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "resources": {"limits": {"memory": "1.5Gi"}},
    }  # fmt: skip
    env = podenv.environment(POD, container, lookup, api_port=6443)
    assert env["KEY"] == "overridden 1" and env["SECRET"] == "s" and env["P_X"] == "1"
    assert (env["INDEX"], env["NS"], env["ONE"], env["MEM"]) == ("3", "lake", "s", "1536")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"


@pytest.mark.parametrize(
    "container",
    [
        {"envFrom": [{"secretRef": {"name": "absent"}}]},
        {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "no"}}}]},
        {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]},
    ],
)
def test_what_a_kubelet_refuses_to_start(container: dict[str, Any]) -> None:
    with pytest.raises(podenv.ContainerError) as refused:
        podenv.environment(POD, container, lookup, api_port=6443)
    assert refused.value.reason == "CreateContainerConfigError"


def test_optional_sources_may_be_missing() -> None:
    container = {
        "envFrom": [{"secretRef": {"name": "absent", "optional": True}}],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {
            "name": "cfg", "key": "nope", "optional": True}}}],
    }  # fmt: skip
    assert "X" not in podenv.environment(POD, container, lookup, api_port=1)


def test_commands_come_from_the_container_or_the_dockerfile() -> None:
    operator = {"image": "ghcr.io/stagingmerge/operator:0.1.0"}
    assert podenv.command(operator, {}) == ["stagingmerge-operator"]
    merge = {"image": "registry:5000/stagingmerge/merge@sha256:ab", "args": ["--main", "$(M)"]}
    assert podenv.command(merge, {"M": "/lake"}) == ["stagingmerge-merge", "--main", "/lake"]
    shell = {"image": "busybox", "command": ["sh", "-c", "echo $(X)"]}
    assert podenv.command(shell, {"X": "1"}) == ["sh", "-c", "echo 1"]


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        ({"image": "nginx:1.27", "command": ["sh"]}, "ErrImagePull"),
        ({"image": "example.com/other/merge:1"}, "ErrImagePull"),
        ({"image": "busybox"}, "CreateContainerError"),
    ],
)
def test_images_nobody_builds_do_not_start(container: dict[str, Any], reason: str) -> None:
    with pytest.raises(podenv.ContainerError) as refused:
        podenv.command(container, {})
    assert refused.value.reason == reason
