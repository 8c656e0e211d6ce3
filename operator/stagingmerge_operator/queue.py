"""Which merges may run into a main table now (pure: the StagingMerges and Jobs in, the
decision out).

At most `max_concurrent_per_main` merges write into one main at a time; the others wait,
first come first served (by creation time, then namespace and name). A merge holds one of
its main's slots from the moment it has a Job until its run has ended (`holds_a_slot`);
a Job whose pods are still running holds one even after the Job ended, since a pod may
still be committing (`job_holds_a_slot`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import conditions as c
from .jobs import main_key
from .spec import InvalidSpecError, parse_spec


def holds_a_slot(merge: Mapping[str, Any]) -> bool:
    """A StagingMerge that has a Job and whose run has not ended: running on its main."""
    status = merge.get("status") or {}
    return bool(status.get("jobName")) and status.get("phase") not in c.TERMINAL_PHASES


def job_holds_a_slot(job: Mapping[str, Any]) -> bool:
    """A merge Job still running, or ended with a pod that may still commit."""
    state = c.job_state(job)
    return not state.finished or state.pods_running


def main_of(merge: Mapping[str, Any]) -> str | None:
    """The key of the main table a StagingMerge writes into (None: its spec is invalid)."""
    try:
        return main_key(parse_spec(merge.get("spec") or {}).main_uri)
    except InvalidSpecError:
        return None


def _age(merge: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = merge["metadata"]
    return (str(meta.get("creationTimestamp") or ""), meta["namespace"], meta["name"])


def next_in_line(
    merges: list[dict[str, Any]], limit: int, only: str | None = None
) -> set[tuple[str, str]]:
    """The queued StagingMerges that could start now: per main table, the oldest ones, as
    many as it has free slots (`limit` minus its merges running). `only`: one main's key."""
    running: dict[str, int] = {}
    queued: dict[str, list[tuple[str, str, str]]] = {}
    for merge in merges:
        status, meta = merge.get("status") or {}, merge["metadata"]
        if status.get("phase") in c.TERMINAL_PHASES or meta.get("deletionTimestamp"):
            continue
        key = main_of(merge)
        if key is None or (only is not None and key != only):
            continue
        if status.get("phase") == c.QUEUED:
            queued.setdefault(key, []).append(_age(merge))
        elif holds_a_slot(merge):
            running[key] = running.get(key, 0) + 1
    chosen: set[tuple[str, str]] = set()
    for key, waiting in queued.items():
        free = max(0, limit - running.get(key, 0))
        chosen.update((ns, name) for _, ns, name in sorted(waiting)[:free])
    return chosen


def blocker(
    me: Mapping[str, Any],
    key: str,
    limit: int,
    jobs: Iterable[Mapping[str, Any]],
    merges: Iterable[Mapping[str, Any]],
) -> str | None:
    """Why `me` waits for its main table (`key`), or None: its `limit` slots, taken by the
    merge Jobs of that main still running (`jobs`: those of that main), and, first come
    first served, by older StagingMerges (`merges`) still waiting for one."""
    uid = me["metadata"].get("uid")
    ahead: list[str] = []
    for job in jobs:
        if job_holds_a_slot(job):
            owner = (job["metadata"].get("ownerReferences") or [{}])[0].get("uid")
            if owner != uid:
                ahead.append(f"Job {job['metadata']['namespace']}/{job['metadata']['name']}")
    mine = _age(me)
    for other in merges:
        if len(ahead) >= limit:
            break
        if _age(other) >= mine or other["metadata"].get("deletionTimestamp"):
            continue
        status = other.get("status") or {}
        if status.get("phase") in c.TERMINAL_PHASES or status.get("jobName"):
            continue  # finished, or running (its Job was counted above)
        try:
            spec = parse_spec(other.get("spec") or {})
        except InvalidSpecError:
            continue
        if not spec.suspend and main_key(spec.main_uri) == key:
            om = other["metadata"]
            ahead.append(f"StagingMerge {om['namespace']}/{om['name']}")
    if len(ahead) < limit:
        return None
    if limit == 1:
        return ahead[0]
    return f"{', '.join(ahead[:3])}{' and others' if len(ahead) > 3 else ''} ({limit} at a time)"


def fleet_counts(merges: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per main table URI: (queued, running) StagingMerges."""
    counts: dict[str, list[int]] = {}
    for merge in merges:
        main = ((merge.get("spec") or {}).get("main") or {}).get("uri")
        if not isinstance(main, str):
            continue
        entry = counts.setdefault(main.rstrip("/"), [0, 0])
        if (merge.get("status") or {}).get("phase") == c.QUEUED:
            entry[0] += 1
        elif holds_a_slot(merge):
            entry[1] += 1
    return {main: (q, r) for main, (q, r) in counts.items()}
