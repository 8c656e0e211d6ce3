"""The merge use case: staging -> main, exactly once, batch by batch.

For each batch of staging rows (whole files or row groups, in a fixed order):

1. read only the key columns of the batch and keep the first copy of each key;
2. scan only main's key columns, restricted by a predicate built from the batch's
   key ranges (delta-rs prunes files and row groups with it), at version *v*;
3. anti-join: the keys main does not hold are the ones to insert;
4. stream those rows, and only those, from staging into one append commit;
5. if the commit landed at a version other than *v + 1*, other writers committed
   in between: re-check the inserted keys against main and, should one now be
   there twice, rewrite it back to the single copy that was there first.

A batch's cost grows with the batch (and with the part of main whose key ranges
overlap it), not with main; memory holds one batch's keys plus a few thousand
whole rows. Reruns are idempotent because step 3 sees what earlier runs wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import pyarrow as pa
import structlog

from . import __version__, failpoints, keysets, plan
from .delta import CommitConflictError, ReadUnit, Table, TableNotFoundError
from .errors import InvalidInputError, MergeError, MergeInterruptedError, StagingChangedError
from .metrics import (
    DRY_RUN,
    INTERRUPTED,
    MERGED,
    NOTHING_TO_MERGE,
    STAGING_CHANGED,
    MergeMetrics,
)
from .storage import Location, Prefix, check_deletable, redact_options

log = structlog.get_logger("stagingmerge.merge")

MAX_COMMIT_ATTEMPTS = 5
REPAIR_ATTEMPTS = 10  # a leftover duplicate is worse than a slow batch
REPAIR_CHUNK = 500  # keys per rewrite predicate when repairing concurrent duplicates


@dataclass(frozen=True)
class MergeRequest:
    main: Location
    staging: Location
    keys: tuple[str, ...] = plan.DEFAULT_KEYS
    batch_rows: int = 250_000
    keep_staging: bool = False
    dry_run: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    partition_by: tuple[str, ...] = ()
    allowed_prefixes: tuple[Location, ...] = ()


@dataclass(frozen=True)
class BatchResult:
    index: int
    rows: int
    inserted: int
    skipped_existing: int
    skipped_duplicates: int
    version: int | None
    seconds: float
    concurrent_commits: int = 0
    repaired: int = 0


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
        _Merge(request, metrics, progress, should_stop).run()
    finally:
        metrics.duration_seconds = time.monotonic() - started
        progress.close()
    return metrics


class _Merge:
    def __init__(
        self,
        request: MergeRequest,
        metrics: MergeMetrics,
        progress: Progress,
        should_stop: Callable[[], bool],
    ) -> None:
        self.req = request
        self.metrics = metrics
        self.progress = progress
        self.should_stop = should_stop
        self.options = request.storage_options
        self.deletes = not (request.keep_staging or request.dry_run)
        self.main: Table | None = None
        self.main_before: Table | None = None  # main as the run found it, opened lazily
        self.inserted_ranges: list[plan.KeyRange] = []
        self.pending_keys: pa.Table | None = None  # dry run: keys it would have inserted

    # --- the run ---------------------------------------------------------------------

    def run(self) -> None:
        req = self.req
        log.info(
            "merge starting",
            main=str(req.main),
            staging=str(req.staging),
            keys=",".join(req.keys),
            batch_rows=req.batch_rows,
            dry_run=req.dry_run,
            storage_options=redact_options(self.options),
        )
        if req.staging.overlaps(req.main):
            raise InvalidInputError(
                f"staging {req.staging} and main {req.main} are the same location"
                " or one is inside the other"
            )
        if self.deletes:
            check_deletable(req.staging, req.main, req.allowed_prefixes)
        prefix = Prefix(req.staging, self.options)
        staging = self._open_staging(prefix)
        if staging is None:
            self.metrics.outcome = NOTHING_TO_MERGE
            return
        units, key_types, key_schema, target = self._prepare(staging)
        if not units:
            log.info("nothing to merge: staging is empty", staging=str(req.staging))
            self.metrics.outcome = NOTHING_TO_MERGE
        else:
            self._merge_all(staging, units, key_types, key_schema, target)
            self.metrics.outcome = DRY_RUN if req.dry_run else MERGED
        if self.deletes:
            self._finish(staging, prefix)

    def _open_staging(self, prefix: Prefix) -> Table | None:
        """Staging, or None when there is nothing to merge (missing, or merged and half
        deleted by an earlier run, whose deletion this finishes)."""
        state = prefix.state()
        if not state.exists:
            log.info("nothing to merge: staging does not exist", staging=str(self.req.staging))
            return None
        if not state.has_delta_log:
            if state.marker is None:
                raise InvalidInputError(
                    f"staging {self.req.staging} is not a Delta table"
                    " (it has files but no _delta_log/)"
                )
            log.info(
                "an earlier run merged staging but did not finish deleting it",
                staging=str(self.req.staging),
                marker=state.marker,
            )
            self._delete_staging(prefix, None)
            return None
        staging = self._open(self.req.staging, "staging")
        self.metrics.staging_version = staging.version
        return staging

    def _prepare(
        self, staging: Table
    ) -> tuple[list[ReadUnit], dict[str, str], pa.Schema, pa.Schema]:
        """Every check that can refuse the input, before anything is written; then main
        (created if missing). Returns staging's read units (none: empty staging), the key
        types and schema, and the schema rows are written with."""
        req = self.req
        staging_columns = staging.columns()
        plan.check_keys(staging_columns, req.keys, "staging")
        self.main = self._open_main()
        required = list(req.keys)
        if self.main is not None:
            required = plan.check_compatible(self.main.columns(), staging_columns, req.keys)
            self.metrics.main_version_before = self.main.version
        units = [u for u in staging.read_units(req.batch_rows) if u.rows]
        staging_schema = staging.arrow_schema()
        key_types = {k: staging_columns[k].type_name for k in req.keys}
        key_schema = pa.schema([staging_schema.field(k) for k in req.keys])
        if not units:
            return units, key_types, key_schema, staging_schema
        self._refuse_nulls(staging, required)
        if self.main is None and not req.dry_run:
            partition_by = plan.partition_for_new_main(staging_columns, req.partition_by)
            self.main = Table.create(req.main, self.options, staging, partition_by)
            self.metrics.main_created = True
            log.info(
                "created main",
                main=str(req.main),
                partition_by=partition_by,
                version=self.main.version,
            )
        target = self.main.arrow_schema() if self.main else staging_schema
        return units, key_types, key_schema, target

    def _merge_all(
        self,
        staging: Table,
        units: Sequence[ReadUnit],
        key_types: dict[str, str],
        key_schema: pa.Schema,
        target: pa.Schema,
    ) -> None:
        batches = plan.plan_batches([u.rows for u in units], self.req.batch_rows)
        self.metrics.batches_planned = len(batches)
        self.progress.start(len(batches), sum(u.rows for u in units))
        for index, batch in enumerate(batches):
            if self.should_stop():
                self.metrics.outcome = INTERRUPTED
                raise MergeInterruptedError(
                    f"stopped by a signal after {index} of {len(batches)} batches;"
                    " staging is kept, rerun to merge the rest"
                )
            result = self._merge_batch(
                index,
                len(batches),
                staging,
                [units[i] for i in batch],
                key_types,
                key_schema,
                target,
            )
            self._count(result)
            self.progress.batch_done(result, self.metrics)
        self.progress.close()  # before the clean-up logs; run_merge closes it again, harmlessly
        if self.main is not None:
            self.metrics.main_version_after = self.main.version

    def _open(self, location: Location, role: str) -> Table:
        try:
            return Table.open(location, self.options)
        except TableNotFoundError as exc:
            raise InvalidInputError(f"{role} {location} is not a Delta table: {exc}") from exc

    def _open_main(self) -> Table | None:
        state = Prefix(self.req.main, self.options).state()
        if not state.exists:
            log.info("main does not exist yet; it will be created", main=str(self.req.main))
            return None
        if not state.has_delta_log:
            raise InvalidInputError(
                f"main {self.req.main} is not a Delta table (it has files but no _delta_log/)"
            )
        return self._open(self.req.main, "main")

    def _refuse_nulls(self, staging: Table, columns: Sequence[str]) -> None:
        """NULL never equals NULL, so a NULL key could be inserted on every rerun: refuse."""
        rows = staging.scan(columns, plan.null_predicate(columns))
        if rows.num_rows:
            counts = {c: rows[c].null_count for c in columns if rows[c].null_count}
            listed = ", ".join(f"{c} ({n} rows)" for c, n in counts.items())
            raise InvalidInputError(
                f"staging has NULL in key or NOT NULL columns: {listed}; fill or drop those rows"
            )

    # --- one batch -----------------------------------------------------------------

    def _merge_batch(
        self,
        index: int,
        total: int,
        staging: Table,
        units: Sequence[ReadUnit],
        key_types: dict[str, str],
        key_schema: pa.Schema,
        target: pa.Schema,
    ) -> BatchResult:
        started = time.monotonic()
        names = self.req.keys
        keys = keysets.with_positions(staging.read_keys(units, names), 0)
        first = keysets.first_occurrences(keys, names)
        in_batch_duplicates = keys.num_rows - first.num_rows
        predicate = plan.range_predicate(names, key_types, keysets.key_ranges(first, names))
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            read_version = self.main.latest_version() if self.main else None
            present = (
                keysets.conform(self.main.scan(names, predicate), key_schema)
                if self.main
                else key_schema.empty_table()
            )
            new = keysets.anti_join(first, present, names)
            matched = keysets.semi_join(first, present, names)
            earlier = self._inserted_earlier(matched, key_types, key_schema)
            if self.req.dry_run:
                new, earlier = self._dry_run_filter(new, earlier)
            result = BatchResult(
                index=index,
                rows=keys.num_rows,
                inserted=new.num_rows,
                skipped_existing=matched.num_rows - earlier,
                skipped_duplicates=in_batch_duplicates + earlier,
                version=read_version,
                seconds=0.0,
            )
            if new.num_rows == 0 or self.req.dry_run or self.main is None:
                return _timed(result, started)
            positions = sorted(new[keysets.POSITION].to_pylist())
            metadata = {
                "stagingmerge.staging": str(self.req.staging),
                "stagingmerge.staging_version": str(self.metrics.staging_version),
                "stagingmerge.batch": f"{index + 1}/{total}",
                "stagingmerge.version": __version__,
            }
            rows = staging.read_rows(units, positions, target)
            try:
                committed = self.main.append(_then_failpoint(rows), target, metadata)
            except CommitConflictError as exc:
                self.metrics.commit_retries += 1
                log.warning(
                    "commit conflict; retrying the batch",
                    batch=index + 1,
                    attempt=attempt,
                    error=str(exc),
                )
                continue
            failpoints.hit("batch-after-commit")
            assert read_version is not None
            others = committed - read_version - 1
            repaired = self._repair(new, key_types, key_schema, committed) if others else 0
            self.inserted_ranges.extend(keysets.key_ranges(new, names))
            return _timed(
                replace(result, version=committed, concurrent_commits=others, repaired=repaired),
                started,
            )
        raise MergeError(
            f"batch {index + 1}: commit to {self.req.main} failed {MAX_COMMIT_ATTEMPTS} times"
            " on conflicts with other writers; rerun"
        )

    def _inserted_earlier(
        self, matched: pa.Table, key_types: dict[str, str], key_schema: pa.Schema
    ) -> int:
        """How many of `matched` (keys main holds now) this run inserted in earlier batches.

        Those are duplicates inside staging, not rows main already had. Main is only
        re-read as it was at the start when the key ranges say it can matter.
        """
        names = self.req.keys
        if matched.num_rows == 0 or not self.inserted_ranges:
            return 0
        ranges = keysets.key_ranges(matched, names)
        if not keysets.ranges_overlap(ranges, self.inserted_ranges):
            return 0
        if self.metrics.main_version_before is None:
            return int(matched.num_rows)  # main was created by this run
        assert self.main is not None
        if self.main_before is None:
            self.main_before = self.main.at_version(self.metrics.main_version_before)
        before = keysets.conform(
            self.main_before.scan(names, plan.range_predicate(names, key_types, ranges)),
            key_schema,
        )
        return int(matched.num_rows - keysets.semi_join(matched, before, names).num_rows)

    def _dry_run_filter(self, new: pa.Table, earlier: int) -> tuple[pa.Table, int]:
        """A dry run commits nothing, so it remembers the keys it would have inserted."""
        names = self.req.keys
        if self.pending_keys is not None:
            before = new.num_rows
            new = keysets.anti_join(new, self.pending_keys, names)
            earlier += before - new.num_rows
            self.pending_keys = pa.concat_tables(
                [self.pending_keys, new.select(list(names)).cast(self.pending_keys.schema)]
            )
        else:
            self.pending_keys = new.select(list(names))
        return new, earlier

    def _repair(
        self, new: pa.Table, key_types: dict[str, str], key_schema: pa.Schema, committed: int
    ) -> int:
        """Other commits landed between our read and our commit: undo any duplicate key.

        Keys we inserted that main now holds more than once were added concurrently by
        someone else; the copy that was there first (at `committed - 1`) is kept.
        """
        assert self.main is not None
        names = self.req.keys
        predicate = plan.range_predicate(names, key_types, keysets.key_ranges(new, names))
        now = keysets.conform(self.main.scan(names, predicate), key_schema)
        twice = keysets.repeated_keys(keysets.semi_join(now, new, names), names)
        log.info(
            "other writers committed during the batch; checked for duplicates",
            main=str(self.req.main),
            version=committed,
            duplicates=twice.num_rows,
        )
        if twice.num_rows == 0:
            return 0
        earlier = self.main.at_version(committed - 1)
        tuples = keysets.key_tuples(twice, names)
        for start in range(0, len(tuples), REPAIR_CHUNK):
            chunk = tuples[start : start + REPAIR_CHUNK]
            where = plan.keys_in_predicate(names, key_types, chunk)
            theirs = _one_per_key(
                keysets.conform(earlier.scan(None, where), self.main.arrow_schema()), names
            )
            for attempt in range(1, REPAIR_ATTEMPTS + 1):
                try:
                    self.main.replace(
                        theirs,
                        where,
                        {"stagingmerge.repair": f"{len(chunk)} keys inserted concurrently"},
                    )
                    break
                except CommitConflictError:
                    # Delta sees a conflict whenever a concurrent commit may hold these keys;
                    # the rewrite is idempotent, so try again after the other writer.
                    self.metrics.commit_retries += 1
                    if attempt == REPAIR_ATTEMPTS:
                        raise
                    time.sleep(min(5.0, 0.2 * 2**attempt))
        log.warning(
            "removed duplicates left by a concurrent writer",
            main=str(self.req.main),
            keys=len(tuples),
        )
        return len(tuples)

    def _count(self, result: BatchResult) -> None:
        m = self.metrics
        m.batches += 1
        m.staging_rows += result.rows
        m.inserted += result.inserted
        m.skipped_existing += result.skipped_existing
        m.skipped_duplicates += result.skipped_duplicates
        m.concurrent_commits += result.concurrent_commits
        m.duplicates_repaired += result.repaired
        if result.version is not None:
            m.main_version_after = result.version

    # --- the end -------------------------------------------------------------------

    def _finish(self, staging: Table, prefix: Prefix) -> None:
        """Delete staging, unless a writer added to it while it was merged."""
        read = staging.version
        latest = staging.latest_version()
        if latest != read:
            self.metrics.outcome = STAGING_CHANGED
            raise StagingChangedError(
                f"staging {self.req.staging} changed during the merge (version {read} -> "
                f"{latest}); it is kept, rerun to merge the new rows"
            )
        self._delete_staging(prefix, read)

    def _delete_staging(self, prefix: Prefix, version: int | None) -> None:
        if not self.deletes:
            return
        if version is not None:
            prefix.write_marker(
                {"main": str(self.req.main), "staging_version": version, "merged_at": time.time()}
            )
        deleted = prefix.delete_all()
        self.metrics.staging_deleted = True
        self.metrics.staging_objects_deleted = deleted
        log.info("deleted staging", staging=str(self.req.staging), objects=deleted)


def _one_per_key(rows: pa.Table, names: Sequence[str]) -> pa.Table:
    numbered = keysets.with_positions(rows, 0)
    keep = keysets.first_occurrences(numbered.select([*names, keysets.POSITION]), names)
    return rows.take(sorted(keep[keysets.POSITION].to_pylist()))


def _then_failpoint(rows: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The rows, then the `batch-before-commit` crash point (files written, no commit)."""
    yield from rows
    failpoints.hit("batch-before-commit")


def _timed(result: BatchResult, started: float) -> BatchResult:
    return replace(result, seconds=time.monotonic() - started)
