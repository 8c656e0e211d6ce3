"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, built by tools/build_k8s.py.

Started once per test session (tests isolate themselves by namespace). Every component
listens on 127.0.0.1 on a free port, and start-up waits on each one's readiness endpoint
(`/health` of etcd, `/readyz` of the API server, `/healthz` of the controller manager and
the scheduler), never on a fixed time: a loaded 2-core machine may take a minute. A
component that exits while being waited on fails the wait at once with its log's tail.

The API server runs the admission and authorization a production cluster runs
(`Node,RBAC`; NodeRestriction and OwnerReferencesPermissionEnforcement on top of the
defaults, which include NamespaceLifecycle, ServiceAccount, PodSecurity,
ValidatingAdmissionPolicy and ResourceQuota) and writes an audit log of every request
(`audit.log`, one JSON event per line, level Metadata).
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.controlplane.pki import KeyPair, Pki

ROOT = Path(__file__).resolve().parents[3]
SERVICE_RANGE = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}
_PR_SET_PDEATHSIG = 1


def bin_dir() -> Path | None:
    """Where tools/build_k8s.py put the binaries of the pinned version, if it has."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_k8s", ROOT / "tools" / "build_k8s.py")
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        folder: Path = module.bin_dir()
    except (OSError, SystemExit):  # no go: nothing was built here
        return None
    return folder if all((folder / name).is_file() for name in module.COMMANDS) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child: a test run killed outright must not leave a control plane."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    bin: Path
    workdir: Path
    components: dict[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.workdir / "pki")
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.port = free_port()
        self.kcm_port, self.scheduler_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.audit_log = self.workdir / "audit.log"
        self.admin = self.kubeconfig("admin", self.pki.client("admin", "system:masters"))

    # --- configuration -------------------------------------------------------------

    def kubeconfig(self, name: str, client: KeyPair | None = None, token: str = "") -> Path:
        """A kubeconfig for a certificate (the user is its CN) or a bearer token."""
        user: dict[str, str] = {"token": token} if token else {
            "client-certificate": str(client.cert), "client-key": str(client.key),
        } if client else {}  # fmt: skip
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "local",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.url,
                                "certificate-authority": str(self.pki.ca),
                            },
                        }
                    ],
                    "users": [{"name": name, "user": user}],
                    "contexts": [{"name": "local", "context": {"cluster": "local", "user": name}}],
                }
            )
        )
        path.chmod(0o600)
        return path

    def _etcd(self) -> list[str]:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(self.bin / "etcd"), f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}", "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]  # fmt: skip

    def _apiserver(self) -> list[str]:
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        pki = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            # loopback is refused as an endpoint of the `kubernetes` Service; pods reach the
            # server through KUBERNETES_SERVICE_HOST=127.0.0.1 instead (node agent)
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.server.cert}", f"--tls-private-key-file={pki.server.key}",
            f"--client-ca-file={pki.ca}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxbackup=0",
            "--profiling=false",
        ]  # fmt: skip

    def _controller_manager(self) -> list[str]:
        config = self.kubeconfig(
            "kube-controller-manager", self.pki.client("system:kube-controller-manager")
        )
        return [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--use-service-account-credentials",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--controllers=*", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
        ]  # fmt: skip

    def _scheduler(self) -> list[str]:
        config = self.kubeconfig("kube-scheduler", self.pki.client("system:kube-scheduler"))
        return [
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.scheduler_port}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
        ]  # fmt: skip

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> ControlPlane:
        steps: list[tuple[str, list[str], Callable[[], bool]]] = [
            ("etcd", self._etcd(), lambda: self._ok(f"http://127.0.0.1:{self.etcd_port}/health")),
            ("kube-apiserver", self._apiserver(), lambda: self._ok(f"{self.url}/readyz")),
            ("kube-controller-manager", self._controller_manager(),
             lambda: self._ok(f"https://127.0.0.1:{self.kcm_port}/healthz")),
            ("kube-scheduler", self._scheduler(),
             lambda: self._ok(f"https://127.0.0.1:{self.scheduler_port}/healthz")),
        ]  # fmt: skip
        try:
            for name, argv, ready in steps:
                component = Component(name, argv, self.workdir / f"{name}.log")
                self.components[name] = component
                component.start()
                self.wait(ready, f"{name} ready", component)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, name: str = "node-1") -> None:
        """The node agent (nodeagent.py) as `system:node:<name>`; waits until the Node is
        Ready and the node-lifecycle controller has lifted its not-ready taint."""
        config = self.kubeconfig(name, self.pki.client(f"system:node:{name}", "system:nodes"))
        argv = [
            sys.executable,
            "-m",
            "tests.e2e.controlplane.nodeagent",
            f"--kubeconfig={config}",
            f"--node={name}",
            f"--workdir={self.workdir / name}",
        ]
        component = Component(f"node-agent {name}", argv, self.workdir / f"{name}.log")
        self.components[name] = component
        component.start()
        self.wait(lambda: self._node_ready(name), f"node {name} Ready and untainted", component)

    def _node_ready(self, name: str) -> bool:
        node = self.get(f"/api/v1/nodes/{name}")
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return ready and not node.get("spec", {}).get("taints")

    def get(self, path: str) -> dict[str, Any] | None:
        """GET `path` of the API server as the administrator; None when it is not there."""
        try:
            with urllib.request.urlopen(
                self.url + path, timeout=30, context=self._context()
            ) as response:
                result: dict[str, Any] = json.load(response)
                return result
        except (urllib.error.URLError, OSError):
            return None

    def restart(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one component (SIGKILL for a crash) and start it again; wait until ready."""
        component = self.components[name]
        component.stop(sig)
        component.start()
        if name not in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            self.wait(lambda: self._node_ready(name), f"node {name} Ready again", component)
            return
        checks = {
            "etcd": f"http://127.0.0.1:{self.etcd_port}/health",
            "kube-apiserver": f"{self.url}/readyz",
            "kube-controller-manager": f"https://127.0.0.1:{self.kcm_port}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{self.scheduler_port}/healthz",
        }
        self.wait(lambda: self._ok(checks[name]), f"{name} ready again", component)

    def stop(self) -> None:
        for component in reversed(list(self.components.values())):
            component.stop()

    def wait(self, ready: Callable[[], Any], what: str, component: Component | None = None) -> Any:
        """Poll `ready` until it returns something true. Waits as long as the components
        live: a loaded machine is slow, not wrong; a component that exits fails it. The
        hour is a guard against a hang nobody expected, not a timing assumption."""
        deadline = time.monotonic() + 3600
        while True:
            value = ready()
            if value:
                return value
            for each in [component] if component else self.components.values():
                if each.process is not None and each.process.poll() is not None:
                    raise AssertionError(
                        f"{each.name} exited ({each.process.returncode}) while waiting for "
                        f"{what}:\n{each.tail()}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting for {what} after an hour")
            time.sleep(0.2)

    # --- probes --------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        admin = self.pki.folder
        context.load_cert_chain(admin / "admin.crt", admin / "admin.key")
        # kube-controller-manager and kube-scheduler serve self-signed certificates of
        # their own (--cert-dir): their health endpoints are probed without verification
        return context

    def _ok(self, url: str) -> bool:
        context = self._context()
        if "127.0.0.1:" + str(self.port) not in url:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=10, context=context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def audit_mark(self) -> int:
        """Where the audit log ends now: audit_events(since=mark) reads what came after."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit_events(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """Every request the API server has logged so far (after `since`, a mark)."""
        if not self.audit_log.exists():
            return
        with self.audit_log.open("rb") as lines:
            lines.seek(since)
            for line in lines:
                if not line.endswith(b"\n"):  # a line being written: read it later
                    return
                try:
                    yield json.loads(line)
                except ValueError:  # torn by a crash of the server (a restart test)
                    continue
