"""The merge use case: staging -> main, exactly once, as the run's stages in order.

1. **plan** (stages/plan.py): open and audit both tables, refuse bad input before
   anything is written, cut staging's key space into spans whose keys fit in memory (a
   shard: agree on the cuts with the others, plan its own span);
2. **repairs owed** by an earlier run that could not finish them (stages/commits.py);
3. **each span** (stages/span.py): its staging keys, main's keys within their ranges,
   the anti-join; its new rows streamed, filtered, a repeated key's winner chosen, cut
   into commits (stages/stream.py), each under the concurrent-writer guard
   (stages/commits.py: catch-up with other writers, late commits, repair);
4. **finish** (stages/finish.py): staging unchanged, the completion records, deletion.

All copies of a key are in one span, so the winner, the counts and a dry run's counts
never depend on batch boundaries, file order or a crash; a rerun sees what earlier runs
wrote (the anti-join) and inserts the rest.

The stages share no state but what they hand each other (frozen: the request, the plan,
one span's work) and the run's report, `MergeMetrics`, which every stage fills in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import structlog

from . import reporting
from .contract import MergeMetrics, Outcome
from .delta import Table
from .errors import MergeInterruptedError
from .keycost import warn_if_unclustered
from .reporting import BatchResult
from .request import MergeRequest
from .stages import commits, finish, span, stream
from .stages import plan as planning
from .storage import Prefix, redact_options

__all__ = ["MergeRequest", "NoProgress", "Progress", "run_merge"]

log = structlog.get_logger("stagingmerge.merge")


class Progress(Protocol):
    def start(self, batches: int, rows: int) -> None: ...
    def batch_done(self, result: BatchResult, metrics: MergeMetrics) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, batches: int, rows: int) -> None:
        pass

    def batch_done(self, result: BatchResult, metrics: MergeMetrics) -> None:
        pass

    def close(self) -> None:
        pass


def run_merge(
    request: MergeRequest,
    metrics: MergeMetrics,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> MergeMetrics:
    """Merge staging into main; fill `metrics` as it goes (so a failure still reports them).

    Raises MergeError subclasses; their `exit_code` is what the CLI exits with.
    """
    started = time.monotonic()
    progress = progress or NoProgress()
    metrics.dry_run = request.dry_run
    try:
        _Run(request, metrics, progress, should_stop).run()
    finally:
        metrics.duration_seconds = time.monotonic() - started
        progress.close()
    return metrics


class _Run:
    """One run: the stages in order, and the batches' results reported as they come."""

    def __init__(
        self,
        request: MergeRequest,
        metrics: MergeMetrics,
        progress: Progress,
        should_stop: Callable[[], bool],
    ) -> None:
        self.req, self.metrics = request, metrics
        self.progress, self.should_stop = progress, should_stop

    def run(self) -> None:
        req, metrics = self.req, self.metrics
        log.info(
            "merge starting",
            main=str(req.main),
            staging=str(req.staging),
            keys=",".join(req.keys),
            batch_rows=req.batch_rows,
            dry_run=req.dry_run,
            storage_options=redact_options(req.storage_options),
        )
        planning.check_locations(req)
        if req.shard is not None:
            metrics.shard = str(req.shard)
        prefix = Prefix(req.staging, req.storage_options)
        state = prefix.state()
        if state.exists and finish.merged_before(req, prefix, state):
            log.info(
                "an earlier run merged staging but did not finish deleting it",
                staging=str(req.staging),
                marker=state.marker,
            )
            finish.delete_staging(req, prefix, None, metrics)
            metrics.outcome = Outcome.NOTHING_TO_MERGE
            return
        staging = planning.open_staging(req, prefix, state)
        if staging is None:
            metrics.outcome = Outcome.NOTHING_TO_MERGE
            return
        metrics.staging_version = staging.version

        plan = planning.plan(req, staging, metrics)  # 1. every refusal, then the spans
        main = self._writer_for(plan)
        if not req.dry_run:
            main.repair_owed()  # 2.
        if plan.rows == 0:
            log.info(
                "nothing to merge: staging is empty"
                if plan.spans or not req.sharded
                else "nothing to merge in this shard's span of the key space",
                staging=str(req.staging),
            )
            metrics.outcome = Outcome.NOTHING_TO_MERGE
        else:
            self._merge_spans(staging, plan, main)  # 3.
            metrics.outcome = Outcome.DRY_RUN if req.dry_run else Outcome.MERGED
        main.save_index()  # the key-range index entries made on the way (never in a dry run)
        if req.deletes:
            finish.finish(req, staging, prefix, plan.plan_id, metrics)  # 4.

    def _writer_for(self, plan: planning.Plan) -> commits.MainWriter:
        """main from here on: what is read of it and committed to it (commits.py)."""
        req = self.req
        goal = commits.Target(
            main=req.main,
            staging=req.staging,
            options=req.storage_options,
            keys=req.keys,
            key_types=plan.key_types,
            key_schema=plan.key_schema,
            create_as=plan.create_as,
            partition_by=plan.partition_by,
            shard=None if req.shard is None else str(req.shard),
            key_index=req.key_index,
            dry_run=req.dry_run,
        )
        return commits.MainWriter(
            goal,
            plan.main,
            plan.target,
            self.metrics,
            lambda: planning.open_main(req),
            plan.staging_columns,
        )

    def _merge_spans(self, staging: Table, plan: planning.Plan, main: commits.MainWriter) -> None:
        metrics, batch_rows = self.metrics, self.req.batch_rows
        metrics.batches_planned = stream.batch_count(plan.rows, batch_rows)
        self.progress.start(metrics.batches_planned, plan.rows)
        rows_left = plan.rows
        for index, where in enumerate(plan.spans):
            work = span.SpanWork(
                index + 1, where, plan.key_types, plan.keys[index] if plan.keys else None
            )
            rows_left -= span.merge_span(
                self.req, work, staging, main, metrics, self._record, self._stop_if_asked
            )
            # what is known now: the batches done, and an estimate for the rest
            metrics.batches_planned = metrics.batches + (
                stream.batch_count(rows_left, batch_rows) if rows_left else 0
            )
        self.progress.close()  # before the clean-up logs; run_merge closes it again, harmlessly
        if main.main is not None:
            metrics.main_version_after = main.main.version
        warn_if_unclustered(metrics, self.req.main)

    def _record(self, result: BatchResult) -> None:
        result = replace(result, index=self.metrics.batches)
        reporting.count(self.metrics, result)
        self.progress.batch_done(result, self.metrics)

    def _stop_if_asked(self) -> None:
        if self.should_stop():
            self.metrics.outcome = Outcome.INTERRUPTED
            raise MergeInterruptedError(
                f"stopped by a signal after {self.metrics.batches} batches;"
                " staging is kept, rerun to merge the rest"
            )
