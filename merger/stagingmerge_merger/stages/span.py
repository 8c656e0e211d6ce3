"""Stage 2, one span: its keys against main's, once; then its new rows, commit by commit.

1. staging's keys in the span: from the plan when it kept every key, else one scan;
2. main's keys within the ranges of those keys, at main's latest version (commits.py);
3. the anti-join: the keys main lacks are the ones to insert (keysets.py);
4. staging's rows of the span streamed once, filtered to those keys, a repeated key's
   winning copy chosen, cut into commits of at most batch_rows rows (stream.py);
5. each commit under the concurrent-writer guard (commits.py).

A commit conflict (another writer's commit that delta-rs cannot reconcile) reads the span
again, up to MAX_COMMIT_ATTEMPTS times; the rows already committed are then found in main
like any other writer's. A dry run stops after step 3 and counts the commits a real run
would make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
import structlog

from .. import keysets, keyspace
from ..contract import MergeMetrics
from ..delta import CommitConflictError, Table
from ..errors import MergeError
from ..reporting import BatchResult
from ..request import MergeRequest
from . import commits, stream

log = structlog.get_logger("stagingmerge.merge")

MAX_COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class SpanWork:
    """One span of the plan: where it is in the key space and, when planning kept
    them, staging's keys in it."""

    number: int  # from 1, for messages
    span: keyspace.Span
    key_types: dict[str, str]
    keys: pa.Table | None = None


def merge_span(
    req: MergeRequest,
    work: SpanWork,
    staging: Table,
    main: commits.MainWriter,
    metrics: MergeMetrics,
    record: Callable[[BatchResult], None],
    stop_if_asked: Callable[[], None],
) -> int:
    """Merge one span; `record` is called for each commit (or, in a dry run, each commit
    a real run would make). Returns the span's staging rows."""
    names = req.keys
    where = keyspace.span_predicate(names, work.key_types, work.span)
    keys = work.keys if work.keys is not None else staging.scan(names, where)
    # staging's keys counted first (a sort of integers, a fraction of main's scan),
    # so their ranges come from the count and the scan has both cores to itself
    counted = keysets.count(keys, names)
    ranges = counted.ranges()
    # one tally across attempts: the rows a retry finds in main were committed by us
    tally = stream.SpanTally(rows=keys.num_rows, distinct=len(counted))
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        # a retry looks for a missing main again: another writer may have created it
        base = main.refresh(reopen=attempt > 1)
        present = main.keys_within(ranges)
        wanted = counted.without(present, names)
        if len(wanted) == 0 or req.dry_run:
            _count_without_commits(req, tally, len(wanted), main, record, stop_if_asked)
            return tally.rows
        repeated = counted.repeated  # those of the keys to insert, held back
        if repeated.num_rows:
            repeated = repeated.filter(wanted.mask(repeated))
        rows = stream.rows_to_insert(
            staging.stream(main.target.names, where), wanted, repeated, names, req.first_by
        )
        try:
            main.commit_span(
                stream.Pieces(rows, req.batch_rows),
                commits.SpanKeys(wanted, base),
                tally,
                record,
                stop_if_asked,
            )
            return tally.rows
        except CommitConflictError as exc:
            metrics.commit_retries += 1
            log.warning(
                "commit conflict; reading the span again",
                span=work.number,
                attempt=attempt,
                error=str(exc),
            )
    raise MergeError(
        f"span {work.number}: commits to {req.main} failed {MAX_COMMIT_ATTEMPTS} times"
        " on conflicts with other writers; rerun"
    )


def _count_without_commits(
    req: MergeRequest,
    tally: stream.SpanTally,
    new: int,
    main: commits.MainWriter,
    record: Callable[[BatchResult], None],
    stop_if_asked: Callable[[], None],
) -> None:
    """A dry run, or a span with nothing new: the batches a real run would make."""
    count = stream.batch_count(new, req.batch_rows)
    for number in range(count):
        stop_if_asked()
        result = tally.piece(min(req.batch_rows, new - number * req.batch_rows))
        if main.main is not None:
            result = replace(result, version=main.main.version)
        record(tally.last(result) if number == count - 1 else result)
