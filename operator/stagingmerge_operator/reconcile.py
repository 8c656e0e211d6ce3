"""Use cases of the operator: bring one StagingMerge's status and Job in line.

`Reconciler.reconcile()` is level-based and idempotent: it reads the resource and
its Job, decides, acts at most once (creating a Job whose name is fixed by the
resource and generation, so a replay or a restart finds it instead), and writes
the status with an optimistic-concurrency precondition. Every handler (create,
resume, update, the queue timer, Job events) calls it; they can race safely.

Run policy (`spec.runPolicy`):
- `Once` (default): one successful run per StagingMerge. Spec changes after the
  Job was created are acknowledged (observedGeneration moves on) but never re-run
  a merge that succeeded, so a GitOps re-sync cannot re-merge a finished backfill.
- `OnSpecChange`: a spec change after the run finished starts a new run for the
  new generation (Job `<name>-g<generation>`).
Under either policy, a spec change after a failed run (or an invalid spec) starts
a new run: changing the spec is how a user retries after fixing the cause.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import conditions as c
from . import metrics, shards
from .config import OperatorConfig
from .jobs import CONTAINER, LABEL_MAIN, LABEL_MANAGED_BY, MANAGED_BY, build_job, main_key
from .kube import Conflict, Kube, Refused, now
from .spec import (
    RUN_ON_SPEC_CHANGE,
    InvalidSpecError,
    MergeSpec,
    check_object_storage,
    parse_spec,
)

log = logging.getLogger("stagingmerge.operator")

ATTEMPTS = 5  # re-reads when the status changed under us (409)


@dataclass
class Reconciler:
    kube: Kube
    config: OperatorConfig
    clock: Callable[[], str] = now
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _refused_deletes: set[str] = field(default_factory=set)  # uids whose TTL delete got 4xx

    def reconcile(self, namespace: str, name: str) -> None:
        for _ in range(ATTEMPTS):
            merge = self.kube.get_merge(namespace, name)
            if merge is None or merge["metadata"].get("deletionTimestamp"):
                return
            try:
                self._reconcile(merge)
                return
            except Conflict:
                log.info("status of %s/%s changed meanwhile; reconciling again", namespace, name)
        raise RuntimeError(f"{namespace}/{name}: status kept changing; giving up for now")

    def reconcile_unfinished(self) -> None:
        """The polling loop: reconcile every watched StagingMerge that has not ended, delete
        the finished ones whose TTL passed, and update the per-main gauges."""
        merges = self.kube.list_merges(self.config.namespaces)
        metrics.set_fleet(fleet_counts(merges))
        # of the queued, only those a free slot could take: hundreds queued for one main
        # cost one list per poll, not one per queued merge
        startable = next_in_line(merges, self.config.max_concurrent_per_main)
        for merge in merges:
            meta = merge["metadata"]
            phase = (merge.get("status") or {}).get("phase")
            if phase in c.TERMINAL_PHASES:
                try:
                    self._expire(merge)
                except Exception:  # the next round tries again
                    log.exception("could not delete expired %s/%s", meta["namespace"], meta["name"])
                continue
            if phase == c.QUEUED and (meta["namespace"], meta["name"]) not in startable:
                continue
            try:
                self.reconcile(meta["namespace"], meta["name"])
            except Exception:  # one bad object must not starve the others
                log.exception("could not reconcile %s/%s", meta["namespace"], meta["name"])

    def _expire(self, merge: dict[str, Any]) -> None:
        """Delete a finished StagingMerge once spec.ttlSecondsAfterFinished has passed."""
        due = expiry(merge)
        if due is None or parse_time(self.clock()) < due:
            return
        meta = merge["metadata"]
        if meta.get("uid") in self._refused_deletes:
            return
        try:
            deleted = self.kube.delete_merge(merge)
        except Refused as exc:  # said once, on the object; not retried every poll
            self._refused_deletes.add(str(meta.get("uid")))
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

    # --- decisions ---------------------------------------------------------------------

    def _reconcile(self, merge: dict[str, Any]) -> None:
        meta = merge["metadata"]
        status = merge.get("status") or {}
        generation = int(meta.get("generation") or 1)
        running = status.get("jobName") and status.get("phase") not in c.TERMINAL_PHASES
        try:
            spec = parse_spec(merge.get("spec") or {})
            if not self.config.allow_local_paths:
                check_object_storage(spec)
        except InvalidSpecError as exc:
            if running:  # the Job has its arguments already; follow it to the end
                self._follow(merge, None)
            else:
                self._write(
                    merge,
                    c.Outcome(c.FAILED, c.R_INVALID_SPEC, str(exc)),
                    generation=generation,
                    event=("Warning", c.R_INVALID_SPEC),
                )
            return
        if running:
            self._follow(merge, spec)
        elif wants_run(status, spec.run_policy, generation):
            self._start(merge, spec)
        else:
            self._acknowledge(merge, generation)

    def _start(self, merge: dict[str, Any], spec: MergeSpec) -> None:
        meta = merge["metadata"]
        generation = int(meta.get("generation") or 1)
        if spec.suspend:
            self._write(
                merge,
                c.Outcome(
                    c.SUSPENDED, c.R_SUSPENDED, "spec.suspend is true: the merge will not start"
                ),
                generation=generation,
            )
            return
        key = main_key(spec.main_uri)
        with self._lock(key):  # one operator replica: this serialises check-then-create
            blocker = self._blocker(merge, key)
            if blocker:
                self._write(
                    merge,
                    c.Outcome(
                        c.QUEUED, c.R_QUEUED, f"waiting for {blocker} on the same main table"
                    ),
                    generation=generation,
                    event=("Normal", c.R_QUEUED),
                )
                return
            manifest = build_job(merge=merge, spec=spec, config=self.config)
            try:
                job, created = self.kube.create_job(manifest)
            except Refused as exc:
                self._write(
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
                return
        if not created and not owned_by(job, meta.get("uid")):
            self._write(
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
            return
        state = c.job_state(job)
        extra = {
            "jobName": state.name,
            "runGeneration": generation,
            "startTime": self.clock(),
            "completionTime": None,
            "metrics": None,
        }
        self._write(
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

    def _follow(self, merge: dict[str, Any], spec: MergeSpec | None) -> None:
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
            self._write(merge, outcome, generation=observed, event=("Warning", outcome.reason))
            return
        state = c.job_state(job)
        extra: dict[str, Any] = {"startTime": status.get("startTime") or state.start_time}
        if state.indexed:
            pods = self.kube.shard_pods(meta["namespace"], state.name, CONTAINER)
            per_shard = {
                index: found
                for index, pod in pods.items()
                if (found := c.parse_metrics(pod.message)) is not None
            }
            run_metrics = shards.sum_metrics([per_shard[i] for i in sorted(per_shard)])
            extra["shards"] = shards.shard_statuses(
                state.completions, state.completed_indexes, state.failed_indexes, pods, per_shard
            )
        else:
            message = None
            if state.finished or state.attempts > (1 if state.active else 0):
                message = self.kube.termination_message(
                    meta["namespace"], state.name, CONTAINER, succeeded=state.succeeded
                )
            run_metrics = c.parse_metrics(message)
        outcome = c.outcome_of(state, run_metrics)
        if outcome.phase in c.TERMINAL_PHASES:
            extra["completionTime"] = state.completion_time or self.clock()
            extra["metrics"] = run_metrics
        kind = "Warning" if outcome.phase == c.FAILED else "Normal"
        self._write(
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
        if status.get("observedGeneration") == generation:
            return
        conditions = [
            dict(cond, observedGeneration=generation) for cond in status.get("conditions") or []
        ]
        self.kube.patch_merge_status(
            merge, {"observedGeneration": generation, "conditions": conditions}
        )

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
        """Why this merge waits for its main table, or None: `max_concurrent_per_main`
        slots, taken by running Jobs and, first come first served, by older StagingMerges
        still waiting for one."""
        me = merge["metadata"]
        limit = self.config.max_concurrent_per_main
        ahead: list[str] = []
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MAIN}={key}"
        for job in self.kube.list_jobs(self.config.namespaces, selector):
            state = c.job_state(job)
            if not state.finished or state.pods_running:  # a pod may still be committing
                owner = (job["metadata"].get("ownerReferences") or [{}])[0].get("uid")
                if owner != me.get("uid"):
                    ahead.append(f"Job {job['metadata']['namespace']}/{job['metadata']['name']}")
        mine = (me.get("creationTimestamp") or "", me["namespace"], me["name"])
        for other in self.kube.list_merges(self.config.namespaces):
            if len(ahead) >= limit:
                break
            om = other["metadata"]
            theirs = (om.get("creationTimestamp") or "", om["namespace"], om["name"])
            if theirs >= mine or om.get("deletionTimestamp"):
                continue
            ostatus = other.get("status") or {}
            if ostatus.get("phase") in c.TERMINAL_PHASES or ostatus.get("jobName"):
                continue  # finished, or running (its Job was counted above)
            try:
                ospec = parse_spec(other.get("spec") or {})
            except InvalidSpecError:
                continue
            if not ospec.suspend and main_key(ospec.main_uri) == key:
                ahead.append(f"StagingMerge {om['namespace']}/{om['name']}")
        if len(ahead) < limit:
            return None
        if limit == 1:
            return ahead[0]
        return (
            f"{', '.join(ahead[:3])}{' and others' if len(ahead) > 3 else ''} ({limit} at a time)"
        )

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # --- writing ------------------------------------------------------------------

    def _write(
        self,
        merge: dict[str, Any],
        outcome: c.Outcome,
        *,
        generation: int,
        extra: Mapping[str, Any] | None = None,
        job: c.JobState | None = None,
        metrics_: Mapping[str, Any] | None = None,
        event: tuple[str, str] | None = None,
        event_message: str | None = None,
    ) -> None:
        status = merge.get("status") or {}
        stamp = self.clock()
        new: dict[str, Any] = {
            "observedGeneration": generation,
            "phase": outcome.phase,
            "terminalState": outcome.phase if outcome.phase in c.TERMINAL_PHASES else None,
            "progress": c.progress(outcome, job, metrics_),
            "conditions": c.conditions_for(
                status.get("conditions") or [], outcome, generation, stamp
            ),
        }
        if job is not None:
            new["attempts"] = job.attempts
        new.update(extra or {})
        changed_phase = status.get("phase") != outcome.phase
        if all(
            status.get(k) == v for k, v in new.items() if k != "conditions"
        ) and _same_conditions(status.get("conditions") or [], new["conditions"]):
            return
        self.kube.patch_merge_status(merge, new)
        meta = merge["metadata"]
        log.info(
            "%s/%s: %s (%s) %s",
            meta["namespace"],
            meta["name"],
            outcome.phase,
            outcome.reason,
            outcome.message,
        )
        if changed_phase and event is not None:
            self.kube.event(merge, event[0], event[1], event_message or outcome.message)
        if (
            changed_phase
            and outcome.phase in c.TERMINAL_PHASES
            and outcome.reason != c.R_INVALID_SPEC
        ):
            metrics.record_terminal(
                outcome.phase == c.SUCCEEDED, outcome.reason, dict(metrics_) if metrics_ else None
            )
        if changed_phase and outcome.phase in c.TERMINAL_PHASES:
            self._wake_queue(merge)

    def _wake_queue(self, finished: Mapping[str, Any]) -> None:
        """A merge ended: let the next ones queued on the same main start now."""
        try:
            key = main_key(parse_spec(finished.get("spec") or {}).main_uri)
        except InvalidSpecError:
            return
        merges = self.kube.list_merges(self.config.namespaces)
        startable = next_in_line(merges, self.config.max_concurrent_per_main, only=key)
        for namespace, name in sorted(startable):
            try:
                self.reconcile(namespace, name)
            except Exception:  # the queue timer will try again
                log.exception("could not start queued %s/%s", namespace, name)


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


def _same_conditions(old: list[Mapping[str, Any]], new: list[Mapping[str, Any]]) -> bool:
    def strip(conds: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in x.items() if k != "lastTransitionTime"} for x in conds),
            key=lambda x: str(x.get("type")),
        )

    return strip(old) == strip(new)


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


def fleet_counts(merges: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per main table URI: (queued, running) StagingMerges."""
    counts: dict[str, list[int]] = {}
    for merge in merges:
        phase = (merge.get("status") or {}).get("phase")
        main = ((merge.get("spec") or {}).get("main") or {}).get("uri")
        if not isinstance(main, str):
            continue
        entry = counts.setdefault(main.rstrip("/"), [0, 0])
        if phase == c.QUEUED:
            entry[0] += 1
        elif phase in (c.PENDING, c.RUNNING):
            entry[1] += 1
    return {main: (q, r) for main, (q, r) in counts.items()}


def next_in_line(
    merges: list[dict[str, Any]], limit: int, only: str | None = None
) -> set[tuple[str, str]]:
    """The queued StagingMerges that could start now: per main table, the oldest ones, as
    many as it has free slots (`limit` minus its merges running). `only`: one main's key."""
    running: dict[str, int] = {}
    queued: dict[str, list[tuple[str, str, str]]] = {}
    for merge in merges:
        status, meta = merge.get("status") or {}, merge["metadata"]
        phase = status.get("phase")
        if phase in c.TERMINAL_PHASES or meta.get("deletionTimestamp"):
            continue
        try:
            key = main_key(parse_spec(merge.get("spec") or {}).main_uri)
        except InvalidSpecError:
            continue
        if only is not None and key != only:
            continue
        if phase == c.QUEUED:
            stamp = str(meta.get("creationTimestamp") or "")
            queued.setdefault(key, []).append((stamp, meta["namespace"], meta["name"]))
        elif status.get("jobName"):
            running[key] = running.get(key, 0) + 1
    chosen: set[tuple[str, str]] = set()
    for key, waiting in queued.items():
        free = max(0, limit - running.get(key, 0))
        chosen.update((ns, name) for _, ns, name in sorted(waiting)[:free])
    return chosen
