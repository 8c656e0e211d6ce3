"""The node agent: the kubelet's part for pods, with processes instead of containers.

The one stand-in of the real control plane (there is no container runtime here). It
logs in as `system:node:<name>` (group system:nodes), so the Node authorizer and
NodeRestriction give it exactly a kubelet's rights, and it:

- registers its Node (capacity, addresses, Ready) and renews its Lease in
  kube-node-lease, so the node-lifecycle controller keeps it Ready and untainted;
- watches the pods the scheduler bound to it and runs each container's command (or its
  image's ENTRYPOINT, read from the project's Dockerfile) as a local process, with the
  environment a kubelet would give it (podenv.py), in a private mount namespace where
  `/dev/termination-log` is the pod's own file and, unless automounting is off, a
  ServiceAccount token bound to the pod is at /var/run/secrets/kubernetes.io/serviceaccount;
- writes pod status as a kubelet does: Running with its container running, then
  terminated with exit code, reason and the termination message, phase Succeeded or
  Failed (restartPolicy Never/OnFailure) or the container started again (Always);
- honours deletion: SIGTERM to the process group, SIGKILL after the grace period,
  then the final delete (grace 0, UID precondition).

What it does not do, and why the tests do not need it, is in README.md beside it.

    python -m tests.e2e.controlplane.nodeagent --kubeconfig K --node N --workdir D
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.e2e.controlplane import podenv

LOG = logging.getLogger("nodeagent")
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
# unshare(1) runs this as root in a private mount namespace: /dev and /run become
# overlays whose upper layers are the pod's folders, so the pod's termination-log and
# token appear at their usual paths for this process alone (the host's /dev and /run,
# and every other pod's, are untouched)
_SANDBOX = (
    "set -e; pod=$1; shift; "
    'mount -t overlay overlay -o "lowerdir=/dev,upperdir=$pod/dev,workdir=$pod/.dev" /dev; '
    "mount -t tmpfs tmpfs /dev/shm; "
    'mount -t overlay overlay -o "lowerdir=/run,upperdir=$pod/run,workdir=$pod/.run" /run; '
    'exec "$@"'
)
BIN = Path(sys.executable).parent  # the ENTRYPOINTs are this project's console scripts


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_whole(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` at once: a reader sees the old content or the new, never half."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(value))
    partial.replace(path)


@dataclass
class Run:
    """One pod on this node: its process (None before start or after exit)."""

    pod: dict[str, Any]
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    deleting: bool = False
    done: threading.Event = field(default_factory=threading.Event)  # live() gives up
    reported: threading.Event = field(default_factory=threading.Event)  # exit on the pod
    guard: threading.Lock = field(default_factory=threading.Lock)  # start vs. delete


class NodeAgent:
    def __init__(self, kubeconfig: Path, node: str, workdir: Path) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.leases = kubernetes.client.CoordinationV1Api(self.api)
        self.node, self.workdir = node, workdir
        configuration = self.api.configuration
        self.api_port = int(configuration.host.rsplit(":", 1)[1])
        self.ca = Path(configuration.ssl_ca_cert).read_text()
        self.runs: dict[str, Run] = {}  # pod uid -> run
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # --- the Node --------------------------------------------------------------------

    def register(self) -> None:
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"}},
        }  # fmt: skip
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.post_node_status()

    def post_node_status(self) -> None:
        stamp = now()
        capacity = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110"}
        condition = {"lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        status = {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"kubeletVersion": self.version(), "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://1",
                         "kernelVersion": os.uname().release, "osImage": "node agent",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "node agent is posting ready status", **condition},
                *({"type": kind, "status": "False", "reason": f"KubeletHasSufficient{word}",
                   **condition} for kind, word in (("MemoryPressure", "Memory"),
                   ("DiskPressure", "Disk"), ("PIDPressure", "PID"))),
            ],
        }  # fmt: skip
        self.core.patch_node_status(self.node, {"status": status})

    def version(self) -> str:
        info = kubernetes.client.VersionApi(self.api).get_code()
        return str(info.git_version)

    def renew_lease(self) -> None:
        name, namespace = self.node, "kube-node-lease"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": micro_now()}  # fmt: skip
        try:
            self.leases.patch_namespaced_lease(name, namespace, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = self.core.read_node(name)
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid}
            self.leases.create_namespaced_lease(namespace, {
                "metadata": {"name": name, "ownerReferences": [owner]}, "spec": spec})  # fmt: skip

    def heartbeat(self) -> None:
        beats = 0
        while not self.stopping.wait(0 if beats == 0 else RENEW_EVERY):
            try:
                self.renew_lease()
                if beats % 6 == 0:  # the status once a minute; the Lease is the heartbeat
                    self.post_node_status()
            except Exception:  # a server restart: try again next beat
                LOG.warning("heartbeat failed", exc_info=True)
            beats += 1

    # --- pods ------------------------------------------------------------------------

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listed.items:
                    self.seen(self.api.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=listed.metadata.resource_version, timeout_seconds=60,
                )  # fmt: skip
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.seen(self.api.sanitize_for_serialization(event["object"]))
            except Exception:  # server gone or watch expired: list again
                LOG.info("pod watch restarted", exc_info=True)
                self.stopping.wait(1)

    def seen(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            run = self.runs.get(uid)
            if run is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    if pod["metadata"].get("deletionTimestamp"):
                        self.finalize(pod)
                    return
                run = self.runs[uid] = Run(pod, self.workdir / "pods" / uid)
                if self.was_running(pod) and pod["spec"].get("restartPolicy") == "Never":
                    # this agent was restarted and the process died with its predecessor:
                    # reported as a kubelet reports a container it can no longer find
                    run.done.set()
                    threading.Thread(target=self.lost, args=(run,), daemon=True).start()
                    return
                threading.Thread(target=self.live, args=(run,), daemon=True).start()
                return
            run.pod = pod
            if pod["metadata"].get("deletionTimestamp") and not run.deleting:
                run.deleting = True
                threading.Thread(target=self.delete, args=(run,), daemon=True).start()

    def live(self, run: Run) -> None:
        """Start the pod's container, and again after each exit if restartPolicy says so."""
        pod = run.pod
        container = pod["spec"]["containers"][0]  # every pod here has one container
        policy = pod["spec"].get("restartPolicy", "Always")
        while not run.deleting:
            try:
                argv, env = self.prepare(run, container)
            except podenv.ContainerError as exc:
                self.waiting(run, container, exc.reason, exc.message)
                if run.done.wait(5) or run.deleting:  # a kubelet retries; so does the agent
                    break
                continue
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                # The Node authorizer learns of the pod's binding from its own informer, so
                # the token request can be refused ("no relationship") for a moment after
                # the pod was scheduled; or the API server is restarting. A kubelet retries
                # the projected volume (FailedMount) with the pod ContainerCreating.
                LOG.warning("pod %s/%s: token or config not ready (%s); retrying",
                            run.pod["metadata"]["namespace"], run.pod["metadata"]["name"],
                            getattr(exc, "status", None) or type(exc).__name__)  # fmt: skip
                if run.done.wait(1) or run.deleting:
                    break
                continue
            started = now()
            with run.guard, (run.folder / "log").open("ab") as log:
                if run.deleting:  # deleted while being prepared: never started
                    break
                run.reported.clear()
                run.process = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX,
                     "sh", str(run.folder), *argv],
                    env=env, cwd=container.get("workingDir") or "/", stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self.running(run, container, started)
            record = self.record_start(run)
            code = run.process.wait()
            self.record_end(record, code)
            again = not run.deleting and (policy == "Always" or (policy == "OnFailure" and code))
            self.terminated(run, container, code, started, final=not again)
            run.process = None
            run.reported.set()
            if not again:
                break
            run.restarts += 1
            # CrashLoopBackOff, shortened: the restart is the behaviour, not its timing
            if run.done.wait(min(2**run.restarts, 30)):
                break
        run.done.set()

    # --- what ran, for the tests (kept after the pod is gone) -------------------------

    def record_start(self, run: Run) -> Path:
        """`attempts/<n>.json` in the pod's folder: one per container start, with the
        process group a test may kill (a node losing a process) and this host's clock."""
        assert run.process is not None
        meta = run.pod["metadata"]
        folder = run.folder / "attempts"
        folder.mkdir(exist_ok=True)
        record = folder / f"{run.restarts}.json"
        _write_whole(record, {
            "namespace": meta["namespace"], "pod": meta["name"], "uid": meta["uid"],
            "labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {},
            "number": run.restarts + 1, "pid": run.process.pid, "started": time.time(),
            "ended": None, "exitCode": None, "log": str(run.folder / "log"),
        })  # fmt: skip
        return record

    def record_end(self, record: Path, code: int) -> None:
        _write_whole(record, {**json.loads(record.read_text()), "ended": time.time(),
                              "exitCode": code})  # fmt: skip

    def prepare(self, run: Run, container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        pod = run.pod
        env = podenv.environment(pod, container, self.lookup(pod), self.api_port)
        argv = podenv.command(container, env)
        executable = shutil.which(argv[0], path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        if executable is None:
            raise podenv.ContainerError(
                "StartError", f'exec: "{argv[0]}": executable file not found in $PATH'
            )
        for layer in ("dev", ".dev", "run", ".run"):
            (run.folder / layer).mkdir(parents=True, exist_ok=True)
        (run.folder / "dev" / "termination-log").write_bytes(b"")
        if pod["spec"].get("automountServiceAccountToken", True):
            self.write_token(pod, run.folder / "run" / "secrets" / "kubernetes.io" /
                             "serviceaccount")  # fmt: skip
        return [executable, *argv[1:]], {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                                         **env}  # fmt: skip

    def lookup(self, pod: dict[str, Any]) -> podenv.Lookup:
        namespace = pod["metadata"]["namespace"]

        def find(kind: str, name: str, key: str | None) -> Any:
            try:
                if kind == "secret":
                    data = self.core.read_namespaced_secret(name, namespace).data or {}
                    values = {k: base64.b64decode(v).decode() for k, v in data.items()}
                else:
                    values = self.core.read_namespaced_config_map(name, namespace).data or {}
            except ApiException as exc:
                if exc.status in (403, 404):
                    return None
                raise
            return values if key is None else values.get(key)

        return find

    def write_token(self, pod: dict[str, Any], folder: Path) -> None:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        token = self.core.create_namespaced_service_account_token(
            account, meta["namespace"], request
        ).status.token  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(token)
        (folder / "ca.crt").write_text(self.ca)
        (folder / "namespace").write_text(meta["namespace"])

    # --- status ----------------------------------------------------------------------

    def patch_status(self, run: Run, status: dict[str, Any]) -> None:
        meta = run.pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"],
                                                  {"status": status})  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:  # gone already: nothing to report to
                raise

    def conditions(self, ready: bool, stamp: str) -> list[dict[str, str]]:
        value = "True" if ready else "False"
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": stamp},
            {"type": "Ready", "status": value, "lastTransitionTime": stamp},
        ]

    def container_status(
        self,
        run: Run,
        container: dict[str, Any],
        state: dict[str, Any],
        ready: bool,
        last: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        status = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "containerID": f"process://{run.pod['metadata']['uid']}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": run.restarts,
            "state": state,
        }
        if last:
            status["lastState"] = last
        return status

    def waiting(self, run: Run, container: dict[str, Any], reason: str, message: str) -> None:
        stamp = now()
        self.patch_status(run, {
            "phase": "Pending", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": stamp,
            "conditions": self.conditions(False, stamp),
            "containerStatuses": [self.container_status(
                run, container, {"waiting": {"reason": reason, "message": message}}, False)],
        })  # fmt: skip

    def running(self, run: Run, container: dict[str, Any], started: str) -> None:
        self.patch_status(run, {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": started,
            "conditions": self.conditions(True, started),
            "containerStatuses": [self.container_status(
                run, container, {"running": {"startedAt": started}}, True)],
        })  # fmt: skip

    def terminated(self, run: Run, container: dict[str, Any], code: int, started: str,
                   final: bool) -> None:  # fmt: skip
        if code < 0:  # killed by a signal: the exit code a shell (and a kubelet) reports
            code = 128 - code
        message = self.termination_message(run, container)
        state = {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started, "finishedAt": now(),
            "containerID": f"process://{run.pod['metadata']['uid']}",
            **({"message": message} if message else {})}}  # fmt: skip
        stamp = now()
        status: dict[str, Any] = {"conditions": self.conditions(False, stamp)}
        if final:  # not restarted (restartPolicy, or the pod is being deleted)
            status["phase"] = "Succeeded" if code == 0 else "Failed"
            status["containerStatuses"] = [self.container_status(run, container, state, False)]
        else:  # restarting: waiting now, the exit as lastState
            status["containerStatuses"] = [
                self.container_status(
                    run, container, {"waiting": {"reason": "CrashLoopBackOff"}}, False, state
                )
            ]
        self.patch_status(run, status)

    @staticmethod
    def was_running(pod: dict[str, Any]) -> bool:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return any("running" in (c.get("state") or {}) for c in statuses)

    def lost(self, run: Run) -> None:
        container = run.pod["spec"]["containers"][0]
        state = {"terminated": {
            "exitCode": 137, "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod was terminated",
            "startedAt": run.pod["status"].get("startTime") or now(), "finishedAt": now(),
        }}  # fmt: skip
        self.patch_status(run, {
            "phase": "Failed", "conditions": self.conditions(False, now()),
            "containerStatuses": [self.container_status(run, container, state, False)],
        })  # fmt: skip
        if run.pod["metadata"].get("deletionTimestamp"):
            self.finalize(run.pod)

    def termination_message(self, run: Run, container: dict[str, Any]) -> str:
        """The file's content (the kubelet keeps at most 4096 bytes), or the log's end for
        FallbackToLogsOnError when the file is empty."""
        path = run.folder / "dev" / "termination-log"
        message = path.read_bytes()[:4096].decode(errors="replace") if path.exists() else ""
        if not message and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            log = run.folder / "log"
            lines = log.read_bytes().decode(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        return message

    # --- deletion ----------------------------------------------------------------------

    def delete(self, run: Run) -> None:
        grace = run.pod["metadata"].get("deletionGracePeriodSeconds") or 0
        with run.guard:  # live() starts nothing once `deleting` is set
            process = run.process
        if process is not None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
            run.reported.wait()  # live() writes the exit on the pod before it goes
        run.done.set()
        self.finalize(run.pod)

    def finalize(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            # the options in the body: the API server reads the query's only without one
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )  # fmt: skip
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or already another pod of that name
                raise

    def stop(self) -> None:
        """SIGTERM (the agent itself stopped): its processes go with it, as a node lost."""
        self.stopping.set()
        for run in list(self.runs.values()):
            if run.process is not None and run.process.poll() is None:
                os.killpg(run.process.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    agent = NodeAgent(args.kubeconfig, args.node, args.workdir)
    signal.signal(signal.SIGTERM, lambda *_: (agent.stop(), sys.exit(0)))
    agent.register()
    threading.Thread(target=agent.heartbeat, daemon=True).start()
    agent.watch_pods()
    return 0


if __name__ == "__main__":
    sys.exit(main())
