"""kopf handlers: decorators only; every decision is in reconcile.py.

Start with `stagingmerge-operator` (see main.py) or `kopf run -m stagingmerge_operator.handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION, metrics
from . import conditions as c
from . import config as config_module
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


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="stagingmerge.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="stagingmerge.io", key="last-handled-configuration"
    )
    settings.posting.enabled = False  # the reconciler records its own, meaningful Events
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    metrics.serve(CONFIG.metrics_port)
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


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in c.TERMINAL_PHASES


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=CONFIG.queue_poll_seconds,
    when=_unfinished,
    initial_delay=CONFIG.queue_poll_seconds,
)
def merge_waiting(namespace: str | None, name: str, **_: Any) -> None:
    """Queued, suspended or running merges re-check their turn and their Job's state;
    this also heals anything a failed API call or a missed event left behind."""
    assert namespace is not None
    reconciler().reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=JOB_SELECTOR)
def job_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("apiVersion", "").startswith(GROUP + "/") and owner.get("controller"):
            reconciler().reconcile(namespace, owner["name"])
