"""The only module that talks to the Kubernetes API (through the official client).

Every call retries server errors and timeouts a few times with backoff; 404 and
409 are answers, not errors, and are returned as such.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
import kubernetes.watch
import urllib3
from kubernetes.client.exceptions import ApiException

from . import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .shardstatus import ShardPod

log = logging.getLogger("stagingmerge.operator")
T = TypeVar("T")

RETRIES = 5
BACKOFF_SECONDS = 0.5
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # annotation of Indexed pods


@dataclass(frozen=True)
class _Pod:
    index: int | None  # completion index (Indexed Jobs)
    phase: str | None
    terminated: bool  # the merge container ended
    message: str | None  # its termination message
    order: tuple[str, str]  # finishedAt, creationTimestamp: later is larger


class Conflict(Exception):  # noqa: N818 - an answer, like NotFound
    """409: the object changed since it was read (or already exists)."""


class Refused(Exception):  # noqa: N818 - an answer: the API server will not take this
    """A 4xx other than 404/409/429 (422 invalid, 403 forbidden, 400...): retrying the
    same request cannot help, so it is reported instead of retried."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


# OwnerReferencesPermissionEnforcement checks blockOwnerDeletion against a discovery
# cache the API server refreshes on its own schedule (every 30 s in kube-apiserver): a
# Job owned by a StagingMerge whose CRD was installed moments ago is refused with 403
# until then. The same request succeeds later, so it is retried, never reported.
_NOT_YET_MAPPED = "cannot find RESTMapping"


def _is_refusal(exc: ApiException) -> bool:
    """A 4xx that retrying the same request cannot help (not 404/409/429, and not the
    API server's discovery lagging behind a CRD it already serves)."""
    status = exc.status or 0
    if not 400 <= status < 500 or status in (404, 409, 429):
        return False
    return not (status == 403 and _NOT_YET_MAPPED in _api_message(exc))


