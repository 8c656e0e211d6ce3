"""A parallel merge's shards on the status (pure): per-shard state, summed metrics.

An Indexed Job reports its shards as `completedIndexes` / `failedIndexes` ("0-2,5"); each
shard's pod leaves its own metrics JSON as its termination message. The StagingMerge
shows one line per shard and the metrics of the whole merge: counts summed, the run's
duration that of the slowest shard, the versions the range they span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# metrics a merge's shards add up (stagingmerge_merger.metrics.MergeMetrics)
SUMMED = (
    "staging_rows",
    "inserted",
    "skipped_existing",
    "skipped_duplicates",
    "batches",
    "batches_planned",
    "staging_objects_deleted",
    "concurrent_commits",
    "duplicates_repaired",
    "commit_retries",
    "main_key_scans",
    "main_files_scanned",
    "main_key_bytes_read",
    "main_files_caught_up",
)
OUTCOME_ORDER = (
    "duplicates_left",
    "invalid_input",
    "failed",
    "staging_changed",
    "staging_not_deleted",
    "interrupted",
    "running",
)  # first wins


def parse_indexes(text: str | None) -> frozenset[int]:
    """`completedIndexes` / `failedIndexes` of an Indexed Job: "1,3-5" -> {1, 3, 4, 5}."""
    found: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return frozenset(found)


@dataclass(frozen=True)
class ShardPod:
    """What the pods of one index say: the phase of its latest pod, its best message."""

    phase: str | None
    message: str | None


def sum_metrics(per_shard: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The merge's metrics from its shards' (None when no shard reported yet)."""
    if not per_shard:
        return None
    total: dict[str, Any] = {k: sum(int(m.get(k) or 0) for m in per_shard) for k in SUMMED}
    befores = [
        m["main_version_before"] for m in per_shard if m.get("main_version_before") is not None
    ]
    afters = [m["main_version_after"] for m in per_shard if m.get("main_version_after") is not None]
    outcomes = [str(m.get("outcome")) for m in per_shard]
    errors = [str(m["error"]) for m in per_shard if m.get("error")]
    versions = sorted(
        {int(m["staging_version"]) for m in per_shard if m.get("staging_version") is not None}
    )
    if len(versions) > 1:  # a writer added to staging while the shards ran
        outcomes.append("staging_changed")
        errors.insert(
            0,
            f"staging changed during the merge (its shards read versions"
            f" {', '.join(map(str, versions))}): staging is kept; change the spec to run again"
            " and merge the rest",
        )
    total.update(
        outcome=_outcome(outcomes),
        main_version_before=min(befores) if befores else None,
        main_version_after=max(afters) if afters else None,
        main_created=any(m.get("main_created") for m in per_shard),
        main_files=max(int(m.get("main_files") or 0) for m in per_shard),
        staging_version=per_shard[0].get("staging_version"),
        staging_deleted=any(m.get("staging_deleted") for m in per_shard),
        duration_seconds=max(float(m.get("duration_seconds") or 0) for m in per_shard),
        dry_run=any(m.get("dry_run") for m in per_shard),
        shards_reported=len(per_shard),
        error=errors[0] if errors else None,
    )
    return total


def _outcome(outcomes: Sequence[str]) -> str:
    for bad in OUTCOME_ORDER:
        if bad in outcomes:
            return bad
    if "merged" in outcomes:
        return "merged"
    if "dry_run" in outcomes:
        return "dry_run"
    return "nothing_to_merge"


def shard_statuses(
    count: int,
    completed: frozenset[int],
    failed: frozenset[int],
    pods: Mapping[int, ShardPod],
    metrics: Mapping[int, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """status.shards: one entry per index, in index order."""
    result = []
    for index in range(count):
        if index in completed:
            state = "Succeeded"
        elif index in failed:
            state = "Failed"
        elif (pods.get(index) or ShardPod(None, None)).phase in ("Running", "Failed"):
            state = "Running"  # a failed pod of an index not failed for good: it retries
        else:
            state = "Pending"
        entry: dict[str, Any] = {"index": index, "state": state}
        m = metrics.get(index)
        if m:
            entry.update(
                inserted=int(m.get("inserted") or 0),
                stagingRows=int(m.get("staging_rows") or 0),
                batches=int(m.get("batches") or 0),
                stagingDeleted=bool(m.get("staging_deleted")),
            )
        result.append(entry)
    return result
