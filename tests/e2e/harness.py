"""What the end-to-end tests drive: the API emulator, the operator process, the job runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from tests.e2e.emulator.cluster import RunningCluster

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"  # tools/get_helm.py puts it there
GROUP, VERSION, PLURAL = "stagingmerge.io", "v1alpha1", "stagingmerges"
OPERATOR = str(Path(sys.executable).with_name("stagingmerge-operator"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None], timeout: float = 60, every: float = 0.1, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Operator:
    """`stagingmerge-operator` as a real process, pointed at the emulator by a kubeconfig."""

    def __init__(self, cluster: RunningCluster, workdir: Path, **env: str) -> None:
        self.kubeconfig = cluster.kubeconfig(workdir / "kubeconfig")
        self.log_path = workdir / "operator.log"
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "STAGINGMERGE_DEFAULT_IMAGE": "ghcr.io/stagingmerge/merge:test",
            "STAGINGMERGE_QUEUE_POLL_SECONDS": "0.5",
            "STAGINGMERGE_METRICS_PORT": str(self.metrics_port),
            "STAGINGMERGE_LIVENESS_PORT": str(self.liveness_port),
            "STAGINGMERGE_LOG_FORMAT": "text",
            "STAGINGMERGE_TERMINATION_GRACE_SECONDS": "10",
            # the job runner runs merges on this machine: local tables are reachable
            "STAGINGMERGE_ALLOW_LOCAL_PATHS": "true",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [OPERATOR], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Kubectl:
    """The test's own API client: what `kubectl apply/get/delete` would do."""

    def __init__(self, cluster: RunningCluster) -> None:
        configuration = kubernetes.client.Configuration()
        configuration.host = cluster.url
        self.api = kubernetes.client.ApiClient(configuration)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def apply(self, name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "StagingMerge",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return result

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
        )

    def get(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str, namespace: str = "default") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def condition(self, name: str, type_: str, namespace: str = "default") -> dict[str, Any] | None:
        merge = self.get(name, namespace) or {}
        for condition in (merge.get("status") or {}).get("conditions") or []:
            if condition["type"] == type_:
                return dict(condition)
        return None

    def wait(
        self, name: str, status: str = "True", timeout: float = 60, namespace: str = "default"
    ) -> dict[str, Any]:
        """`kubectl wait --for=condition=Succeeded[=false]`."""

        def check() -> dict[str, Any] | None:
            condition = self.condition(name, "Succeeded", namespace)
            return (
                condition if condition and condition["status"].lower() == status.lower() else None
            )

        return wait_for(check, timeout, what=f"{name} Succeeded={status}")

    def jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        return list(
            self.api.sanitize_for_serialization(self.batch.list_namespaced_job(namespace)).get(
                "items", []
            )
        )

    def events(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        items = self.api.sanitize_for_serialization(self.core.list_namespaced_event(namespace)).get(
            "items", []
        )
        return [e for e in items if e["involvedObject"]["name"] == name]

    def secret(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        self.core.create_namespaced_secret(
            namespace,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data},
        )


class KubectlCli:
    """The real kubectl binary against the emulator, as a cluster administrator would run it."""

    def __init__(self, cluster: RunningCluster, workdir: Path) -> None:
        self.kubeconfig = cluster.kubeconfig(workdir / "admin-kubeconfig", token="admin")

    def __call__(self, *args: str, timeout: float = 600) -> str:
        """Run `kubectl ARGS`; its output, or AssertionError with kubectl's own message."""
        done = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: rc {done.returncode}: {done.stderr}")
        return done.stdout + done.stderr
