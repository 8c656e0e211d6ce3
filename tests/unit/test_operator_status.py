"""status.py, expiry.py and the reconciler's queue loop against an in-memory API server
(FakeKube below: objects in dicts, every write recorded). The real API server and Job
controller run the same paths in tests/e2e/; here each part is checked on its own.

The stand-in is for unit speed and determinism only: it implements exactly the calls the
operator makes (kube.Kube's methods), nothing of Kubernetes' behaviour beyond storing."""

from __future__ import annotations

import copy
from typing import Any

from stagingmerge_operator import conditions as c
from stagingmerge_operator.config import load
from stagingmerge_operator.expiry import Expirer
from stagingmerge_operator.kube import Refused
from stagingmerge_operator.reconcile import Reconciler
from stagingmerge_operator.status import StatusWriter

NOW = "2026-01-01T01:00:00Z"
CONFIG = load(
    {
        "STAGINGMERGE_DEFAULT_IMAGE": "ghcr.io/stagingmerge/merge:1",
        "STAGINGMERGE_ALLOW_LOCAL_PATHS": "true",
        "STAGINGMERGE_MAX_CONCURRENT_PER_MAIN": "1",
    }
)


class FakeKube:
    def __init__(self, *merges: dict[str, Any]) -> None:
        self.merges = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in merges}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.deleted: list[str] = []
        self.refuse_jobs = False
        self.refuse_deletes = False

    def get_merge(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.merges.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def list_merges(self, namespaces: Any) -> list[dict[str, Any]]:
        return [copy.deepcopy(m) for m in self.merges.values()]

    def patch_merge_status(self, merge: dict[str, Any], status: dict[str, Any]) -> None:
        meta = merge["metadata"]
        stored = self.merges[(meta["namespace"], meta["name"])]
        stored["status"] = {**(stored.get("status") or {}), **status}
        self.patches.append((meta["name"], dict(status)))

    def event(self, merge: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((merge["metadata"]["name"], type_, reason))

    def create_job(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if self.refuse_jobs:
            raise Refused(422, "quota exceeded")
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        created = key not in self.jobs
        self.jobs.setdefault(key, copy.deepcopy(dict(job, status={"active": 1})))
        return copy.deepcopy(self.jobs[key]), created

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get((namespace, name)))

    def list_jobs(self, namespaces: Any, selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(j) for j in self.jobs.values()]

    def termination_message(self, *args: Any, **kwargs: Any) -> str | None:
        return '{"outcome": "merged", "inserted": 3, "batches": 1}'

    def delete_merge(self, merge: dict[str, Any]) -> bool:
        if self.refuse_deletes:
            raise Refused(403, "forbidden")
        self.deleted.append(merge["metadata"]["name"])
        return True


def merge(name: str, created: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                     "creationTimestamp": created},
        "spec": {"main": {"uri": "/lake/main"}, "staging": {"uri": f"/lake/staging/{name}"}},
        "status": status,
    }  # fmt: skip


def test_an_unchanged_status_is_not_written_and_an_end_is_reported_once():
    kube = FakeKube(merge("m", "2026-01-01T00:00:00Z"))
    writer = StatusWriter(kube, lambda: NOW)  # type: ignore[arg-type]
    running = c.Outcome(c.RUNNING, c.R_MERGING, "merging")
    assert writer.write(kube.get_merge("ns", "m"), running, generation=1) is False
    assert writer.write(kube.get_merge("ns", "m"), running, generation=1) is False
    assert len(kube.patches) == 1  # the second write changed nothing
    done = c.Outcome(c.SUCCEEDED, c.R_MERGED, "merged")
    event = ("Normal", c.R_MERGED)
    assert writer.write(kube.get_merge("ns", "m"), done, generation=1, event=event) is True
    assert writer.write(kube.get_merge("ns", "m"), done, generation=1, event=event) is False
    assert kube.events == [("m", "Normal", c.R_MERGED)]


def test_a_refused_ttl_delete_is_said_once_and_not_retried():
    finished = merge("m", "2026-01-01T00:00:00Z", phase=c.SUCCEEDED,
                     completionTime="2026-01-01T00:00:00Z")  # fmt: skip
    finished["spec"]["ttlSecondsAfterFinished"] = 60
    kube = FakeKube(finished)
    kube.refuse_deletes = True
    expirer = Expirer(kube, lambda: NOW)  # type: ignore[arg-type]
    expirer.expire(kube.get_merge("ns", "m"))  # type: ignore[arg-type]
    expirer.expire(kube.get_merge("ns", "m"))  # type: ignore[arg-type]
    assert kube.events == [("m", "Warning", c.R_TTL_DELETE_REFUSED)]
    kube.refuse_deletes = False
    Expirer(kube, lambda: "2026-01-01T00:00:30Z").expire(kube.get_merge("ns", "m"))  # type: ignore[arg-type]
    assert kube.deleted == []  # not due yet
    Expirer(kube, lambda: NOW).expire(kube.get_merge("ns", "m"))  # type: ignore[arg-type]
    assert kube.deleted == ["m"]


def three_on_one_main() -> tuple[FakeKube, Reconciler]:
    """Three StagingMerges into one main with one slot: the first runs, two queue."""
    kube = FakeKube(
        merge("first", "2026-01-01T00:00:00Z"),
        merge("second", "2026-01-01T00:00:01Z"),
        merge("third", "2026-01-01T00:00:02Z"),
    )
    reconciler = Reconciler(kube, CONFIG, clock=lambda: NOW)  # type: ignore[arg-type]
    for name in ("first", "second", "third"):
        reconciler.reconcile("ns", name)
    return kube, reconciler


def test_a_run_that_ends_starts_the_next_queued_merge_from_the_reconcile_loop():
    """The first merge's Job completes; reconciling it writes Succeeded, and only then,
    outside the status write, the oldest merge queued on that main gets its Job."""
    kube, reconciler = three_on_one_main()
    phases = {n: kube.merges[("ns", n)]["status"]["phase"] for n in ("first", "second", "third")}
    assert phases == {"first": c.RUNNING, "second": c.QUEUED, "third": c.QUEUED}
    kube.jobs[("ns", "first-g1")]["status"] = {
        "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip

    reconciler.reconcile("ns", "first")

    assert kube.merges[("ns", "first")]["status"]["phase"] == c.SUCCEEDED
    assert kube.merges[("ns", "second")]["status"]["phase"] == c.RUNNING  # started next
    assert kube.merges[("ns", "third")]["status"]["phase"] == c.QUEUED
    assert set(kube.jobs) == {("ns", "first-g1"), ("ns", "second-g1")}


def test_a_queued_merge_that_ends_at_once_frees_the_slot_for_the_next():
    """The freed slot's merge is refused its Job (it ends Failed at once): the loop goes
    on to the next in line, without recursion and without holding the main's lock (the
    status write used to reconcile the queue from inside it)."""
    kube, reconciler = three_on_one_main()
    kube.jobs[("ns", "first-g1")]["status"] = {
        "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
    kube.refuse_jobs = True  # the second's Job is refused; the third's too

    reconciler.reconcile("ns", "first")

    status = {n: kube.merges[("ns", n)]["status"] for n in ("second", "third")}
    assert [s["phase"] for s in status.values()] == [c.FAILED, c.FAILED]
    reasons = [
        next(x["reason"] for x in s["conditions"] if x["type"] == "Succeeded")
        for s in status.values()
    ]
    assert reasons == [c.R_JOB_REFUSED, c.R_JOB_REFUSED]
