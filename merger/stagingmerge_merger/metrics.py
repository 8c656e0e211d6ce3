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

from .contract import TERMINATION_LOG


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
