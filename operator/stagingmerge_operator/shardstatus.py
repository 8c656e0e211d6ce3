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

from stagingmerge_merger import contract
from stagingmerge_merger.contract import Outcome, combined_fields


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
    """The merge's metrics from its shards' (None when no shard reported yet): each field
    combined as contract.MergeMetrics says (summed, the first, the smallest...); the
    fields of one shard only (which shard it was) are left out."""
    if not per_shard:
        return None
    reported = [contract.MergeMetrics.from_report(dict(m)) for m in per_shard]

    def present(name: str) -> list[Any]:
        return [v for m in reported if (v := getattr(m, name)) is not None]

    total: dict[str, Any] = {}
    for name in combined_fields(contract.SUM):
        total[name] = sum(int(v or 0) for v in present(name))
    for name in combined_fields(contract.MIN):
        total[name] = min(present(name), default=None)
    for name in combined_fields(contract.MAX):
        values = present(name)
        total[name] = max(values) if values else getattr(contract.MergeMetrics(), name)
    for name in combined_fields(contract.ANY):
        total[name] = any(present(name))
    for name in combined_fields(contract.FIRST):
        total[name] = getattr(reported[0], name)
    outcomes = [str(m.outcome) for m in reported]
    errors = [str(m.error) for m in reported if m.error]
    versions = sorted({int(v) for v in present("staging_version")})
    if len(versions) > 1:  # a writer added to staging while the shards ran
        outcomes.append(Outcome.STAGING_CHANGED)
        errors.insert(
            0,
            f"staging changed during the merge (its shards read versions"
            f" {', '.join(map(str, versions))}): staging is kept; change the spec to run again"
            " and merge the rest",
        )
    total.update(
        outcome=_worst(outcomes),
        error=errors[0] if errors else None,
        shards_reported=len(per_shard),
    )
    return total


def _worst(outcomes: Sequence[str]) -> str:
    return next((o for o in contract.WORST_FIRST if o in outcomes), Outcome.NOTHING_TO_MERGE)


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
        if metrics.get(index):
            m = contract.MergeMetrics.from_report(dict(metrics[index]))
            entry.update(
                inserted=int(m.inserted or 0),
                stagingRows=int(m.staging_rows or 0),
                batches=int(m.batches or 0),
                stagingDeleted=bool(m.staging_deleted),
            )
        result.append(entry)
    return result
