"""The merge Jobs' watch: selected by label on the API server, one stream per scope.

kopf's `@kopf.on.event(..., labels=...)` lists and watches every Job of the watched
namespaces (cluster-wide by default) and drops the others client-side: on a cluster
with 10^4 Jobs that is all of their traffic, and RBAC-wise it is the same `list/watch
jobs`. This watch sends the selector (`app.kubernetes.io/managed-by=stagingmerge-operator`)
to the API server, re-lists on 410 Gone or any error (with a capped backoff), and hands
each Job's owning StagingMerge to the reconciler. The operator-level poller
(handlers._Poller) still re-checks every unfinished merge, so a missed event only delays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from . import GROUP
from .kube import Kube

log = logging.getLogger("stagingmerge.operator")
MAX_BACKOFF_SECONDS = 30.0


def owner_of(job: Mapping[str, Any]) -> str | None:
    """The name of the StagingMerge that controls this Job, if one does."""
    for owner in (job.get("metadata") or {}).get("ownerReferences") or []:
        if str(owner.get("apiVersion", "")).startswith(GROUP + "/") and owner.get("controller"):
            return str(owner["name"])
    return None


class JobWatch:
    """One daemon thread per scope (each watched namespace, or the whole cluster)."""

    def __init__(
        self,
        kube: Kube,
        namespaces: tuple[str, ...],
        selector: str,
        on_job: Callable[[str, str], None],
        server_timeout: int = 300,
        client_timeout: float = 360,
    ) -> None:
        self._kube, self._selector, self._on_job = kube, selector, on_job
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._timeouts = (server_timeout, client_timeout)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for scope in self._scopes:
            thread = threading.Thread(
                target=self._run, args=(scope,), name=f"job-watch-{scope or 'all'}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _run(self, namespace: str | None) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                for event in self._kube.job_events(namespace, self._selector, *self._timeouts):
                    if self._stop.is_set():
                        return
                    self._handle(event)
                if time.monotonic() - started > 1:
                    backoff = 0.5  # a watch that lasted: the server ended it, list again now
                    continue
                # a watch that ends at once (a proxy, a server that cannot watch) must not
                # turn into a tight list loop
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                # 410 Gone (the version is too old: normal), a dropped connection, a timeout
                gone = isinstance(exc, ApiException) and exc.status == 410
                log.log(
                    logging.INFO if gone else logging.WARNING,
                    "Job watch (%s) lists again: %s",
                    namespace or "all namespaces",
                    "410 Gone" if gone else str(exc).splitlines()[0][:300],
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _handle(self, event: Mapping[str, Any]) -> None:
        job = event.get("object") or {}
        name, namespace = owner_of(job), (job.get("metadata") or {}).get("namespace")
        if name is None or namespace is None:
            return
        try:
            self._on_job(namespace, name)
        except Exception:  # the poller heals it; the watch goes on
            log.exception("reconciling %s/%s after a Job event failed", namespace, name)
