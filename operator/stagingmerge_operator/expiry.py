"""Deleting finished StagingMerges after `spec.ttlSecondsAfterFinished`.

`expiry` is pure (when a merge is due); `Expirer` deletes the due ones, and says once, on
the object as an Event, when the API server refuses a delete (it is not retried every
poll, which would flood the API server's log and the object's Events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import conditions as c
from . import metrics
from .kube import Kube, Refused

log = logging.getLogger("stagingmerge.operator")


def expiry(merge: Mapping[str, Any]) -> datetime | None:
    """When a finished StagingMerge is due for deletion (None: no TTL, or not finished).
    Read from the raw spec, so that a merge that failed on an invalid spec expires too."""
    ttl = (merge.get("spec") or {}).get("ttlSecondsAfterFinished")
    status = merge.get("status") or {}
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int)
        or ttl < 0
        or status.get("phase") not in c.TERMINAL_PHASES
    ):
        return None
    finished = status.get("completionTime") or _last_transition(status)
    if not finished:
        return None
    return parse_time(finished) + timedelta(seconds=ttl)


def _last_transition(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Succeeded" and condition.get("lastTransitionTime"):
            return str(condition["lastTransitionTime"])
    return None


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@dataclass
class Expirer:
    kube: Kube
    clock: Callable[[], str]
    _refused: set[str] = field(default_factory=set)  # uids whose delete got a 4xx

    def expire(self, merge: dict[str, Any]) -> None:
        """Delete `merge` if its TTL has passed."""
        due = expiry(merge)
        if due is None or parse_time(self.clock()) < due:
            return
        meta = merge["metadata"]
        if meta.get("uid") in self._refused:
            return
        try:
            deleted = self.kube.delete_merge(merge)
        except Refused as exc:  # said once, on the object; not retried every poll
            self._refused.add(str(meta.get("uid")))
            message = (
                f"could not delete this finished StagingMerge after ttlSecondsAfterFinished:"
                f" the API server refused ({exc.status}): {exc.message}"
            )
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
            self.kube.event(merge, "Warning", c.R_TTL_DELETE_REFUSED, message)
            return
        if deleted:
            log.info(
                "%s/%s: deleted, %ss after it finished (spec.ttlSecondsAfterFinished)",
                meta["namespace"],
                meta["name"],
                (merge.get("spec") or {}).get("ttlSecondsAfterFinished"),
            )
            metrics.MERGES_EXPIRED.inc()
