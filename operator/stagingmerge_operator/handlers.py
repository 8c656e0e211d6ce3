"""kopf handlers: decorators only; every decision is in reconcile.py.

Start with `stagingmerge-operator` (see main.py) or `kopf run -m stagingmerge_operator.handlers`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION, metrics
from . import config as config_module
from .jobs import JOB_SELECTOR
from .jobwatch import JobWatch
from .kube import Kube
from .reconcile import Reconciler

CONFIG = config_module.load()  # fail fast, before any handler runs
_reconciler: Reconciler | None = None


def reconciler() -> Reconciler:
    global _reconciler  # one per process, built on first use
    if _reconciler is None:
        _reconciler = Reconciler(Kube(timeout_seconds=CONFIG.api_timeout_seconds), CONFIG)
    return _reconciler


class _Poller:
    """One operator-level loop instead of a kopf timer per object: queued, suspended and
    running merges re-check their turn and their Job every QUEUE_POLL_SECONDS, which also
    heals anything a failed API call or a missed event left behind.

    A kopf timer would put kopf's finalizer on every unfinished StagingMerge, so deleting
    one (or its namespace, or the release) would hang while the operator is down. This
    loop needs no finalizer: the operator can be gone and deletion still completes."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="queue-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        log = logging.getLogger("stagingmerge.operator")
        while not self._stop.wait(CONFIG.queue_poll_seconds):
            try:
                reconciler().reconcile_unfinished()
            except Exception:  # the next round tries again
                log.exception("polling unfinished StagingMerges failed")


_poller = _Poller()
_job_watch: JobWatch | None = None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="stagingmerge.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="stagingmerge.io", key="last-handled-configuration"
    )
    settings.posting.enabled = False  # the reconciler records its own, meaningful Events
    # The resources are known: no scanning of CRDs and namespaces, which would need
    # cluster-wide list/watch on both (refused in watchNamespaces installs, where kopf
    # then stalls at every start) for nothing.
    settings.scanning.disabled = True
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    # a watch that went silent (a dropped connection nobody closed) is restarted
    settings.watching.client_timeout = 360
    metrics.serve(CONFIG.metrics_port)
    _poller.start()
    global _job_watch  # the merge Jobs, selected by the API server (not kopf's client side)
    _job_watch = JobWatch(
        Kube(timeout_seconds=CONFIG.api_timeout_seconds),
        CONFIG.namespaces,
        ",".join(f"{k}={v}" for k, v in JOB_SELECTOR.items()),
        lambda namespace, name: reconciler().reconcile(namespace, name),
        server_timeout=settings.watching.server_timeout or 300,
        client_timeout=settings.watching.client_timeout or 360,
    )
    _job_watch.start()
    logging.getLogger("stagingmerge.operator").info(
        "operator configured: namespaces=%s default_image=%s",
        ",".join(CONFIG.namespaces) or "<all>",
        CONFIG.default_image,
    )


@kopf.on.create(GROUP, VERSION, PLURAL, backoff=5)
@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=5)
def merge_changed(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None  # StagingMerge is namespaced
    reconciler().reconcile(namespace, name)


@kopf.on.cleanup()
def stop_polling(**_: Any) -> None:
    _poller.stop()
    if _job_watch is not None:
        _job_watch.stop()
