"""The merge's per-batch results, and where its metrics JSON goes.

The metrics themselves (MergeMetrics, the outcomes) are the contract with the operator
(contract.py). Their JSON goes to `--metrics-file`, by default the Kubernetes termination
message (`/dev/termination-log`, which the kubelet truncates at 4 KB), where the operator
reads it back onto the StagingMerge status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .contract import TERMINATION_LOG, MergeMetrics


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


def default_metrics_path() -> Path | None:
    """The termination log when running in a Kubernetes container, else nowhere."""
    return (
        TERMINATION_LOG
        if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK)
        else None
    )


def count(metrics: MergeMetrics, result: BatchResult) -> None:
    """Add one batch's result to the run's metrics."""
    metrics.batches += 1
    metrics.staging_rows += result.rows
    metrics.inserted += result.inserted
    metrics.skipped_existing += result.skipped_existing
    metrics.skipped_duplicates += result.skipped_duplicates
    metrics.concurrent_commits += result.concurrent_commits
    metrics.duplicates_repaired += result.repaired
    if result.version is not None:
        metrics.main_version_after = result.version
