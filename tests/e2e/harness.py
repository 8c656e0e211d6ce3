"""What the end-to-end tests drive on the real control plane (tests/e2e/controlplane/):
the API as a user's client sees it, the operator as `helm install` runs it, and the
merge pods as the node agent ran them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from tests.e2e.controlplane.plane import ROOT, ControlPlane, free_port
from tests.helpers import ct, write

T = TypeVar("T")
GROUP, VERSION, PLURAL = "stagingmerge.io", "v1alpha1", "stagingmerges"
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "stagingmerge"
LOCAL_PATHS = {"name": "STAGINGMERGE_ALLOW_LOCAL_PATHS", "value": "true"}
# The real scheduler places pods by their requests against the node's capacity (this
# machine's 2 cores): the chart's default request of a core per merge would run one merge
# at a time here. The tests' merges are tiny; a fleet or two shards must fit side by side.
MERGE_RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "2Gi"}}
# A guard against a hang nobody expected, not a timing assumption: every wait is on
# progress (a condition, a pod, a commit), and a loaded 2-core machine is slow, not wrong.
GUARD_SECONDS = 1800.0


def wait_for(check: Callable[[], T | None], what: str = "condition", every: float = 0.2) -> T:
    """Poll `check` until it returns something true."""
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {GUARD_SECONDS:.0f}s")
        time.sleep(every)


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


class Kubectl:
    """The test's own API client (the administrator's): what `kubectl apply/get/delete`
    would do, in the test's namespace unless told otherwise."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.namespace = namespace
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def apply(self, name: str, spec: dict[str, Any], namespace: str | None = None) -> Any:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "StagingMerge",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, PLURAL, body
        )

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str | None = None) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, PLURAL, name, {"spec": spec}
        )

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace or self.namespace, PLURAL, name
            )
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str, namespace: str | None = None) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, PLURAL, name
        )

    def condition(
        self, name: str, type_: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        merge = self.get(name, namespace) or {}
        for condition in (merge.get("status") or {}).get("conditions") or []:
            if condition["type"] == type_:
                return dict(condition)
        return None

    def wait(self, name: str, status: str = "True", namespace: str | None = None) -> dict[str, Any]:
        """`kubectl wait --for=condition=Succeeded[=false]`."""

        def check() -> dict[str, Any] | None:
            condition = self.condition(name, "Succeeded", namespace)
            return (
                condition if condition and condition["status"].lower() == status.lower() else None
            )

        return wait_for(check, what=f"{name} Succeeded={status}")

    def items(self, listed: Any) -> list[dict[str, Any]]:
        return list(self.api.sanitize_for_serialization(listed).get("items", []))

    def jobs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.items(self.batch.list_namespaced_job(namespace or self.namespace))

    def events(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items = self.items(self.core.list_namespaced_event(namespace or self.namespace))
        return [e for e in items if e["involvedObject"]["name"] == name]

    def secret(self, name: str, data: dict[str, str], namespace: str | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": data}  # fmt: skip
        try:
            self.core.create_namespaced_secret(namespace or self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(name, namespace or self.namespace, body)

    def hooks(self, name: str = "hooks", **env: str) -> dict[str, Any]:
        """The merge's test hooks (STAGINGMERGE_PAUSE, STAGINGMERGE_FAILPOINT) reach its
        pods as a user's variables do: in a Secret the spec names, which the operator
        gives the container as envFrom. Returns the spec fields that name it."""
        self.secret(name, env)
        return {"storageSecretRef": {"name": name}}


@dataclass(frozen=True)
class Attempt:
    """One start of a merge container, as the node agent recorded it."""

    job: str
    namespace: str
    pod: str
    number: int  # 1 for the pod's first start
    pid: int  # its process group
    started: float  # this host's clock, as `ended`
    ended: float | None
    exit_code: int | None
    log_file: Path
    index: int | None  # completion index of an Indexed Job's pod
    main: str  # the Job's stagingmerge.io/main label

    def kill(self) -> None:
        """SIGKILL the container's processes: a node dying under it."""
        os.killpg(self.pid, signal.SIGKILL)


class Pods:
    """The merge pods of one namespace as they ran (kept after the pods are gone)."""

    def __init__(self, plane: ControlPlane, kubectl: Kubectl) -> None:
        self.plane, self.kubectl = plane, kubectl

    @property
    def attempts(self) -> list[Attempt]:
        found: list[Attempt] = []
        for record in self.plane.workdir.glob("node-*/pods/*/attempts/*.json"):
            value = json.loads(record.read_text())
            labels, annotations = value["labels"], value["annotations"]
            job = labels.get("batch.kubernetes.io/job-name")
            if value["namespace"] != self.kubectl.namespace or job is None:
                continue
            index = annotations.get("batch.kubernetes.io/job-completion-index")
            found.append(Attempt(
                job=job, namespace=value["namespace"], pod=value["pod"], number=value["number"],
                pid=value["pid"], started=value["started"], ended=value["ended"],
                exit_code=value["exitCode"], log_file=Path(value["log"]),
                index=None if index is None else int(index),
                main=labels.get("stagingmerge.io/main", ""),
            ))  # fmt: skip
        return sorted(found, key=lambda a: a.started)

    def attempts_of(self, job: str) -> list[Attempt]:
        return [a for a in self.attempts if a.job == job]

    def running(self) -> list[Attempt]:
        return [a for a in self.attempts if a.ended is None]

    def pod_refusals(self, job: str) -> str:
        """What the Job controller was told when it could not create the Job's pods."""
        return "\n".join(
            e.get("message") or ""
            for e in self.kubectl.events(job)
            if e["involvedObject"]["kind"] == "Job" and e["reason"] == "FailedCreate"
        )


@dataclass
class Release:
    """The chart as `helm install` left it: the operator runs from its Deployment, as a
    pod the node agent started, with its own ServiceAccount token. `watch` lists the
    namespaces it watches (empty: every namespace)."""

    plane: ControlPlane
    kubectl: Cli
    helm: Cli
    name: str
    namespace: str
    watch: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    crds: bool = True
    chart: Path = CHART
    liveness_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    def _values(self) -> list[str]:
        env = [LOCAL_PATHS, *({"name": k, "value": v} for k, v in self.env.items())]
        return [
            "--set", f"operator.livenessPort={self.liveness_port}",
            "--set", f"metrics.port={self.metrics_port}",
            "--set", "operator.queuePollSeconds=1", "--set", "operator.logFormat=text",
            "--set", f"crds.install={str(self.crds).lower()}",
            "--set-json", f"watchNamespaces={json.dumps(self.watch)}",
            "--set-json", f"merge.resources={json.dumps(MERGE_RESOURCES)}",
            # the merge pods run on this machine: the tests' tables are local folders
            "--set-json", f"operator.extraEnv={json.dumps(env)}",
            *self.values,
        ]  # fmt: skip

    def install(self) -> Release:
        self.helm("install", self.name, str(self.chart), "-n", self.namespace, *self._values())
        self.wait_ready()
        return self

    def upgrade(self, *values: str, **env: str) -> None:
        """`helm upgrade` with more values or operator variables; waits for the new pod."""
        self.values += values
        self.env.update(env)
        before = {p["metadata"]["uid"] for p in self.pods()}
        self.helm("upgrade", self.name, str(self.chart), "-n", self.namespace, *self._values())
        wait_for(
            lambda: all(p["metadata"]["uid"] not in before for p in self.pods()) and self.ready(),
            f"{self.name}'s operator rolled out",
        )

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "-n", self.namespace, "--wait")
        wait_for(lambda: not self.pods(), f"{self.name}'s operator pods gone")

    @property
    def deployment(self) -> str:
        return "deployment/" + (self.name if "stagingmerge" in self.name
                                else f"{self.name}-stagingmerge")  # fmt: skip

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods, terminating ones included."""
        listed = json.loads(self.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "json",
            "-l", f"app.kubernetes.io/component=operator,app.kubernetes.io/instance={self.name}",
        ))  # fmt: skip
        items: list[dict[str, Any]] = listed["items"]
        return items

    def operator_pod(self) -> dict[str, Any] | None:
        running = [p for p in self.pods() if p.get("status", {}).get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return running[0] if running else None

    def ready(self) -> bool:
        """The liveness endpoint a kubelet would probe (the agent does not probe)."""
        if self.operator_pod() is None:
            return False
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=10
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self) -> None:
        wait_for(self.ready, f"{self.name}'s operator pod running and live")

    def stop(self, kill: bool = False) -> None:
        """kill: SIGKILL the operator's process (a crash; its container restarts, as a
        kubelet restarts it). Else scale the Deployment to zero: the operator is down."""
        if kill:
            pod = self.operator_pod()
            assert pod is not None, "no operator pod to kill"
            (record,) = sorted(self._pod_folder(pod).glob("attempts/*.json"))[-1:]
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)
            return
        self.kubectl("scale", self.deployment, "-n", self.namespace, "--replicas=0")
        wait_for(lambda: not self.pods(), f"{self.name}'s operator pods gone")

    def start(self) -> None:
        self.kubectl("scale", self.deployment, "-n", self.namespace, "--replicas=1")
        self.wait_ready()

    def _pod_folder(self, pod: dict[str, Any]) -> Path:
        (folder,) = self.plane.workdir.glob(f"node-*/pods/{pod['metadata']['uid']}")
        return folder

    def logs(self) -> str:
        """Every operator pod's log of this release, oldest first."""
        folders = sorted(
            (f for f in self.plane.workdir.glob("node-*/pods/*") if (f / "attempts").exists()),
            key=lambda f: f.stat().st_mtime,
        )
        texts = []
        for folder in folders:
            record = json.loads(next((folder / "attempts").glob("*.json")).read_text())
            labels = record["labels"]
            if (record["namespace"], labels.get("app.kubernetes.io/instance"),
                    labels.get("app.kubernetes.io/component")) == (
                        self.namespace, self.name, "operator"):  # fmt: skip
                texts.append((folder / "log").read_text(errors="replace"))
        return "\n".join(texts)

    def scrape(self) -> str:
        """The operator's Prometheus exposition ("" while its endpoint is not up)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
            ) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def scrape_until(self, *lines: str) -> str:
        """The exposition once it holds every one of `lines`. The operator counts a
        finished merge just after it writes the merge's status (and its Event), so a
        client that has seen the status may scrape a moment before the count."""
        return wait_for(
            lambda: text if all(line in (text := self.scrape()) for line in lines) else None,
            what=f"the operator's metrics to show {lines}",
        )


def slow_tables(tmp_path, files: int = 40):
    """A staging table that takes a few seconds to merge (one small batch per file)."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 4, range(4), seed=1))
    for part in range(files):
        write(staging, ct([0, 1] * 10, [part * 10 + i // 2 for i in range(20)], seed=part))
    return main, staging


def spec_for(main, staging, **extra):
    return {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}, **extra}
