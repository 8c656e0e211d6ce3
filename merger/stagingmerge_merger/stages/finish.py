"""The last stage: staging is deleted once, and only once, its rows are all in main.

Staging is kept when a writer added to it during the merge (its version moved: the new
rows are merged by a rerun). A shard records that it is done in staging's shard ledger;
staging is deleted by the shard that finishes last (shards.py). Deletion writes the
completion marker first, then removes every object: a run that dies half-way leaves a
marker that the next run reads (`merged_before`) to finish the deletion without merging
anything again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog

from .. import shards
from ..contract import MergeMetrics, Outcome
from ..delta import Table
from ..delta import log as deltalog
from ..errors import MergeError, StagingChangedError, StagingNotDeletedError
from ..request import MergeRequest
from ..storage import Prefix, PrefixState

log = structlog.get_logger("stagingmerge.merge")


def merged_before(req: MergeRequest, prefix: Prefix, state: PrefixState) -> bool:
    """Whether an earlier run merged this staging into this main and did not finish
    deleting it: the completion marker names this main, and staging has no commit beyond
    the version it merged (a half-deleted log holds only some of them, or none)."""
    marker = state.marker
    if marker is None:
        return False
    if not state.has_delta_log:
        return True
    return _marks(req, prefix, marker)


def _marks(req: MergeRequest, prefix: Prefix, marker: Mapping[str, Any]) -> bool:
    merged = marker.get("staging_version")
    if not isinstance(merged, int) or marker.get("main") != str(req.main):
        return False
    return all(v <= merged for v in deltalog.commit_versions(prefix))


def finish(
    req: MergeRequest, staging: Table, prefix: Prefix, plan_id: str, metrics: MergeMetrics
) -> None:
    """Delete staging, unless a writer added to it while it was merged (or, for a shard,
    unless other shards have yet to finish)."""
    read = staging.version
    latest = staging.latest_version()
    if latest != read:
        metrics.outcome = Outcome.STAGING_CHANGED
        raise StagingChangedError(
            f"staging {req.staging} changed during the merge (version {read} -> "
            f"{latest}); it is kept, rerun to merge the new rows"
        )
    if req.sharded:
        assert req.shard is not None
        done = shards.Ledger(prefix, read, req.shard).finish(
            plan_id,
            {
                "staging_version": read,
                "staging_rows": metrics.staging_rows,
                "inserted": metrics.inserted,
                "finished_at": time.time(),
            },
        )
        metrics.shards_done = done.done
        if not done.deletes:
            log.info(
                "shard done; staging is deleted by the last shard to finish"
                if done.deleter is None
                else f"shard done; shard {done.deleter} deletes staging",
                staging=str(req.staging),
                shard=str(req.shard),
                shards_done=done.done,
            )
            return
    delete_staging(req, prefix, read, metrics)


def delete_staging(
    req: MergeRequest, prefix: Prefix, version: int | None, metrics: MergeMetrics
) -> None:
    """Delete staging, the merge being complete: the marker first (`version` merged;
    None when an earlier run wrote it), then every object. A failure leaves main as it
    is, complete, and ends the run with its own outcome and exit 1."""
    if not req.deletes:
        return
    try:
        if version is not None:
            prefix.write_marker(
                {"main": str(req.main), "staging_version": version, "merged_at": time.time()}
            )
        deleted = prefix.delete_all()
    except MergeError as exc:
        metrics.outcome = Outcome.STAGING_NOT_DELETED
        raise StagingNotDeletedError(
            f"main {req.main} holds every row of staging, but staging could not be"
            f" deleted ({exc}); fix the cause and rerun: it inserts nothing twice and"
            " finishes the deletion"
        ) from exc
    metrics.staging_deleted = True
    metrics.staging_objects_deleted = deleted
    log.info("deleted staging", staging=str(req.staging), objects=deleted)
