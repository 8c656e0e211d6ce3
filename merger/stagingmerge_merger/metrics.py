"""The merge's counters, and the one JSON object they become.

The JSON goes to `--metrics-file`, by default the Kubernetes termination message
(`/dev/termination-log`, which the kubelet truncates at 4 KB), where the operator
reads it back onto the StagingMerge status.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TERMINATION_LOG = Path("/dev/termination-log")
MAX_BYTES = 4095  # the kubelet keeps 4096 bytes: the line and its newline
CUT = " [...]"

# outcome values
MERGED = "merged"
NOTHING_TO_MERGE = "nothing_to_merge"
DRY_RUN = "dry_run"
INTERRUPTED = "interrupted"
STAGING_CHANGED = "staging_changed"
# merged (main is complete), but staging could not be deleted: exit 1, a rerun finishes it
STAGING_NOT_DELETED = "staging_not_deleted"
# main holds keys twice that the concurrent-writer repair could not rewrite: exit 1
DUPLICATES_LEFT = "duplicates_left"
FAILED = "failed"
INVALID_INPUT = "invalid_input"
RUNNING = "running"


@dataclass(frozen=True)
class BatchResult:
    """What one batch (one commit, or what a dry run would commit) did."""

    index: int
    rows: int
    inserted: int
    skipped_existing: int
    skipped_duplicates: int
    version: int | None
    seconds: float
    concurrent_commits: int = 0
    repaired: int = 0


@dataclass
class MergeMetrics:
    """What one run did. `staging_rows == inserted + skipped_existing + skipped_duplicates`
    for the batches that ran."""

    outcome: str = RUNNING
    staging_rows: int = 0
    inserted: int = 0
    skipped_existing: int = 0
    skipped_duplicates: int = 0
    batches: int = 0
    batches_planned: int = 0
    main_version_before: int | None = None
    main_version_after: int | None = None
    main_created: bool = False
    staging_version: int | None = None
    staging_deleted: bool = False
    staging_objects_deleted: int = 0
    concurrent_commits: int = 0
    duplicates_repaired: int = 0
    commit_retries: int = 0
    # main-side cost (mainfiles.py): scans of main's key columns, the files they could not
    # skip (summed over scans), the key-column bytes of those files, main's file count
    main_key_scans: int = 0
    main_files_scanned: int = 0
    main_key_bytes_read: int = 0
    main_files: int = 0
    main_files_caught_up: int = 0  # other writers' new files read before our commits
    # a sharded run (--shard i/N): which shard, and how many had recorded done when it ended
    shard: str | None = None
    shards_done: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False
    error: str | None = None

    def to_json(self) -> str:
        """One line of JSON under MAX_BYTES (the error message is cut to fit)."""
        data = asdict(self)
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return fit_json(data)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def fit_json(data: dict[str, Any], limit: int = MAX_BYTES) -> str:
    """`data` as one line of JSON of at most `limit` UTF-8 bytes: a long `error` keeps its
    start (what went wrong comes first in every message) and ends in " [...]". The cut is
    measured on the encoded JSON, so escapes and multi-byte characters cannot overflow."""
    text = _dump(data)
    error = data.get("error")
    if len(text.encode()) <= limit or not isinstance(error, str):
        return text
    low, high = 0, len(error)  # the longest prefix that fits: binary search on its length
    while low < high:
        middle = (low + high + 1) // 2
        if len(_dump({**data, "error": error[:middle] + CUT}).encode()) <= limit:
            low = middle
        else:
            high = middle - 1
    return _dump({**data, "error": error[:low] + CUT})


def default_metrics_path() -> Path | None:
    """The termination log when running in a Kubernetes container, else nowhere."""
    return (
        TERMINATION_LOG
        if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK)
        else None
    )
