"""The Job controller and kubelet the emulator lacks, reduced to what merge Jobs need.

For each batch/v1 Job it sees (not suspended, not finished) it creates a Pod object,
runs the container's command as a local process with the container's environment
(env and envFrom Secrets), and when the process ends writes what a kubelet and the
Job controller would: the container's termination message and exit code on the Pod,
and the Job's counters and conditions, honouring backoffLimit, podFailurePolicy
(FailJob on exit codes) and activeDeadlineSeconds, and refusing pods that name a
ServiceAccount the namespace lacks (as the ServiceAccount admission plugin does). A Job
that disappears (deleted, or garbage-collected with its StagingMerge) has its process
stopped like a pod: SIGTERM, then SIGKILL after the grace period.

The one liberty: the kubelet would mount the termination log at
/dev/termination-log; here the process is given `--metrics-file` pointing at a
file of its own instead (the same path the image's default would write).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

BIN = Path(sys.executable).parent


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Attempt:
    job: str
    namespace: str
    pod: str
    number: int
    process: subprocess.Popen[bytes]
    metrics_file: Path
    log_file: Path
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    exit_code: int | None = None


class JobRunner:
    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        workdir: Path,
        poll: float = 0.1,
        retry_delay: float = 0.3,
        termination_grace: float = 2,
    ) -> None:
        self._api = api
        self._batch = kubernetes.client.BatchV1Api(api)
        self._core = kubernetes.client.CoreV1Api(api)
        self.workdir = workdir
        self.poll = poll
        self.retry_delay = retry_delay
        self.termination_grace = termination_grace
        self.pod_refusals: dict[str, str] = {}  # job -> why its pods could not be created
        self._first_seen: dict[str, float] = {}
        self.attempts: list[Attempt] = []
        self._running: dict[str, Attempt] = {}  # job uid -> attempt in flight
        self._failed: dict[str, int] = {}
        self._next_start: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self.errors: list[BaseException] = []

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for attempt in list(self._running.values()):
            self._terminate(attempt, grace=2)

    def attempts_of(self, job: str) -> list[Attempt]:
        return [a for a in self.attempts if a.job == job]

    # --- the control loop ----------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - keep running; the test reads .errors
                self.errors.append(exc)
            self._stop.wait(self.poll)

    def _tick(self) -> None:
        jobs = self._api.sanitize_for_serialization(self._batch.list_job_for_all_namespaces()).get(
            "items", []
        )
        seen = set()
        for job in jobs:
            uid = job["metadata"]["uid"]
            seen.add(uid)
            self._step(job)
        for uid in [u for u in self._running if u not in seen]:
            attempt = self._running.pop(uid)
            grace = 10
            self._terminate(attempt, grace=grace)

    def _step(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        uid = meta["uid"]
        status = job.get("status") or {}
        if any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        ):
            return
        attempt = self._running.get(uid)
        if attempt is None:
            if spec.get("suspend") or time.monotonic() < self._next_start.get(uid, 0):
                return
            refusal = self._pod_refusal(job)
            if refusal is None:
                self._launch(job)
                return
            # the ServiceAccount admission plugin refuses the pod: the Job controller keeps
            # trying (FailedCreate) and only activeDeadlineSeconds ends the Job
            self.pod_refusals.setdefault(meta["name"], refusal)
            first = self._first_seen.setdefault(uid, time.monotonic())
            if not status.get("startTime"):
                self._patch_job(job, {"startTime": _now(), "active": 0})
            deadline = spec.get("activeDeadlineSeconds")
            if deadline and time.monotonic() - first > deadline:
                self._finish_job(
                    job,
                    failed=True,
                    reason="DeadlineExceeded",
                    message="Job was active longer than specified deadline",
                )
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - attempt.started > deadline:
            # as the Job controller does: FailureTarget first, while the pod is still
            # terminating (it may commit its batch in the grace period), Failed after
            message = "Job was active longer than specified deadline"
            self._patch_job(
                job,
                {
                    "active": 0,
                    "terminating": 1,
                    "conditions": [_condition("FailureTarget", "DeadlineExceeded", message)],
                },
            )
            self._terminate(attempt, grace=self.termination_grace)
            self._running.pop(uid)
            self._finish_job(job, failed=True, reason="DeadlineExceeded", message=message)
            return
        code = attempt.process.poll()
        if code is None:
            return
        self._running.pop(uid)
        attempt.exit_code, attempt.ended = code, time.monotonic()
        message = attempt.metrics_file.read_text() if attempt.metrics_file.exists() else ""
        self._patch_pod(attempt, code, message)
        if code == 0:
            self._finish_job(job, failed=False)
            return
        failed = self._failed.get(uid, 0) + 1
        self._failed[uid] = failed
        rule = _fail_job_rule(spec, code)
        if rule is not None:
            self._finish_job(
                job,
                failed=True,
                reason="PodFailurePolicy",
                failed_count=failed,
                message=f"Container merge for pod {meta['namespace']}/{attempt.pod}"
                f" failed with exit code {code} matching FailJob rule at"
                f" index {rule}",
            )
        elif failed > int(spec.get("backoffLimit", 6)):
            self._finish_job(
                job,
                failed=True,
                reason="BackoffLimitExceeded",
                failed_count=failed,
                message="Job has reached the specified backoff limit",
            )
        else:
            self._patch_job(job, {"active": 0, "failed": failed})
            self._next_start[uid] = time.monotonic() + self.retry_delay

    # --- acting like a kubelet -------------------------------------------------------

    def _pod_refusal(self, job: dict[str, Any]) -> str | None:
        """What the API server would refuse creating this Job's pod for, or None. Only the
        ServiceAccount admission check is modelled ('default' always exists)."""
        namespace = job["metadata"]["namespace"]
        account = job["spec"]["template"]["spec"].get("serviceAccountName") or "default"
        if account == "default":
            return None
        try:
            self._core.read_namespaced_service_account(account, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return (
                    f'pods "{job["metadata"]["name"]}-" is forbidden: error looking up service'
                    f' account {namespace}/{account}: serviceaccount "{account}" not found'
                )
            raise
        return None

    def _launch(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        uid, namespace = meta["uid"], meta["namespace"]
        number = len([a for a in self.attempts if a.job == meta["name"]]) + 1
        pod_name = f"{meta['name']}-{uuid.uuid4().hex[:5]}"
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": {
                    **(template.get("metadata", {}).get("labels") or {}),
                    "job-name": meta["name"],
                    "batch.kubernetes.io/job-name": meta["name"],
                    "controller-uid": uid,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": uid,
                        "controller": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Running"},
        }
        self._core.create_namespaced_pod(namespace, pod)
        folder = self.workdir / f"{pod_name}"
        folder.mkdir(parents=True)
        metrics_file = folder / "termination-log"
        log_file = folder / "output.log"
        command = [
            str(BIN / container["command"][0]),
            *container.get("args", []),
            "--metrics-file",
            str(metrics_file),
        ]
        env = {**os.environ, **self._environment(namespace, container)}
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        attempt = Attempt(
            meta["name"], namespace, pod_name, number, process, metrics_file, log_file
        )
        self.attempts.append(attempt)
        self._running[uid] = attempt
        first = not (job.get("status") or {}).get("startTime")
        self._patch_job(job, {"active": 1, **({"startTime": _now()} if first else {})})

    def _environment(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = (source.get("secretRef") or {}).get("name")
            if ref:
                secret = self._api.sanitize_for_serialization(
                    self._core.read_namespaced_secret(ref, namespace)
                )
                for key, value in (secret.get("data") or {}).items():
                    env[key] = base64.b64decode(value).decode()
                env.update(secret.get("stringData") or {})
        for item in container.get("env") or []:
            env[item["name"]] = item.get("value", "")
        return env

    def _terminate(self, attempt: Attempt, grace: float) -> None:
        if attempt.process.poll() is None:
            os.killpg(attempt.process.pid, signal.SIGTERM)
            try:
                attempt.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(attempt.process.pid, signal.SIGKILL)
                attempt.process.wait()
        attempt.exit_code = attempt.process.returncode
        attempt.ended = time.monotonic()

    def _patch_pod(self, attempt: Attempt, code: int, message: str) -> None:
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "finishedAt": _now(),
        }
        body = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "merge",
                        "ready": False,
                        "restartCount": 0,
                        "image": "local",
                        "imageID": "",
                        "state": {"terminated": terminated},
                    }
                ],
            }
        }
        try:
            self._core.patch_namespaced_pod_status(attempt.pod, attempt.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _finish_job(
        self,
        job: dict[str, Any],
        *,
        failed: bool,
        reason: str = "",
        message: str = "",
        failed_count: int | None = None,
    ) -> None:
        """The Job controller's two steps: the target condition (FailureTarget or
        SuccessCriteriaMet) once the outcome is decided, then Failed or Complete once no
        pod is left, each in its own status update."""
        if failed:
            target = _condition("FailureTarget", reason, message)
            first: dict[str, Any] = {"active": 0, "conditions": [target]}
            if failed_count is not None:
                first["failed"] = failed_count
            self._patch_job(job, first)
            final = {
                "active": 0,
                "terminating": 0,
                "conditions": [target, _condition("Failed", reason, message)],
            }
        else:
            text = "Reached expected number of succeeded pods"
            met = _condition("SuccessCriteriaMet", "CompletionsReached", text)
            self._patch_job(job, {"active": 0, "succeeded": 1, "conditions": [met]})
            final = {
                "active": 0,
                "succeeded": 1,
                "completionTime": _now(),
                "conditions": [met, _condition("Complete", "CompletionsReached", text)],
            }
        self._patch_job(job, final)

    def _patch_job(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        try:
            self._batch.patch_namespaced_job_status(
                job["metadata"]["name"], job["metadata"]["namespace"], {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise


def _condition(type_: str, reason: str, message: str) -> dict[str, str]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now(),
    }


def _fail_job_rule(spec: dict[str, Any], code: int) -> int | None:
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        exit_codes = rule.get("onExitCodes")
        if (
            rule.get("action") == "FailJob"
            and exit_codes
            and exit_codes.get("operator") == "In"
            and code in exit_codes.get("values", [])
        ):
            return index
    return None
