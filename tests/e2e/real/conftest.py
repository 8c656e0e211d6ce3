"""Fixtures of the tests on the real control plane: one per session, a namespace per test."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.controlplane.plane import ROOT, ControlPlane, bin_dir, free_port

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "stagingmerge"
RELEASE, RELEASE_NAMESPACE = "sm", "stagingmerge-system"
LOCAL_PATHS = {"name": "STAGINGMERGE_ALLOW_LOCAL_PATHS", "value": "true"}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    folder = bin_dir()
    if folder is None:
        pytest.skip("no control plane built: run `python tools/build_k8s.py` (make test does)")
    plane = ControlPlane(folder, tmp_path_factory.mktemp("controlplane")).start()
    plane.start_node()
    yield plane
    plane.stop()


class Cli:
    """A real command-line tool (kubectl, helm) as the cluster's administrator runs it."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        """Its output; AssertionError with the tool's own message when it fails."""
        done = self.run(*args, stdin=stdin)
        if done.returncode != 0:
            raise AssertionError(f"{self.binary.name} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Cli:
    return Cli(control_plane.bin / "kubectl", control_plane.admin)


@pytest.fixture(scope="session")
def helm(control_plane: ControlPlane) -> Cli:
    if not HELM.exists():
        pytest.skip("no helm in .tools/bin: run tools/get_helm.py (make test does)")
    return Cli(HELM, control_plane.admin)


@pytest.fixture
def namespace(kubectl: Cli, control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of the test's own, deleted (by the real namespace controller) after."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    control_plane.wait(
        lambda: kubectl.run("get", "serviceaccount", "default", "-n", name).returncode == 0,
        f"the default ServiceAccount of {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@dataclass
class Release:
    """The chart as `helm install` left it: the operator runs from its Deployment, as a
    pod the node agent started, with its own ServiceAccount token."""

    plane: ControlPlane
    kubectl: Cli
    helm: Cli
    namespace: str
    liveness_port: int
    values: list[str]

    def install(self) -> None:
        self.helm("install", RELEASE, str(CHART), "-n", self.namespace, *self.values)
        self.plane.wait(self.operator_ready, "the operator pod running and live")

    def operator_pod(self) -> dict[str, Any] | None:
        pods = json.loads(
            self.kubectl(
                "get",
                "pods",
                "-n",
                self.namespace,
                "-l",
                "app.kubernetes.io/component=operator",
                "-o",
                "json",
            )
        )
        running = [p for p in pods["items"] if p.get("status", {}).get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return running[0] if running else None

    def operator_ready(self) -> bool:
        """The liveness endpoint a kubelet would probe (the agent does not probe)."""
        if self.operator_pod() is None:
            return False
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def operator_log(self) -> str:
        pod = self.operator_pod()
        if pod is None:
            return ""
        log = self.plane.workdir / "node-1" / "pods" / pod["metadata"]["uid"] / "log"
        return log.read_text(errors="replace") if log.exists() else ""


@pytest.fixture(scope="session")
def release(control_plane: ControlPlane, kubectl: Cli, helm: Cli) -> Iterator[Release]:
    """`helm install` of the chart, once per session, in a namespace that enforces the
    restricted Pod Security level."""
    kubectl("create", "namespace", RELEASE_NAMESPACE)
    kubectl("label", "namespace", RELEASE_NAMESPACE,
            "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip
    liveness = free_port()
    values = [
        "--set", f"operator.livenessPort={liveness}", "--set", f"metrics.port={free_port()}",
        "--set", "operator.queuePollSeconds=1", "--set", "operator.logFormat=text",
        # the merge pods run on this machine: the tests' tables are local folders
        "--set-json", f"operator.extraEnv={json.dumps([LOCAL_PATHS])}",
    ]  # fmt: skip
    installed = Release(control_plane, kubectl, helm, RELEASE_NAMESPACE, liveness, values)
    installed.install()
    yield installed
