"""Use cases of the operator: bring one StagingMerge's status and Job in line.

`Reconciler.reconcile()` is level-based and idempotent: it reads the resource and
its Job, decides, acts at most once (creating a Job whose name is fixed by the
resource and generation, so a replay or a restart finds it instead), and writes
the status with an optimistic-concurrency precondition. Every handler (create,
resume, update, the informer's Job events and resync) calls it; they can race safely.

Run policy (`spec.runPolicy`):
- `Once` (default): one successful run per StagingMerge. Spec changes after the
  Job was created are acknowledged (observedGeneration moves on) but never re-run
  a merge that succeeded, so a GitOps re-sync cannot re-merge a finished backfill.
- `OnSpecChange`: a spec change after the run finished starts a new run for the
  new generation (Job `<name>-g<generation>`).
Under either policy, a spec change after a failed run (or an invalid spec) starts
a new run: changing the spec is how a user retries after fixing the cause.

The parts: queue.py decides which merges may run into a main (one definition of
"running on this main"), status.py writes the status (and never reconciles), expiry.py
deletes finished merges after their TTL. A reconcile that ends a run frees a slot of its
main; `reconcile` then starts the merges queued on it, in a loop of its own, not from
inside the status write.

Threads: kopf is kept for what it does well, the StagingMerges' own events: it delivers
create, resume and spec update on its executor. Everything else is one informer thread
per scope (informer.py): it watches the merge Jobs with a server-side label selector
(kopf's Job handlers would list and watch every Job of the cluster and filter them
client-side) and, after each watch window of one poll period, the first scope's thread
runs the resync (`reconcile_unfinished`, over every watched namespace) that a kopf timer
would otherwise do per object, putting a finalizer on every one (so there is no timer,
and must be none). leader.py's lease thread renews leadership, apart from the rest so
that a slow reconcile never loses the lease. In the default cluster-wide install that is
2 threads of the operator's own beside kopf's loop and executor (and the metrics
server's): the informer and the lease, where there were 3 (a Job watch, a poller, the
lease); with N watched namespaces, N+1 where there were N+2. Each of them calls
`reconcile`, which is safe to run concurrently: writes are conditional on the
resourceVersion, Job names are fixed, and check-then-create on one main is serialised by
a lock per main.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stagingmerge_merger.contract import parse_report

from . import conditions as c
from . import metrics, queue, shardstatus
from .config import OperatorConfig
from .expiry import Expirer
from .jobs import CONTAINER, LABEL_MAIN, LABEL_MANAGED_BY, MANAGED_BY, build_job, main_key
from .kube import Conflict, Kube, Refused, now
from .spec import (
    RUN_ON_SPEC_CHANGE,
    InvalidSpecError,
    MergeSpec,
    check_object_storage,
    parse_spec,
)
from .status import StatusWriter

log = logging.getLogger("stagingmerge.operator")

ATTEMPTS = 5  # re-reads when the status changed under us (409)


@dataclass
class Reconciler:
    kube: Kube
    config: OperatorConfig
    clock: Callable[[], str] = now
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.status = StatusWriter(self.kube, self.clock)
        self.expirer = Expirer(self.kube, self.clock)

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring one StagingMerge in line; if that ended its run, start the merges queued
        on its main that the freed slot lets in (each of which may end at once in turn,
        on a refused Job say: the loop goes on until no slot is freed)."""
        freed = [key] if (key := self._reconcile_one(namespace, name)) else []
        while freed:
            merges = self.kube.list_merges(self.config.namespaces)
            limit = self.config.max_concurrent_per_main
            for queued in sorted(queue.next_in_line(merges, limit, only=freed.pop())):
                try:
                    if key := self._reconcile_one(*queued):
                        freed.append(key)
                except Exception:  # the next resync tries again
                    log.exception("could not start queued %s/%s", *queued)

    def _reconcile_one(self, namespace: str, name: str) -> str | None:
        """Reconcile one StagingMerge; the key of the main whose slot it freed, if any."""
        for _ in range(ATTEMPTS):
            merge = self.kube.get_merge(namespace, name)
            if merge is None or merge["metadata"].get("deletionTimestamp"):
                return None
            try:
                return self._reconcile(merge)
            except Conflict:
                log.info("status of %s/%s changed meanwhile; reconciling again", namespace, name)
        raise RuntimeError(f"{namespace}/{name}: status kept changing; giving up for now")

    def reconcile_unfinished(self) -> None:
        """The polling loop: reconcile every watched StagingMerge that has not ended, delete
        the finished ones whose TTL passed, and update the per-main gauges."""
        merges = self.kube.list_merges(self.config.namespaces)
        metrics.set_fleet(queue.fleet_counts(merges))
        # of the queued, only those a free slot could take: hundreds queued for one main
        # cost one list per poll, not one per queued merge
        startable = queue.next_in_line(merges, self.config.max_concurrent_per_main)
        for merge in merges:
            meta = merge["metadata"]
            phase = (merge.get("status") or {}).get("phase")
            if phase in c.TERMINAL_PHASES:
                try:
                    self.expirer.expire(merge)
                except Exception:  # the next round tries again
                    log.exception("could not delete expired %s/%s", meta["namespace"], meta["name"])
                continue
            if phase == c.QUEUED and (meta["namespace"], meta["name"]) not in startable:
                continue
            try:
                self.reconcile(meta["namespace"], meta["name"])
            except Exception:  # one bad object must not starve the others
                log.exception("could not reconcile %s/%s", meta["namespace"], meta["name"])

    # --- decisions ---------------------------------------------------------------------

    def _reconcile(self, merge: dict[str, Any]) -> str | None:
        meta = merge["metadata"]
        status = merge.get("status") or {}
        generation = int(meta.get("generation") or 1)
        running = queue.holds_a_slot(merge)
        try:
            spec = parse_spec(merge.get("spec") or {})
            if not self.config.allow_local_paths:
                check_object_storage(spec)
        except InvalidSpecError as exc:
            if running:  # the Job has its arguments already; follow it to the end
                return self._follow(merge, None)
            return self._write(
                merge,
                c.Outcome(c.FAILED, c.R_INVALID_SPEC, str(exc)),
                generation=generation,
                event=("Warning", c.R_INVALID_SPEC),
            )
        if running:
            return self._follow(merge, spec)
        if wants_run(status, spec.run_policy, generation):
            return self._start(merge, spec)
        self._acknowledge(merge, generation)
        return None

    def _start(self, merge: dict[str, Any], spec: MergeSpec) -> str | None:
        meta = merge["metadata"]
        generation = int(meta.get("generation") or 1)
        if spec.suspend:
            return self._write(
                merge,
                c.Outcome(
                    c.SUSPENDED, c.R_SUSPENDED, "spec.suspend is true: the merge will not start"
                ),
                generation=generation,
            )
        key = main_key(spec.main_uri)
        with self._lock(key):  # one operator replica: this serialises check-then-create
            blocker = self._blocker(merge, key)
            if blocker:
                return self._write(
                    merge,
                    c.Outcome(
                        c.QUEUED, c.R_QUEUED, f"waiting for {blocker} on the same main table"
                    ),
                    generation=generation,
                    event=("Normal", c.R_QUEUED),
                )
            manifest = build_job(merge=merge, spec=spec, config=self.config)
            try:
                job, created = self.kube.create_job(manifest)
            except Refused as exc:
                return self._write(
                    merge,
                    c.Outcome(
                        c.FAILED,
                        c.R_JOB_REFUSED,
                        f"the API server refused Job {manifest['metadata']['name']}"
                        f" ({exc.status}): {exc.message}",
                    ),
                    generation=generation,
                    event=("Warning", c.R_JOB_REFUSED),
                )
        if not created and not owned_by(job, meta.get("uid")):
            return self._write(
                merge,
                c.Outcome(
                    c.FAILED,
                    c.R_JOB_CONFLICT,
                    f"Job {job['metadata']['name']} exists and is not this StagingMerge's"
                    " (another object's, or left from a deleted one): delete that Job, or"
                    " change this spec to run under a new name",
                ),
                generation=generation,
                event=("Warning", c.R_JOB_CONFLICT),
            )
        state = c.job_state(job)
        extra = {
            "jobName": state.name,
            "runGeneration": generation,
            "startTime": self.clock(),
            "completionTime": None,
            "metrics": None,
        }
        freed = self._write(
            merge,
            c.outcome_of(state, None),
            generation=generation,
            extra=extra,
            job=state,
            event=("Normal", "Started") if created else None,
            event_message=f"created Job {state.name} to merge {spec.staging_uri} into "
            f"{spec.main_uri}",
        )
        if created:
            metrics.MERGES_STARTED.inc()
            log.info("created Job %s for %s/%s", state.name, meta["namespace"], meta["name"])
        return freed

    def _follow(self, merge: dict[str, Any], spec: MergeSpec | None) -> str | None:
        meta, status = merge["metadata"], merge.get("status") or {}
        job = self.kube.get_job(meta["namespace"], status["jobName"])
        run_generation = int(status.get("runGeneration") or meta.get("generation") or 1)
        observed = self._observed(merge, spec, run_generation)
        if job is None:
            outcome = c.Outcome(
                c.FAILED,
                c.R_MERGE_FAILED,
                f"Job {status['jobName']} was deleted before it finished",
            )
            return self._write(
                merge, outcome, generation=observed, event=("Warning", outcome.reason)
            )
        state = c.job_state(job)
        extra: dict[str, Any] = {"startTime": status.get("startTime") or state.start_time}
        if state.indexed:
            pods = self.kube.shard_pods(meta["namespace"], state.name, CONTAINER)
            per_shard = {
                index: found
                for index, pod in pods.items()
                if (found := parse_report(pod.message)) is not None
            }
            run_metrics = shardstatus.sum_metrics([per_shard[i] for i in sorted(per_shard)])
            extra["shards"] = shardstatus.shard_statuses(
                state.completions, state.completed_indexes, state.failed_indexes, pods, per_shard
            )
        else:
            message = None
            if state.finished or state.attempts > (1 if state.active else 0):
                message = self.kube.termination_message(
                    meta["namespace"], state.name, CONTAINER, succeeded=state.succeeded
                )
            run_metrics = parse_report(message)
        outcome = c.outcome_of(state, run_metrics)
        if outcome.phase in c.TERMINAL_PHASES:
            extra["completionTime"] = state.completion_time or self.clock()
            extra["metrics"] = run_metrics
        kind = "Warning" if outcome.phase == c.FAILED else "Normal"
        return self._write(
            merge,
            outcome,
            generation=observed,
            extra=extra,
            job=state,
            metrics_=run_metrics,
            event=(kind, outcome.reason),
        )

    def _acknowledge(self, merge: dict[str, Any], generation: int) -> None:
        """A finished (or queued/suspended) merge: re-check queue and suspension, else
        only record that the current generation was seen."""
        status = merge.get("status") or {}
        if status.get("phase") in (c.QUEUED, c.SUSPENDED):
            return  # not reached: those have no runGeneration and take _start
        self.status.acknowledge(merge, generation)

    def _observed(
        self, merge: Mapping[str, Any], spec: MergeSpec | None, run_generation: int
    ) -> int:
        """Once: every generation is acknowledged. OnSpecChange: a newer generation is
        only observed when its own run starts."""
        generation = int(merge["metadata"].get("generation") or 1)
        if spec is not None and spec.run_policy == RUN_ON_SPEC_CHANGE:
            return run_generation
        return generation

    def _blocker(self, merge: Mapping[str, Any], key: str) -> str | None:
        """Why this merge waits for its main table (queue.blocker), or None."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MAIN}={key}"
        return queue.blocker(
            merge,
            key,
            self.config.max_concurrent_per_main,
            self.kube.list_jobs(self.config.namespaces, selector),
            self.kube.list_merges(self.config.namespaces),
        )

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # --- writing ------------------------------------------------------------------

    def _write(self, merge: dict[str, Any], outcome: c.Outcome, **how: Any) -> str | None:
        """The status written (status.py); the key of the main whose slot it freed (the
        run ended), for `reconcile` to start what is queued there."""
        return queue.main_of(merge) if self.status.write(merge, outcome, **how) else None


def owned_by(job: Mapping[str, Any], uid: str | None) -> bool:
    """Whether `uid` is the Job's controller (the only owner whose Job this is)."""
    return any(
        ref.get("controller") and ref.get("uid") == uid
        for ref in (job.get("metadata") or {}).get("ownerReferences") or []
    )


def wants_run(status: Mapping[str, Any], run_policy: str, generation: int) -> bool:
    """Whether this generation needs a run of its own (see the module docstring)."""
    run_generation = status.get("runGeneration")
    if run_generation is None:
        return True  # never ran (new, queued, suspended, or its spec was invalid)
    if generation <= int(run_generation):
        return False
    return run_policy == RUN_ON_SPEC_CHANGE or status.get("phase") == c.FAILED
