"""Crash points for the reliability tests: `STAGINGMERGE_FAILPOINT=name[:n]`.

When the variable names a point, the process kills itself with SIGKILL the n-th
time (default: first) it reaches that point: no cleanup, no flush, exactly like a
node dying. Unset (always, in production) it costs one dict lookup per batch.

Points: `batch-before-commit` (the batch's rows are read, nothing committed),
`batch-after-commit` (the batch's commit landed), `staging-delete` (the merge is
complete, the marker written and staging's Delta log deleted, its data files not).
"""

from __future__ import annotations

import os
import signal

ENV = "STAGINGMERGE_FAILPOINT"
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
