"""The Job controller and kubelet the emulator lacks, reduced to what merge Jobs need.

For each batch/v1 Job it sees (not suspended, not finished) it creates a Pod object,
runs the container's command as a local process with the container's environment
(env and envFrom Secrets), and when the process ends writes what a kubelet and the
Job controller would: the container's termination message and exit code on the Pod,
and the Job's counters and conditions, honouring backoffLimit, podFailurePolicy
(FailJob on exit codes) and activeDeadlineSeconds, and refusing pods that name a
ServiceAccount the namespace lacks (as the ServiceAccount admission plugin does).
Indexed Jobs (completionMode Indexed) run `completions` indexes, `parallelism` at a
time, each pod with JOB_COMPLETION_INDEX and the completion-index annotation and label;
each index is retried on its own under backoffLimitPerIndex, and the Job reports
completedIndexes / failedIndexes and fails with FailedIndexes as the controller does. A Job
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
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


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
    index: int | None = None  # completion index of an Indexed Job's pod
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    exit_code: int | None = None
    main: str = ""  # the merge Job's stagingmerge.io/main label (per-main limits)


@dataclass
class _JobRun:
    """The controller's memory of one Job (by uid)."""

    started: float | None = None
    running: dict[int, Attempt] = field(default_factory=dict)  # index -> attempt in flight
    failures: dict[int, int] = field(default_factory=dict)  # index -> failed pods
    completed: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    next_start: dict[int, float] = field(default_factory=dict)


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
        self._runs: dict[str, _JobRun] = {}  # job uid -> its run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self.errors: list[BaseException] = []

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for run in self._runs.values():
            for attempt in list(run.running.values()):
                self._terminate(attempt, grace=2)

    def attempts_of(self, job: str) -> list[Attempt]:
        return [a for a in self.attempts if a.job == job]

    def running(self) -> list[Attempt]:
        """The attempts whose process is alive right now."""
        return [a for run in list(self._runs.values()) for a in list(run.running.values())]

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
        for uid in [u for u in self._runs if u not in seen]:
            for attempt in self._runs.pop(uid).running.values():
                self._terminate(attempt, grace=10)

    def _step(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        uid = meta["uid"]
        status = job.get("status") or {}
        if any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        ):
            return
        run = self._runs.setdefault(uid, _JobRun())
        if spec.get("suspend"):
            return
        if run.started is None:
            refusal = self._pod_refusal(job)
            if refusal is not None:
                self._refused(job, refusal)
                return
            run.started = time.monotonic()
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - run.started > deadline:
            # as the Job controller does: FailureTarget first, while the pods are still
            # terminating (they may commit their batch in the grace period), Failed after
            message = "Job was active longer than specified deadline"
            self._patch_job(
                job,
                {
                    "active": 0,
                    "terminating": len(run.running),
                    "conditions": [_condition("FailureTarget", "DeadlineExceeded", message)],
                },
            )
            self._stop_all(run)
            self._finish_job(job, run, failed=True, reason="DeadlineExceeded", message=message)
            return
        changed = False
        for index, attempt in list(run.running.items()):
            code = attempt.process.poll()
            if code is None:
                continue
            changed = True
            del run.running[index]
            attempt.exit_code, attempt.ended = code, time.monotonic()
            message = attempt.metrics_file.read_text() if attempt.metrics_file.exists() else ""
            self._patch_pod(attempt, code, message)
            if code == 0:
                run.completed.add(index)
                continue
            run.failures[index] = run.failures.get(index, 0) + 1
            rule = _fail_job_rule(spec, code)
            if rule is not None:
                self._stop_all(run)
                self._finish_job(
                    job,
                    run,
                    failed=True,
                    reason="PodFailurePolicy",
                    message=f"Container merge for pod {meta['namespace']}/{attempt.pod}"
                    f" failed with exit code {code} matching FailJob rule at"
                    f" index {rule}",
                )
                return
            per_index = spec.get("backoffLimitPerIndex")
            if per_index is not None and run.failures[index] > int(per_index):
                run.failed_indexes.add(index)
            elif per_index is None and sum(run.failures.values()) > int(
                spec.get("backoffLimit", 6)
            ):
                self._stop_all(run)
                self._finish_job(
                    job,
                    run,
                    failed=True,
                    reason="BackoffLimitExceeded",
                    message="Job has reached the specified backoff limit",
                )
                return
            else:
                run.next_start[index] = time.monotonic() + self.retry_delay
        indexes = _indexes(spec)
        settled = run.completed | run.failed_indexes
        if len(run.completed) == len(indexes):
            self._finish_job(job, run, failed=False)
            return
        if settled >= set(indexes) and not run.running:
            self._finish_job(
                job, run, failed=True, reason="FailedIndexes", message="Job has failed indexes"
            )
            return
        parallelism = int(spec.get("parallelism") or 1)
        for index in indexes:
            if len(run.running) >= parallelism:
                break
            if index in settled or index in run.running:
                continue
            if time.monotonic() < run.next_start.get(index, 0):
                continue
            self._launch(job, run, index if _indexed(spec) else None)
            changed = True
        if changed:
            self._patch_job(job, self._counts(job, run))

    def _counts(self, job: dict[str, Any], run: _JobRun) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "active": len(run.running),
            "failed": sum(run.failures.values()),
            "succeeded": len(run.completed),
        }
        if not (job.get("status") or {}).get("startTime"):
            counts["startTime"] = _now()
        if _indexed(job["spec"]):
            counts["completedIndexes"] = _ranges(run.completed)
            if job["spec"].get("backoffLimitPerIndex") is not None:
                counts["failedIndexes"] = _ranges(run.failed_indexes)
        return counts

    def _refused(self, job: dict[str, Any], refusal: str) -> None:
        """The ServiceAccount admission plugin refuses the pod: the Job controller keeps
        trying (FailedCreate) and only activeDeadlineSeconds ends the Job."""
        meta, spec, status = job["metadata"], job["spec"], job.get("status") or {}
        self.pod_refusals.setdefault(meta["name"], refusal)
        first = self._first_seen.setdefault(meta["uid"], time.monotonic())
        if not status.get("startTime"):
            self._patch_job(job, {"startTime": _now(), "active": 0})
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - first > deadline:
            self._finish_job(
                job,
                self._runs[meta["uid"]],
                failed=True,
                reason="DeadlineExceeded",
                message="Job was active longer than specified deadline",
            )

    def _stop_all(self, run: _JobRun) -> None:
        for index, attempt in list(run.running.items()):
            self._terminate(attempt, grace=self.termination_grace)
            del run.running[index]

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

    def _launch(self, job: dict[str, Any], run: _JobRun, index: int | None) -> None:
        meta = job["metadata"]
        uid, namespace = meta["uid"], meta["namespace"]
        number = len([a for a in self.attempts if a.job == meta["name"] and a.index == index]) + 1
        stem = meta["name"] if index is None else f"{meta['name']}-{index}"
        pod_name = f"{stem}-{uuid.uuid4().hex[:5]}"
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": uid,
        }
        annotations = {}
        if index is not None:
            labels[COMPLETION_INDEX] = str(index)
            annotations[COMPLETION_INDEX] = str(index)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
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
        if index is not None:  # the Job controller adds it to every container of the pod
            env["JOB_COMPLETION_INDEX"] = str(index)
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        attempt = Attempt(
            meta["name"],
            namespace,
            pod_name,
            number,
            process,
            metrics_file,
            log_file,
            index=index,
            main=(meta.get("labels") or {}).get("stagingmerge.io/main", ""),
        )
        self.attempts.append(attempt)
        run.running[index if index is not None else 0] = attempt

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
        run: _JobRun,
        *,
        failed: bool,
        reason: str = "",
        message: str = "",
    ) -> None:
        """The Job controller's two steps: the target condition (FailureTarget or
        SuccessCriteriaMet) once the outcome is decided, then Failed or Complete once no
        pod is left, each in its own status update."""
        counts = self._counts(job, run)
        counts["active"] = 0
        if failed:
            target = _condition("FailureTarget", reason, message)
            self._patch_job(job, {**counts, "conditions": [target]})
            final = {
                **counts,
                "terminating": 0,
                "conditions": [target, _condition("Failed", reason, message)],
            }
        else:
            text = "Reached expected number of succeeded pods"
            met = _condition("SuccessCriteriaMet", "CompletionsReached", text)
            self._patch_job(job, {**counts, "conditions": [met]})
            final = {
                **counts,
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


def _indexed(spec: dict[str, Any]) -> bool:
    return spec.get("completionMode") == "Indexed"


def _indexes(spec: dict[str, Any]) -> list[int]:
    """The indexes to complete: 0..completions-1 of an Indexed Job, else the one pod (0)."""
    return list(range(int(spec.get("completions") or 1))) if _indexed(spec) else [0]


def _ranges(indexes: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5", the Job status' interval notation."""
    parts: list[str] = []
    for value in sorted(indexes):
        if parts and value == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{value}"
        else:
            parts.append(str(value))
    return ",".join(parts)
