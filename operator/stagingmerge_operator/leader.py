"""One active operator at a time: a coordination.k8s.io Lease, held while reconciling.

The queue per main table and the single polling loop assume one reconciler. A second
instance (a scaled Deployment, an overlapping rollout, a stray `kopf run`) waits here
until the lease is free or expired; the holder renews it every third of its duration
and exits the process when it cannot (another instance will then take over: kopf's
in-memory state is not worth handing over, every decision is re-read from the API).

`decide` is the pure rule; `Leadership` does the API calls through Kube.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .kube import Conflict, Kube

log = logging.getLogger("stagingmerge.operator")

CREATE, TAKE, RENEW, WAIT = "create", "take", "renew", "wait"


def identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def decide(lease: Mapping[str, Any] | None, me: str, now: float, duration: float) -> str:
    """What to do about the lease: create it, take it (free or expired), renew it (ours),
    or wait (another holder's, still fresh)."""
    if lease is None:
        return CREATE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == me:
        return RENEW
    renewed = _timestamp(spec.get("renewTime")) or _timestamp(spec.get("acquireTime"))
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    if not holder or renewed is None or renewed + held_for < now:
        return TAKE
    return WAIT


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        duration: float,
        me: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.duration = duration
        self.me = me or identity()
        self.clock = clock

    def try_once(self) -> bool:
        """One look at the lease; True when this instance holds it afterwards."""
        lease = self.kube.get_lease(self.namespace, self.name)
        now = self.clock()
        action = decide(lease, self.me, now, self.duration)
        spec = {
            "holderIdentity": self.me,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": _stamp(now),
        }
        try:
            if action == CREATE:
                self.kube.create_lease(
                    self.namespace, self.name, {**spec, "acquireTime": _stamp(now)}
                )
            elif action == TAKE:
                assert lease is not None
                transitions = int((lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
                self.kube.patch_lease(
                    lease,
                    {**spec, "acquireTime": _stamp(now), "leaseTransitions": transitions},
                )
            elif action == RENEW:
                assert lease is not None
                self.kube.patch_lease(lease, spec)
            else:
                return False
        except Conflict:
            return False  # someone else wrote it first
        return True

    def acquire(self) -> None:
        """Block until this instance holds the lease."""
        announced = False
        while not self.try_once():
            if not announced:
                log.info(
                    "another instance holds lease %s/%s; waiting to take over",
                    self.namespace,
                    self.name,
                )
                announced = True
            time.sleep(self.duration / 3)
        log.info("holding lease %s/%s as %s", self.namespace, self.name, self.me)

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew every third of the duration; call `on_lost` once renewal has not succeeded
        for a whole duration (another instance may then have taken over)."""

        def renew() -> None:
            last = self.clock()
            while True:
                time.sleep(self.duration / 3)
                try:
                    if self.try_once():
                        last = self.clock()
                        continue
                    log.error(
                        "lease %s/%s was taken by another instance", self.namespace, self.name
                    )
                    on_lost()
                    return
                except Exception:  # an API outage: keep trying until the lease runs out
                    log.exception("could not renew lease %s/%s", self.namespace, self.name)
                if self.clock() - last > self.duration:
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease", daemon=True)
        thread.start()
        return thread
