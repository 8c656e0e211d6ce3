"""The informer: one loop per scope that delivers the merge Jobs' events and the resync.

Beside kopf (which delivers the StagingMerges' own events) the operator needs two things
kopf would do badly, and both are done here, in one daemon thread per scope (the whole
cluster by default, else each watched namespace):

- The merge Jobs' events, selected by the API server. kopf's `@kopf.on.event(...,
  labels=...)` lists and watches every Job of the watched namespaces (cluster-wide by
  default) and drops the others client-side: on a cluster with 10^4 Jobs that is all of
  their traffic. This loop sends the selector (`app.kubernetes.io/managed-by=
  stagingmerge-operator`) to the API server, so Jobs of others never reach the operator,
  and hands each Job's owning StagingMerge to `on_job`.
- The periodic resync (`reconcile_unfinished`): queued, suspended and running merges
  re-check their turn and their Job, which also heals whatever a failed API call or a
  missed event left behind. A kopf timer would do it per object, but it puts kopf's
  finalizer on every unfinished StagingMerge, so deleting one (or its namespace, or the
  release) would hang while the operator is down. There is no kopf timer and there must
  not be one: this resync needs no finalizer.

The loop, level-based like the reconciler: list the selected Jobs once, then watch from
that list's resourceVersion in windows of `timeoutSeconds` = the poll period, each window
resuming from the last resourceVersion it saw (bookmarks included: a quiet window still
moves it on), so a window ending costs one watch request, not a list. After the first
list and after every window, however it ended, comes the resync: at least once per poll
period while the watch is healthy, and no later than the (capped) backoff when it is not.
It lists again only on 410 Gone (the version is too old) or an error, after a backoff
capped at min(30 s, the poll period); a watch that ends at once (a proxy, a server that
cannot watch) waits that backoff too rather than spin.

With several scopes, only the first scope's thread runs the resync: `reconcile_unfinished`
covers every watched namespace in one pass, and one runner means one pass per period (the
scopes' windows drift apart, a shared "due" clock would add a lock for nothing). A scope
whose API calls fail stalls only its own Job events; the resync's own list spans every
namespace and would fail with it anyway. While the resync runs, that scope's watch is
closed; its events wait for the next window, which resumes where the last one ended.

An exception in `on_job` or in the resync is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import urllib3
from kubernetes.client.exceptions import ApiException

from . import GROUP

log = logging.getLogger("stagingmerge.operator")
MAX_BACKOFF_SECONDS = 30.0
INITIAL_BACKOFF_SECONDS = 0.5
# a window shorter than this ended "at once": it waits the backoff before the next watch
SHORT_WINDOW_SECONDS = 1.0


class JobSource(Protocol):
    """What the informer needs of kube.Kube (a test passes a scripted stand-in)."""

    def job_snapshot(
        self, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch_jobs(
        self,
        namespace: str | None,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        request_timeout: float,
    ) -> Iterator[dict[str, Any]]: ...


class Gone(Exception):  # noqa: N818 - an answer: list again
    """410 Gone: the resourceVersion the watch resumed from is too old."""


class WatchError(Exception):
    """An ERROR event other than 410 in the watch stream (old clients yield them)."""


_TROUBLE = (ApiException, urllib3.exceptions.HTTPError, OSError, Gone, WatchError)


def owner_of(job: Mapping[str, Any]) -> str | None:
    """The name of the StagingMerge that controls this Job, if one does."""
    for owner in (job.get("metadata") or {}).get("ownerReferences") or []:
        if str(owner.get("apiVersion", "")).startswith(GROUP + "/") and owner.get("controller"):
            return str(owner["name"])
    return None


def window_seconds(poll_seconds: float) -> int:
    """The watch's timeoutSeconds for a poll period: whole seconds (the API takes an
    integer), rounded up, at least 1."""
    return max(1, math.ceil(poll_seconds))


def request_timeout(window: int) -> float:
    """The client's read timeout of a watch: a margin above the server's timeoutSeconds,
    so only a connection that went silent (dropped, nobody closed it) trips it."""
    return float(window + max(10, window // 5))


class Informer:
    """One daemon thread per scope (each watched namespace, or the whole cluster)."""

    def __init__(
        self,
        kube: JobSource,
        namespaces: tuple[str, ...],
        selector: str,
        on_job: Callable[[str, str], None],
        resync: Callable[[], None],
        poll_seconds: float,
        initial_backoff: float = INITIAL_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube, self._selector = kube, selector
        self._on_job, self._resync = on_job, resync
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._window = window_seconds(poll_seconds)
        self._request_timeout = request_timeout(self._window)
        self._initial_backoff = initial_backoff
        self._max_backoff = min(MAX_BACKOFF_SECONDS, float(self._window))
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return tuple(self._threads)

    def start(self) -> None:
        if self._threads:
            return
        for index, scope in enumerate(self._scopes):
            thread = threading.Thread(
                target=self._run,
                args=(scope, index == 0),  # the first scope's thread runs the resync
                name=f"informer-{scope or 'all'}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ends the threads at their next event, window end or backoff (a backoff wait
        wakes at once). They are daemons: a watch blocked on a silent connection does not
        hold the process up."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end; True if they all did."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    # --- the loop ----------------------------------------------------------------------

    def _run(self, namespace: str | None, resyncs: bool) -> None:
        where = namespace or "all namespaces"
        backoff = self._initial_backoff
        version: str | None = None
        listed = False
        while not self._stop.is_set():
            if version is None:
                try:
                    version = self._list(namespace)
                except _TROUBLE as exc:
                    self._log_trouble(where, "could not list Jobs", exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                except Exception:  # a bug must not end the thread: it would end silently
                    log.exception("listing Jobs (%s) failed", where)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                if not listed and resyncs:
                    self._resync_safely()  # the first one: do not wait a whole window
                listed = True
                continue  # look at the stop flag between the list and the watch
            started = self._clock()
            ended: BaseException | None = None
            try:
                version = self._watch(namespace, version)
            except _TROUBLE as exc:
                version, ended = None, exc  # list again
            except Exception as exc:  # a bug must not end the thread: it would end silently
                log.exception("watching Jobs (%s) failed", where)
                version, ended = None, exc
            lasted = self._clock() - started >= SHORT_WINDOW_SECONDS  # the resync aside
            if self._stop.is_set():
                return
            if resyncs:
                self._resync_safely()
            if ended is None and lasted:
                backoff = self._initial_backoff  # the server ended a window that lasted
                continue
            if isinstance(ended, _TROUBLE):
                self._log_trouble(where, "Job watch lists again", ended)
            # a window that ends at once must not turn into a tight loop
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _list(self, namespace: str | None) -> str:
        jobs, version = self._kube.job_snapshot(namespace, self._selector)
        for job in jobs:
            if self._stop.is_set():
                break
            self._deliver(job)
        return version

    def _watch(self, namespace: str | None, version: str) -> str:
        """One window; returns the last resourceVersion seen, to resume from."""
        events = self._kube.watch_jobs(
            namespace, self._selector, version, self._window, self._request_timeout
        )
        try:
            for event in events:
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":  # a Status object
                    if obj.get("code") == 410:
                        raise Gone(str(obj.get("message") or "resourceVersion too old"))
                    raise WatchError(f"{obj.get('code')}: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":  # a bookmark only moves the version on
                    self._deliver(obj)
                if self._stop.is_set():
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a generator: ends the request now, not when collected
        return version

    def _deliver(self, job: Mapping[str, Any]) -> None:
        name, namespace = owner_of(job), (job.get("metadata") or {}).get("namespace")
        if name is None or namespace is None:
            return
        try:
            self._on_job(namespace, name)
        except Exception:  # the resync heals it; the loop goes on
            log.exception("reconciling %s/%s after a Job event failed", namespace, name)

    def _resync_safely(self) -> None:
        try:
            self._resync()
        except Exception:  # the next window tries again
            log.exception("resyncing unfinished StagingMerges failed")

    @staticmethod
    def _log_trouble(where: str, what: str, exc: BaseException) -> None:
        # 410 Gone (the version is too old: normal), a dropped connection, a timeout
        gone = isinstance(exc, Gone) or (isinstance(exc, ApiException) and exc.status == 410)
        log.log(
            logging.INFO if gone else logging.WARNING,
            "%s (%s): %s",
            what,
            where,
            "410 Gone" if gone else (str(exc).splitlines() or [type(exc).__name__])[0][:300],
        )
