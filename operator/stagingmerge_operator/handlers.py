"""kopf handlers: decorators only; every decision is in reconcile.py.

Start with `stagingmerge-operator` (see main.py) or `kopf run -m stagingmerge_operator.handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION, metrics
from . import config as config_module
from .informer import Informer
from .jobs import JOB_SELECTOR
from .kube import Kube
from .reconcile import Reconciler

CONFIG = config_module.load()  # fail fast, before any handler runs
_reconciler: Reconciler | None = None


def reconciler() -> Reconciler:
    global _reconciler  # one per process, built on first use
    if _reconciler is None:
        _reconciler = Reconciler(Kube(timeout_seconds=CONFIG.api_timeout_seconds), CONFIG)
    return _reconciler


# The informer (informer.py) delivers the merge Jobs' events (watched with a server-side
# label selector: kopf's Job handlers would list and watch every Job of the cluster) and
# the periodic resync of unfinished merges (no kopf timer: it would put a finalizer on
# every StagingMerge, and deleting one would hang while the operator is down).
_informer: Informer | None = None


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
    global _informer  # one thread per scope: Job events, and the resync every poll period
    _informer = Informer(
        Kube(timeout_seconds=CONFIG.api_timeout_seconds),
        CONFIG.namespaces,
        ",".join(f"{k}={v}" for k, v in JOB_SELECTOR.items()),
        on_job=lambda namespace, name: reconciler().reconcile(namespace, name),
        resync=lambda: reconciler().reconcile_unfinished(),
        poll_seconds=CONFIG.queue_poll_seconds,
    )
    _informer.start()
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
def stop_informer(**_: Any) -> None:
    if _informer is not None:
        _informer.stop()
