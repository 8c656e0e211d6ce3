"""Crash points for the reliability tests: `STAGINGMERGE_FAILPOINT=name[:n]`.

When the variable names a point, the process kills itself with SIGKILL the n-th
time (default: first) it reaches that point: no cleanup, no flush, exactly like a
node dying. `STAGINGMERGE_PAUSE=name:PATH` instead stops at the point's first hit,
creates PATH.waiting and goes on once PATH.go exists (for tests that must act at an
exact moment of a run). Unset (always, in production) each costs one dict lookup.

Points: `batch-before-commit` (the batch's rows are read, nothing committed),
`batch-after-commit` (the batch's commit landed), `staging-delete` (the merge is
complete, the marker written and staging's Delta log deleted, its data files not),
`cluster-after-commit` (stagingmerge-cluster: a partition's rewrite committed),
`key-index-loaded` (a merge read main's key-range index, before reading main's keys).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .contract import FAILPOINT_ENV as ENV
from .contract import PAUSE_ENV

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    _pause(name)
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str) -> None:
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or wanted.partition(":")[0] != name or _hits.get(f"pause:{name}"):
        return
    _hits[f"pause:{name}"] = 1
    path = wanted.partition(":")[2]
    Path(f"{path}.waiting").touch()
    while not Path(f"{path}.go").exists():
        time.sleep(0.02)
