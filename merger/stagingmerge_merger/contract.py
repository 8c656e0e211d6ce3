"""What the merge container and the operator agree on, in one place.

The merge reports a run as one JSON object (MergeMetrics) in its container's termination
message; the operator reads it back into the StagingMerge's status and conditions, and
starts the merge with the environment variables and defaults below. Both packages, the
CRD (tests/chart/test_crd.py checks its defaults against these) and the tests import
this module; nothing here is typed anywhere else.

Standard library only: the operator imports it without pyarrow or deltalake.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

# --- exit codes ------------------------------------------------------------------------

EXIT_OK = 0
EXIT_RETRY = 1  # a failure a rerun may cure
EXIT_INVALID = 2  # invalid input, never worth retrying: a Job's podFailurePolicy fails at once


# --- outcomes ----------------------------------------------------------------------------


class Outcome(StrEnum):
    """`outcome` in the metrics JSON: how a run ended."""

    MERGED = "merged"
    NOTHING_TO_MERGE = "nothing_to_merge"
    DRY_RUN = "dry_run"
    INTERRUPTED = "interrupted"  # SIGTERM: stopped after the batch in flight
    STAGING_CHANGED = "staging_changed"  # a writer added to staging meanwhile: kept
    # merged (main is complete), but staging could not be deleted: a rerun finishes it
    STAGING_NOT_DELETED = "staging_not_deleted"
    # main holds keys twice that the concurrent-writer repair could not rewrite
    DUPLICATES_LEFT = "duplicates_left"
    FAILED = "failed"
    INVALID_INPUT = "invalid_input"
    RUNNING = "running"  # the value until the run ends (a crash leaves it)
    # stagingmerge-cluster's
    CLUSTERED = "clustered"
    CONFLICTED = "conflicted"  # a writer rewrote a partition meanwhile: that one is skipped
    NOTHING_TO_DO = "nothing_to_do"
    # stagingmerge-index's (and nothing_to_do, dry_run)
    INDEXED = "indexed"


EXIT_CODE: dict[Outcome, int] = {
    Outcome.MERGED: EXIT_OK,
    Outcome.NOTHING_TO_MERGE: EXIT_OK,
    Outcome.DRY_RUN: EXIT_OK,
    Outcome.CLUSTERED: EXIT_OK,
    Outcome.CONFLICTED: EXIT_OK,
    Outcome.NOTHING_TO_DO: EXIT_OK,
    Outcome.INDEXED: EXIT_OK,
    Outcome.INTERRUPTED: EXIT_RETRY,
    Outcome.STAGING_CHANGED: EXIT_RETRY,
    Outcome.STAGING_NOT_DELETED: EXIT_RETRY,
    Outcome.DUPLICATES_LEFT: EXIT_RETRY,
    Outcome.FAILED: EXIT_RETRY,
    Outcome.RUNNING: EXIT_RETRY,
    Outcome.INVALID_INPUT: EXIT_INVALID,
}

# outcomes only the maintenance commands report (stagingmerge-cluster, stagingmerge-index)
MAINTENANCE_OUTCOMES = frozenset(
    {Outcome.CLUSTERED, Outcome.CONFLICTED, Outcome.NOTHING_TO_DO, Outcome.INDEXED}
)

# A sharded merge's outcome is its worst shard's: the first of these any shard reports,
# else merged, else dry run, else nothing to merge.
WORST_FIRST = (
    Outcome.DUPLICATES_LEFT,
    Outcome.INVALID_INPUT,
    Outcome.FAILED,
    Outcome.STAGING_CHANGED,
    Outcome.STAGING_NOT_DELETED,
    Outcome.INTERRUPTED,
    Outcome.RUNNING,
    Outcome.MERGED,
    Outcome.DRY_RUN,
    Outcome.NOTHING_TO_MERGE,
)


class Reason(StrEnum):
    """The StagingMerge's `Succeeded` condition reasons a run's outcome decides (the
    operator's others, such as Queued or JobRefused, are its own); also the `reason` of
    the merge's error log line."""

    MERGED = "Merged"
    NOTHING_TO_MERGE = "NothingToMerge"
    INVALID_INPUT = "InvalidInput"
    MERGE_FAILED = "MergeFailed"
    STAGING_NOT_DELETED = "StagingNotDeleted"
    DUPLICATES_LEFT = "DuplicatesLeft"


REASON: dict[Outcome, Reason] = {
    Outcome.MERGED: Reason.MERGED,
    Outcome.DRY_RUN: Reason.MERGED,
    Outcome.NOTHING_TO_MERGE: Reason.NOTHING_TO_MERGE,
    Outcome.INVALID_INPUT: Reason.INVALID_INPUT,
    Outcome.STAGING_NOT_DELETED: Reason.STAGING_NOT_DELETED,
    Outcome.DUPLICATES_LEFT: Reason.DUPLICATES_LEFT,
}  # any other outcome of a failed run: MergeFailed


# --- the metrics JSON ------------------------------------------------------------------

# how a sharded merge's metrics combine its shards' (the `combine` of each field)
SUM, MIN, MAX, ANY, FIRST, WORST, OWN = "sum", "min", "max", "any", "first", "worst", "own"


def _f(default: Any, combine: str) -> Any:
    return field(default=default, metadata={"combine": combine})


@dataclass
class MergeMetrics:
    """What one run did: the JSON object the merge leaves and the operator reads.
    `staging_rows == inserted + skipped_existing + skipped_duplicates` for the batches
    that ran. `combine` says how an Indexed Job's shards add up (OWN: per shard only)."""

    outcome: str = _f(Outcome.RUNNING, WORST)
    staging_rows: int = _f(0, SUM)
    inserted: int = _f(0, SUM)
    skipped_existing: int = _f(0, SUM)
    skipped_duplicates: int = _f(0, SUM)
    batches: int = _f(0, SUM)
    batches_planned: int = _f(0, SUM)
    main_version_before: int | None = _f(None, MIN)
    main_version_after: int | None = _f(None, MAX)
    main_created: bool = _f(False, ANY)
    staging_version: int | None = _f(None, FIRST)
    staging_deleted: bool = _f(False, ANY)
    staging_objects_deleted: int = _f(0, SUM)
    concurrent_commits: int = _f(0, SUM)
    duplicates_repaired: int = _f(0, SUM)
    commit_retries: int = _f(0, SUM)
    # our commits the store applied but whose answer was lost: the retry committed the same
    # files again at the next version (counted once, and not among concurrent_commits)
    commit_answers_lost: int = _f(0, SUM)
    # main-side cost (keycost.py): scans of main's key columns, the files they could not
    # skip (summed over scans), the key-column bytes of those files, main's file count
    main_key_scans: int = _f(0, SUM)
    main_files_scanned: int = _f(0, SUM)
    main_key_bytes_read: int = _f(0, SUM)
    main_files: int = _f(0, MAX)
    main_files_caught_up: int = _f(0, SUM)  # other writers' new files read before our commits
    # the key-range index (rangeindex.py): files a scan's statistics could not skip that the
    # index did (summed over scans), and the bytes of index files read
    main_files_pruned_by_index: int = _f(0, SUM)
    key_index_bytes_read: int = _f(0, SUM)
    key_index_entries_written: int = _f(0, SUM)  # for main's files read that had none
    # a sharded run (--shard i/N): which shard, and how many had recorded done when it ended
    shard: str | None = _f(None, OWN)
    shards_done: int = _f(0, OWN)
    duration_seconds: float = _f(0.0, MAX)  # a sharded merge takes its slowest shard's
    dry_run: bool = _f(False, ANY)
    error: str | None = _f(None, FIRST)

    def to_json(self) -> str:
        """One line of JSON under MAX_REPORT_BYTES (the error message is cut to fit)."""
        data = asdict(self)
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return fit_json(data)

    @classmethod
    def from_report(cls, data: dict[str, Any]) -> MergeMetrics:
        """The metrics of a report (fields it lacks keep their defaults; fields of another
        version of the merge are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def combined_fields(combine: str) -> tuple[str, ...]:
    """The metrics fields a sharded merge combines with `combine`."""
    return tuple(f.name for f in fields(MergeMetrics) if f.metadata["combine"] == combine)


def parse_report(message: str | None) -> dict[str, Any] | None:
    """The metrics JSON from a termination message: its last line that is a JSON object
    (None if there is none; the kubelet may have cut what came before)."""
    if not message:
        return None
    for line in reversed(message.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


TERMINATION_LOG = Path("/dev/termination-log")  # the metrics' default file in a container
MAX_REPORT_BYTES = 4095  # the kubelet keeps 4096 bytes of it: the line and its newline
CUT = " [...]"


def fit_json(data: dict[str, Any], limit: int = MAX_REPORT_BYTES) -> str:
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


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# --- defaults ----------------------------------------------------------------------------

DEFAULT_KEYS = ("source_url", "cert_index")
BATCH_ROWS = 250_000  # rows per Delta commit
KEY_MEMORY = 512 << 20  # bytes of keys one span may hold; ~2 M CT keys: sized for a 2 GiB pod
KEY_SAMPLE_ROWS = 1_000_000  # planning keeps every key of a staging this small
MAX_SHARDS = 1000  # --shard i/N takes N up to this (the CRD's parallelism maximum)


# --- the environment of a merge ------------------------------------------------------------

# storage options as a JSON object (the operator's Secret, mounted as this variable)
STORAGE_OPTIONS_ENV = "STAGINGMERGE_STORAGE_OPTIONS"
# the prefixes staging may be deleted under (the operator's allow-list)
ALLOWED_PREFIXES_ENV = "STAGINGMERGE_ALLOWED_PREFIXES"
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"  # what Kubernetes gives an Indexed Job's pod
UNCLUSTERED_WARN_BYTES_ENV = "STAGINGMERGE_UNCLUSTERED_WARN_BYTES"
INDEX_BEHIND_BYTES_ENV = "STAGINGMERGE_INDEX_BEHIND_BYTES"  # keycost.index_behind_threshold
# crash and pause points, for tests only (failpoints.py)
FAILPOINT_ENV = "STAGINGMERGE_FAILPOINT"
PAUSE_ENV = "STAGINGMERGE_PAUSE"


# --- what a merge keeps in staging ---------------------------------------------------------

COMPLETION_MARKER = "_stagingmerge_merged.json"  # written before staging is deleted
WORK_DIR = "_stagingmerge"  # beside _delta_log; Delta readers and VACUUM ignore it
REPAIRS_DIR = f"{WORK_DIR}/repairs"  # repairs owed to main (repairs.py)
SHARDS_DIR = f"{WORK_DIR}/shards"  # the shards' agreed plan and done records (shards.py)
KEY_INDEX_DIR = f"{WORK_DIR}/keyindex"  # in main: the key-range index (rangeindex.py)
