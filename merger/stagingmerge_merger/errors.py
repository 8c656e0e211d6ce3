"""Typed errors; each carries the process exit code the CLI leaves with.

Exit codes: 0 success or nothing to do; 1 a runtime failure worth retrying;
2 invalid input, never worth retrying (a Job's podFailurePolicy fails at once on it).
"""

from __future__ import annotations

from .contract import EXIT_INVALID, EXIT_RETRY, Reason


class MergeError(Exception):
    """A failure of the merge; `str()` is one actionable line."""

    exit_code = EXIT_RETRY
    reason: str = Reason.MERGE_FAILED


class InvalidInputError(MergeError):
    """The request can never succeed as given (bad URI, schema, keys, NULL keys...)."""

    exit_code = EXIT_INVALID
    reason = Reason.INVALID_INPUT


class StagingChangedError(MergeError):
    """A writer added to staging while it was merged: staging is kept, rerun to finish."""

    reason = "StagingChanged"


class MergeInterruptedError(MergeError):
    """SIGTERM/SIGINT arrived: stopped after the batch in flight committed."""

    reason = "Interrupted"


class StorageError(MergeError):
    """Object store or file system trouble that a retry may cure."""

    reason = "StorageError"


class StagingNotDeletedError(MergeError):
    """Main holds every staging row, but deleting staging failed: a rerun (which inserts
    nothing twice) finishes the deletion once the cause is fixed."""

    reason = Reason.STAGING_NOT_DELETED