def _api_message(exc: ApiException) -> str:
    """The Status message the API server sent, else its reason."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or exc.reason or "refused")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retrying(call: Callable[[], T]) -> T:
    """Retry 5xx answers, 429 and connection troubles; raise the rest at once."""
    for attempt in range(1, RETRIES + 1):
        try:
            return call()
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            if exc.status not in (429, 500, 502, 503, 504) or attempt == RETRIES:
                raise
            log.warning("API answered %s; retrying (%d/%d)", exc.status, attempt, RETRIES)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if attempt == RETRIES:
                raise
            log.warning("API unreachable (%s); retrying (%d/%d)", exc, attempt, RETRIES)
        time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _not_found_as_none(call: Callable[[], T]) -> T | None:
    try:
        return _retrying(call)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class Kube:
    """The operator's API calls. Objects come back as plain dicts in API casing."""

    def __init__(
        self, api: kubernetes.client.ApiClient | None = None, timeout_seconds: float = 30
    ) -> None:
        if api is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            api = kubernetes.client.ApiClient()
        self._api = api
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._batch = kubernetes.client.BatchV1Api(api)
        self._core = kubernetes.client.CoreV1Api(api)
        self._coordination = kubernetes.client.CoordinationV1Api(api)
        self._timeout = timeout_seconds

    def _plain(self, obj: Any) -> Any:
        return self._api.sanitize_for_serialization(obj)

    # --- StagingMerges -----------------------------------------------------------------

    def get_merge(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _not_found_as_none(
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout
            )
        )

    def list_merges(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        return self._list(
            namespaces,
            lambda: self._custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=self._timeout
            ),
            lambda ns: self._custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, _request_timeout=self._timeout
            ),
        )

    def delete_merge(self, merge: Mapping[str, Any]) -> bool:
        """Delete this StagingMerge (only this one: a uid precondition), its Job and pods
        after it by garbage collection. False if it was gone or replaced meanwhile."""
        meta = merge["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": meta.get("uid")},
            "propagationPolicy": "Background",
        }
        try:
            _retrying(
                lambda: self._custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    PLURAL,
                    meta["name"],
                    body=body,
                    _request_timeout=self._timeout,
                )
            )
        except Conflict:
            return False  # a precondition failed: another object of that name now
        except ApiException as exc:
            if exc.status == 404:
                return False
            if _is_refusal(exc):
                raise Refused(int(exc.status), _api_message(exc)) from exc
            raise
        return True

    def _list(
        self,
        namespaces: Iterable[str],
        everywhere: Callable[[], Any],
        in_namespace: Callable[[str], Any],
    ) -> list[dict[str, Any]]:
        """Items from every namespace (no namespaces given) or from each one listed."""
        scopes = list(namespaces)
        calls = (
            [everywhere] if not scopes else [functools.partial(in_namespace, ns) for ns in scopes]
        )
        items: list[dict[str, Any]] = []
        for call in calls:
            items += self._plain(_retrying(call)).get("items", [])
        return items

    def patch_merge_status(self, merge: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch `status`, only if the object is still at the version it was read at."""
        meta = merge["metadata"]
        body = {
            "metadata": {"resourceVersion": meta.get("resourceVersion")},
            "status": dict(status),
        }
        if not meta.get("resourceVersion"):
            body.pop("metadata")
        _retrying(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                body,
                _request_timeout=self._timeout,
            )
        )

    # --- Jobs and their pods ---------------------------------------------------------

    def create_job(self, job: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the Job; if it exists already (a replayed event, a restart), return that.

        Raises Refused when the API server refuses it (invalid, forbidden): the caller
        reports that rather than retrying it forever."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            created = _retrying(
                lambda: self._batch.create_namespaced_job(
                    namespace, dict(job), _request_timeout=self._timeout
                )
            )
            return self._plain(created), True
        except Conflict:
            existing = self.get_job(namespace, name)
            if existing is None:
                raise
            return existing, False
        except ApiException as exc:
            if _is_refusal(exc):
                raise Refused(int(exc.status), _api_message(exc)) from exc
            if exc.status == 403:
                log.warning("Job %s/%s: %s; retrying later", namespace, name, _api_message(exc))
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = _not_found_as_none(
            lambda: self._batch.read_namespaced_job(name, namespace, _request_timeout=self._timeout)
        )
        return None if job is None else self._plain(job)

    def list_jobs(self, namespaces: Iterable[str], selector: str) -> list[dict[str, Any]]:
        return self._list(
            namespaces,
            lambda: self._batch.list_job_for_all_namespaces(
                label_selector=selector, _request_timeout=self._timeout
            ),
            lambda ns: self._batch.list_namespaced_job(
                ns, label_selector=selector, _request_timeout=self._timeout
            ),
        )

    def _job_listing(self, namespace: str | None) -> Callable[..., Any]:
        if namespace is None:
            return functools.partial(self._batch.list_job_for_all_namespaces)
        return functools.partial(self._batch.list_namespaced_job, namespace)

    def job_snapshot(
        self, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The selected Jobs of one scope (a namespace, or all of them) and the list's
        resourceVersion, to watch from. The label selector is applied by the API server:
        Jobs of others never reach the operator."""
        listing = self._job_listing(namespace)
        listed = _retrying(lambda: listing(label_selector=selector, _request_timeout=self._timeout))
        jobs = [self._plain(job) for job in listed.items or []]
        return jobs, str(listed.metadata.resource_version)

    def watch_jobs(
        self,
        namespace: str | None,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        request_timeout: float,
    ) -> Iterator[dict[str, Any]]:
        """One watch window of the selected Jobs from `resource_version`, until the server
        ends it after `timeout_seconds`. Events come as plain dicts, `{"type", "object"}`;
        each object's metadata.resourceVersion (BOOKMARKs included, which carry nothing
        else) is where the next window resumes. A 410 Gone, or any other ERROR event, is
        raised as ApiException by the client (which never retries when a timeout is
        given); older clients yield it as an ERROR event, which the caller handles too."""
        stream = kubernetes.watch.Watch().stream(
            self._job_listing(namespace),
            label_selector=selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _request_timeout=request_timeout,
        )
        try:
            for event in stream:
                yield {"type": event["type"], "object": self._plain(event["object"])}
        finally:
            stream.close()  # closes the response now, also when the caller stops early

    def termination_message(
        self, namespace: str, job_name: str, container: str, succeeded: bool
    ) -> str | None:
        """The termination message of the Job's last pod to end (a succeeded one when the
        Job succeeded: creationTimestamp has a one-second resolution, finishedAt too)."""
        ended = [p for p in self._pods(namespace, job_name, container) if p.terminated]
        if not ended:
            return None
        return max(ended, key=lambda p: ((p.phase == "Succeeded") == succeeded, *p.order)).message

    def shard_pods(self, namespace: str, job_name: str, container: str) -> dict[int, ShardPod]:
        """Per completion index of an Indexed Job: its latest pod's phase, and the message
        of its succeeded pod (else of its last pod to end)."""
        by_index: dict[int, list[_Pod]] = {}
        for pod in self._pods(namespace, job_name, container):
            if pod.index is not None:
                by_index.setdefault(pod.index, []).append(pod)
        result = {}
        for index, pods in by_index.items():
            latest = max(pods, key=lambda p: (p.order[1], p.order[0]))  # the newest pod
            ended = [p for p in pods if p.terminated]
            best = max(ended, key=lambda p: (p.phase == "Succeeded", *p.order)) if ended else None
            result[index] = ShardPod(latest.phase, best.message if best else None)
        return result

    def _pods(self, namespace: str, job_name: str, container: str) -> list[_Pod]:
        result = _retrying(
            lambda: self._core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job_name}", _request_timeout=self._timeout
            )
        )
        pods: list[_Pod] = []
        for pod in self._plain(result).get("items", []):
            meta, status = pod["metadata"], pod.get("status") or {}
            raw = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
            terminated: dict[str, Any] | None = None
            for container_status in status.get("containerStatuses") or []:
                if container_status.get("name") == container:
                    terminated = (container_status.get("state") or {}).get("terminated")
            pods.append(
                _Pod(
                    index=int(raw) if raw is not None and str(raw).isdigit() else None,
                    phase=status.get("phase"),
                    terminated=terminated is not None,
                    message=str((terminated or {}).get("message") or "") or None,
                    order=(
                        str((terminated or {}).get("finishedAt") or ""),
                        str(meta.get("creationTimestamp") or ""),
                    ),
                )
            )
        return pods

    # --- the leader's Lease ---------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = _not_found_as_none(
            lambda: self._coordination.read_namespaced_lease(
                name, namespace, _request_timeout=self._timeout
            )
        )
        return None if lease is None else self._plain(lease)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec),
        }
        _retrying(
            lambda: self._coordination.create_namespaced_lease(
                namespace, body, _request_timeout=self._timeout
            )
        )

    def patch_lease(self, lease: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        """Merge-patch the spec, only if the Lease is still at the version it was read at."""
        meta = lease["metadata"]
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": dict(spec)}
        _retrying(
            lambda: self._coordination.patch_namespaced_lease(
                meta["name"], meta["namespace"], body, _request_timeout=self._timeout
            )
        )

    # --- Events --------------------------------------------------------------------

    def event(self, merge: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event on the StagingMerge (best effort: never fails the reconcile)."""
        meta = merge["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": "stagingmerge-operator"},
            "reportingComponent": "stagingmerge.io/operator",
            "reportingInstance": "stagingmerge-operator",
        }
        try:
            _retrying(
                lambda: self._core.create_namespaced_event(
                    meta["namespace"], body, _request_timeout=self._timeout
                )
            )
        except (ApiException, Conflict, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning(
                "could not record event %s on %s/%s: %s",
                reason,
                meta["namespace"],
                meta["name"],
                exc,
            )
