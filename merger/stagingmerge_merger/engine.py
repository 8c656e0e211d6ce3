"""The merge use case: staging -> main, exactly once, span by span, batch by batch.

Before anything is written, staging is audited (every rule main would refuse a row
for, over all of staging, in one pushed-down query) and its key space is cut into
spans whose keys fit `key_memory` (keyspace.py). Then, for each span:

1. take staging's keys in the span (from the planning pass, or one scan of them);
2. scan only main's key columns, restricted by a predicate built from the span's
   key ranges (delta-rs prunes files and row groups with it), at version *v*;
3. anti-join: the keys main does not hold are the ones to insert;
4. stream staging's rows in the span once and keep only those keys; a key staging
   holds more than once keeps the copy keysets.pick_winners chooses, by content
   (selection.py);
5. cut the stream into commits of at most `batch_rows` rows; a commit whose version
   shows other writers' commits since *v* gets its keys re-checked against main and,
   should one now be there twice, rewritten back to the copy that was there first
   (steps 2 and 5, main's side of the run, are commits.py's).

All copies of a key are in one span, so the winner, the counts and a dry run's
counts never depend on batch boundaries, file order or a crash; a rerun sees what
earlier runs wrote (step 3) and inserts the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pyarrow as pa
import structlog

from . import (
    checks,
    commits,
    deltalog,
    filecuts,
    keysets,
    keyspace,
    misreads,
    plan,
    selection,
    shards,
)
from .contract import (
    BATCH_ROWS,
    DEFAULT_KEYS,
    KEY_MEMORY,
    KEY_SAMPLE_ROWS,
    MergeMetrics,
    Outcome,
)
from .delta import QUERY_TABLE, CommitConflictError, Table, TableNotFoundError, plain_schema
from .errors import (
    InvalidInputError,
    MergeError,
    MergeInterruptedError,
    StagingChangedError,
    StagingNotDeletedError,
)
from .mainfiles import warn_threshold
from .metrics import BatchResult
from .storage import Location, Prefix, check_deletable, links_reaching, redact_options

log = structlog.get_logger("stagingmerge.merge")

MAX_COMMIT_ATTEMPTS = 5
# A span holds its staging keys several times over (all, distinct, new, main's present)
# and the hash tables of the joins: bytes per key = KEY_OVERHEAD x the Arrow bytes.
KEY_OVERHEAD = 4
# a shard warns when the staging files its span meets hold more than this x its rows
SPREAD_WARN = 1.5


@dataclass(frozen=True)
class MergeRequest:
    main: Location
    staging: Location
    keys: tuple[str, ...] = DEFAULT_KEYS
    batch_rows: int = BATCH_ROWS
    keep_staging: bool = False
    dry_run: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    partition_by: tuple[str, ...] = ()
    allowed_prefixes: tuple[Location, ...] = ()
    first_by: tuple[str, ...] = ()  # which copy of a repeated key wins (then: fingerprint)
    key_memory: int = KEY_MEMORY  # bytes of keys one span may hold (sizes spans)
    key_sample_rows: int = KEY_SAMPLE_ROWS  # planning keeps every key of a staging this small
    shard: shards.Shard | None = None  # merge only this shard's span (shards.py)


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


@dataclass
class _Plan:
    """What the checks found and how staging is cut: everything a batch needs."""

    rows: int  # staging's rows (deletion vectors applied)
    spans: list[keyspace.Span]
    key_types: dict[str, str]
    key_schema: pa.Schema
    target: pa.Schema  # what rows are cast to and written as
    partition_by: list[str]  # for a main this run creates
    create_as: str | None  # the Delta schema (JSON) of a main this run creates
    keys: list[pa.Table] | None = None  # each span's staging keys, when planning kept all


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
        self.main: Table | None = None  # main as planning opened it (None: missing)
        self.writer: commits.MainWriter | None = None  # main from the first write on
        self.prefix = Prefix(request.staging, self.options)
        self.sharded = request.shard is not None and request.shard.count > 1
        self.staging_columns: dict[str, plan.Column] = {}
        self.plan_id = "empty"  # the shard plan all shards agreed on (an empty staging: none)

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
        reaching = links_reaching(req.staging, req.main)
        if reaching:
            link, target = reaching[0]
            raise InvalidInputError(
                f"staging {req.staging} holds a symbolic link into main {req.main} ({link} ->"
                f" {target}{f', and {len(reaching) - 1} more' if len(reaching) > 1 else ''});"
                " staging would be read from main's own files: remove the link"
            )
        if req.shard is not None:
            self.metrics.shard = str(req.shard)
        prefix = self.prefix
        staging = self._open_staging(prefix)
        if staging is None:
            self.metrics.outcome = Outcome.NOTHING_TO_MERGE
            return
        planned = self._prepare(staging)
        self.writer = self._writer_for(planned)
        if not req.dry_run:
            self.writer.repair_owed()
        if planned.rows == 0:
            log.info(
                "nothing to merge: staging is empty"
                if planned.spans or not self.sharded
                else "nothing to merge in this shard's span of the key space",
                staging=str(req.staging),
            )
            self.metrics.outcome = Outcome.NOTHING_TO_MERGE
        else:
            self._merge_all(staging, planned)
            self.metrics.outcome = Outcome.DRY_RUN if req.dry_run else Outcome.MERGED
        if self.deletes:
            self._finish(staging, prefix)

    def _open_staging(self, prefix: Prefix) -> Table | None:
        """Staging, or None when there is nothing to merge (missing, or merged and half
        deleted by an earlier run, whose deletion this finishes)."""
        state = prefix.state()
        if not state.exists:
            log.info("nothing to merge: staging does not exist", staging=str(self.req.staging))
            return None
        if state.marker is not None and (
            not state.has_delta_log or self._merged_before(prefix, state.marker)
        ):
            log.info(
                "an earlier run merged staging but did not finish deleting it",
                staging=str(self.req.staging),
                marker=state.marker,
            )
            self._delete_staging(prefix, None)
            return None
        if not state.has_delta_log:
            raise InvalidInputError(
                f"staging {self.req.staging} is not a Delta table (it has files but no _delta_log/)"
            )
        staging = self._open_audited(self.req.staging, prefix, "staging")
        self.metrics.staging_version = staging.version
        return staging

    def _merged_before(self, prefix: Prefix, marker: Mapping[str, Any]) -> bool:
        """Whether the completion marker says an earlier run merged this staging, as it is,
        into this main: no commit beyond the version it merged (a half-deleted log holds
        only some of them), the same main."""
        merged = marker.get("staging_version")
        if not isinstance(merged, int) or marker.get("main") != str(self.req.main):
            return False
        return all(v <= merged for v in deltalog.commit_versions(prefix))

    def _open_audited(self, location: Location, prefix: Prefix, role: str) -> Table:
        """The table, once its log has passed deltalog.audit (before delta-rs reads it, and
        again up to the version delta-rs opened if a commit landed in between)."""
        audited = deltalog.audit(prefix, role)
        table = self._open(location, role)
        if audited is None or table.version > audited:
            deltalog.audit(prefix, role, up_to=table.version)
        return table

    def _prepare(self, staging: Table) -> _Plan:
        """Every check that can refuse the input, before anything is written; then the
        spans staging is merged in."""
        req = self.req
        staging_columns = self.staging_columns = staging.columns()
        plan.check_keys(staging_columns, req.keys, "staging")
        plan.check_first_by(staging_columns, req.first_by, req.keys)
        plan.check_readable_partitions(
            staging_columns, staging.partition_columns(), f"staging {req.staging}"
        )
        misreads.check(staging, self.prefix, "staging")
        self.main = self._open_main()
        partition_by: list[str] = []
        if self.main is not None:
            # main's key values decide what is new: misread, they would let a copy in
            misreads.check(self.main, Prefix(req.main, self.options), "main", only=req.keys)
            plan.check_writable(self.main.writer_features(), f"main {req.main}")
            main_columns = self.main.columns()
            plan.check_compatible(main_columns, staging_columns, req.keys)
            written_by = self.main.partition_columns()
            plan.check_partitionable(main_columns, written_by, f"main {req.main}")
            self.metrics.main_version_before = self.main.version
            target = plain_schema(self.main.arrow_schema())
        else:
            partition_by = plan.partition_for_new_main(staging_columns, req.partition_by)
            written_by = partition_by
            target = plain_schema(staging.arrow_schema())
        rows = self._audit(staging, plan.decimal_partitions(staging_columns, written_by))
        key_types = {k: staging_columns[k].type_name for k in req.keys}
        key_schema = pa.schema([target.field(k) for k in req.keys])
        create_as = staging.plain_delta_schema() if self.main is None else None
        planned = _Plan(rows, [], key_types, key_schema, target, partition_by, create_as)
        if rows:
            self._plan_spans(staging, planned)
        return planned

    def _audit(self, staging: Table, decimal_partitions: Sequence[str]) -> int:
        """Count staging's rows and, in the same pushed-down query, the rows breaking each
        rule main would refuse them for (NULL keys too: NULL never equals NULL, so a NULL
        key could be inserted again on every rerun). Returns staging's row count."""
        main = self.main
        rules = checks.rules_for(
            self.req.keys,
            main.columns() if main else None,
            main.configuration() if main else None,
            decimal_partitions,
            never_null=staging.never_null(),
            staging_columns=self.staging_columns,
        )
        counts = staging.query(checks.audit_sql(QUERY_TABLE, rules)).to_pylist()[0]
        for name, sql in checks.element_audit_sql(QUERY_TABLE, rules):
            counts[name] = staging.query(sql).to_pylist()[0]["n"]
        found = checks.violations(rules, counts)
        if found:
            raise InvalidInputError(checks.refusal(found))
        return int(counts[checks.ROWS] or 0)

    def _plan_spans(self, staging: Table, planned: _Plan) -> None:
        """One pass over staging's key columns (a shard's: over its span's, when the file
        statistics place the cuts): sample them, cut the key space."""
        names = list(self.req.keys)
        outer = keyspace.Span()
        if self.sharded:
            outer, sample, table = self._shard_keys(staging, planned)
            if planned.rows == 0:
                planned.spans = []
                return
        else:
            sample = self._sample(staging, planned, outer)
            table = sample.table()
        key_bytes = max(1, KEY_OVERHEAD * table.nbytes // max(1, table.num_rows))
        span_rows = max(self.req.batch_rows, self.req.key_memory // key_bytes)
        planned.spans = keyspace.plan_spans(table, names, planned.rows, span_rows)
        if self.sharded:
            planned.spans = shards.clamp(planned.spans, outer)
        log.info(
            "planned",
            staging_rows=planned.rows,
            spans=len(planned.spans),
            span_rows=span_rows,
            keys_in_hand=sample.stride == 1,
        )
        if sample.stride == 1:  # every key is in hand: no batch has to read them again
            planned.keys = keyspace.split_by_spans(table, names, planned.spans)

    def _shard_keys(
        self, staging: Table, planned: _Plan
    ) -> tuple[keyspace.Span, keyspace.KeySample, pa.Table]:
        """This shard's span (the plan all shards agree on), the sample of its keys and
        their table; sets `planned.rows` to the span's staging rows. When staging's file
        statistics place the cuts, only the span's keys are read (and counted exactly);
        otherwise all of staging's are sampled, cut, and the span's rows estimated from
        the sample unless it holds every key."""
        names = list(self.req.keys)
        files = self._staging_files(staging, planned.key_schema)
        cuts = self._cuts_from_statistics(files, planned.key_schema)
        if cuts is not None:
            span = self._agree_on(staging, cuts)
            sample = self._sample(staging, planned, span)
            planned.rows = sample.seen
            table = sample.table() if not sample.empty else planned.key_schema.empty_table()
        else:
            sample = self._sample(staging, planned, keyspace.Span())
            everything = sample.table()
            exact = self.req.dry_run  # records nothing: every shard must find the same cuts
            span = self._agree_on(
                staging, shards.cut_points(everything, names, self._shard.count, exact=exact)
            )
            table = keyspace.within(everything, names, span)
            if shards.is_empty(span):
                planned.rows = 0
            elif sample.stride == 1:
                planned.rows = table.num_rows
            else:  # an estimate (progress, batch sizes): at least one row, it may hold some
                planned.rows = max(1, round(planned.rows * table.num_rows / everything.num_rows))
        log.info(
            "shard planned",
            shard=str(self._shard),
            plan=self.plan_id,
            cuts_from="sample" if cuts is None else "file statistics",
            low=None if span.low is None else list(span.low),
            high=None if span.high is None else list(span.high),
            staging_rows=planned.rows,
        )
        if files is not None and planned.rows:
            self._warn_if_spread(files, span, planned.rows)
        return span, sample, table

    def _warn_if_spread(
        self, files: list[filecuts.FileRange], span: keyspace.Span, rows: int
    ) -> None:
        """Warn when this shard's scan of its span has to read files holding far more rows
        than the span: staging's files mix the whole key space, so every shard reads (and
        decodes) nearly all of staging to keep its part, and shards save little."""
        read = filecuts.rows_meeting(files, span)
        if read <= SPREAD_WARN * rows:
            return
        log.warning(
            f"staging's files are not laid out by key: shard {self._shard} reads files"
            f" holding {read} rows to merge its {rows}, and every shard does the same;"
            " shards pay off when staging is written in key order (a backfill working"
            " through its logs one after another)",
            staging=str(self.req.staging),
            staging_rows_read=read,
            staging_rows=rows,
        )

    @property
    def _shard(self) -> shards.Shard:
        assert self.req.shard is not None
        return self.req.shard

    def _sample(self, staging: Table, planned: _Plan, span: keyspace.Span) -> keyspace.KeySample:
        """A sample of staging's keys inside `span` (every key up to --key-sample-rows)."""
        names = list(self.req.keys)
        sample = keyspace.KeySample(self.req.key_sample_rows)
        if shards.is_empty(span):
            return sample
        where = keyspace.span_predicate(names, planned.key_types, span)
        for batch in staging.stream(names, where):
            sample.add(pa.Table.from_batches([batch]))
        return sample

    def _staging_files(
        self, staging: Table, key_schema: pa.Schema
    ) -> list[filecuts.FileRange] | None:
        """Staging's files with their rows and key ranges from the Delta log's statistics,
        or None when those cannot be compared as the engine compares keys. Never for a key
        that is a partition column: its values are in the log's partition values."""
        names = list(self.req.keys)
        if set(names) & set(staging.partition_columns()) or not filecuts.usable_types(key_schema):
            return None
        return filecuts.ranges_of(staging.key_file_stats(names), names)

    def _cuts_from_statistics(
        self, files: list[filecuts.FileRange] | None, key_schema: pa.Schema
    ) -> pa.Table | None:
        """The shards' cut points from staging's file statistics (filecuts.py), or None
        when they cannot place them and keys must be sampled."""
        names = list(self.req.keys)
        integer_last = pa.types.is_integer(key_schema.field(names[-1]).type)
        points = filecuts.cut_points(files or [], self._shard.count, integer_last)
        if files is None or points is None:
            return None
        columns = {n: [p[i] for p in points] for i, n in enumerate(names)}
        return pa.table(columns, schema=key_schema)

    def _agree_on(self, staging: Table, cuts: pa.Table) -> keyspace.Span:
        """This shard's span of the key space, from the plan all shards agree on: the one
        recorded in staging, else `cuts` (recorded, unless this is a dry run)."""
        ledger = shards.Ledger(self.prefix, staging.version, self._shard)
        agreed, self.plan_id = ledger.agree_on(cuts, record=not self.req.dry_run)
        return shards.span_of(agreed, self.req.keys, self._shard)

    def _merge_all(self, staging: Table, planned: _Plan) -> None:
        spans = planned.spans
        self.metrics.batches_planned = selection.batch_count(planned.rows, self.req.batch_rows)
        self.progress.start(self.metrics.batches_planned, planned.rows)
        rows_left = planned.rows
        for index, span in enumerate(spans):
            keys = planned.keys[index] if planned.keys is not None else None
            span_rows = self._merge_span(index, staging, planned, span, keys)
            rows_left -= span_rows
            # what is known now: the batches done, and an estimate for the rest
            self.metrics.batches_planned = self.metrics.batches + (
                selection.batch_count(rows_left, self.req.batch_rows) if rows_left else 0
            )
        self.progress.close()  # before the clean-up logs; run_merge closes it again, harmlessly
        if self._main_writer.main is not None:
            self.metrics.main_version_after = self._main_writer.main.version
        self._warn_if_unclustered()

    def _stop_if_asked(self) -> None:
        if self.should_stop():
            self.metrics.outcome = Outcome.INTERRUPTED
            raise MergeInterruptedError(
                f"stopped by a signal after {self.metrics.batches} batches;"
                " staging is kept, rerun to merge the rest"
            )

    def _writer_for(self, planned: _Plan) -> commits.MainWriter:
        """main from here on: what is read of it and committed to it (commits.py)."""
        req = self.req
        goal = commits.Target(
            main=req.main,
            staging=req.staging,
            options=self.options,
            keys=req.keys,
            key_types=planned.key_types,
            key_schema=planned.key_schema,
            create_as=planned.create_as,
            partition_by=planned.partition_by,
            shard=None if req.shard is None else str(req.shard),
        )
        return commits.MainWriter(
            goal, self.main, planned.target, self.metrics, self._open_main, self.staging_columns
        )

    @property
    def _main_writer(self) -> commits.MainWriter:
        assert self.writer is not None
        return self.writer

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
        return self._open_audited(self.req.main, Prefix(self.req.main, self.options), "main")

    # --- one span ------------------------------------------------------------------

    def _merge_span(
        self,
        index: int,
        staging: Table,
        planned: _Plan,
        span: keyspace.Span,
        keys: pa.Table | None,
    ) -> int:
        """Merge one span: its keys against main's once, then its new rows in commits of
        at most batch_rows rows. Returns the span's staging rows."""
        names = self.req.keys
        where = keyspace.span_predicate(names, planned.key_types, span)
        if keys is None:
            keys = staging.scan(names, where)
        # staging's keys counted first (a sort of integers, a fraction of main's scan),
        # so their ranges come from the count and the scan has both cores to itself
        counted = keysets.count(keys, names)
        ranges = counted.ranges()
        main = self._main_writer
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            # a retry looks for a missing main again: another writer may have created it
            base = main.refresh(reopen=attempt > 1)
            present = main.keys_within(ranges)
            if attempt == 1:  # one tally across attempts: a retry's "existing" are ours
                tally = selection.SpanTally(rows=keys.num_rows, distinct=len(counted))
            wanted = counted.without(present, names)
            if len(wanted) == 0 or self.req.dry_run:
                self._count_without_commits(tally, len(wanted))
                return tally.rows
            repeated = counted.repeated  # those of the keys to insert, held back
            if repeated.num_rows:
                repeated = repeated.filter(wanted.mask(repeated))
            rows = selection.rows_to_insert(
                staging.stream(main.target.names, where),
                wanted,
                repeated,
                names,
                self.req.first_by,
            )
            try:
                main.commit_span(
                    selection.Pieces(rows, self.req.batch_rows),
                    commits.Span(wanted, base),
                    tally,
                    self._record,
                    self._stop_if_asked,
                )
                return tally.rows
            except CommitConflictError as exc:
                self.metrics.commit_retries += 1
                log.warning(
                    "commit conflict; reading the span again",
                    span=index + 1,
                    attempt=attempt,
                    error=str(exc),
                )
        raise MergeError(
            f"span {index + 1}: commits to {self.req.main} failed {MAX_COMMIT_ATTEMPTS} times"
            " on conflicts with other writers; rerun"
        )

    def _count_without_commits(self, tally: selection.SpanTally, new: int) -> None:
        """A dry run, or a span with nothing new: the batches a real run would make."""
        count = selection.batch_count(new, self.req.batch_rows)
        for number in range(count):
            self._stop_if_asked()
            result = tally.piece(min(self.req.batch_rows, new - number * self.req.batch_rows))
            if self._main_writer.main is not None:
                result = replace(result, version=self._main_writer.main.version)
            self._record(tally.last(result) if number == count - 1 else result)

    def _record(self, result: BatchResult) -> None:
        result = replace(result, index=self.metrics.batches)
        self._count(result)
        self.progress.batch_done(result, self.metrics)

    def _warn_if_unclustered(self) -> None:
        m = self.metrics
        if (
            m.main_key_bytes_read >= warn_threshold()
            and m.main_files > 1
            and m.main_files_scanned > 0.5 * m.main_files * m.main_key_scans
        ):
            log.warning(
                "main is not clustered by the key: this run read the key columns of"
                f" {m.main_files_scanned} of main's files ({m.main_key_bytes_read} bytes);"
                f" run `stagingmerge-cluster --main {self.req.main}` so merges read only"
                " the files their key ranges touch",
                main_key_bytes_read=m.main_key_bytes_read,
                main_files_scanned=m.main_files_scanned,
                main_files=m.main_files,
            )

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
            self.metrics.outcome = Outcome.STAGING_CHANGED
            raise StagingChangedError(
                f"staging {self.req.staging} changed during the merge (version {read} -> "
                f"{latest}); it is kept, rerun to merge the new rows"
            )
        if self.sharded:
            assert self.req.shard is not None
            finish = shards.Ledger(prefix, read, self.req.shard).finish(
                self.plan_id,
                {
                    "staging_version": read,
                    "staging_rows": self.metrics.staging_rows,
                    "inserted": self.metrics.inserted,
                    "finished_at": time.time(),
                },
            )
            self.metrics.shards_done = finish.done
            if not finish.deletes:
                log.info(
                    "shard done; staging is deleted by the last shard to finish"
                    if finish.deleter is None
                    else f"shard done; shard {finish.deleter} deletes staging",
                    staging=str(self.req.staging),
                    shard=str(self.req.shard),
                    shards_done=finish.done,
                )
                return
        self._delete_staging(prefix, read)

    def _delete_staging(self, prefix: Prefix, version: int | None) -> None:
        """Delete staging, the merge being complete: the marker first (`version` merged;
        None when an earlier run wrote it), then every object. A failure leaves main as it
        is, complete, and ends the run with its own outcome and exit 1."""
        if not self.deletes:
            return
        try:
            if version is not None:
                prefix.write_marker(
                    {
                        "main": str(self.req.main),
                        "staging_version": version,
                        "merged_at": time.time(),
                    }
                )
            deleted = prefix.delete_all()
        except MergeError as exc:
            self.metrics.outcome = Outcome.STAGING_NOT_DELETED
            raise StagingNotDeletedError(
                f"main {self.req.main} holds every row of staging, but staging could not be"
                f" deleted ({exc}); fix the cause and rerun: it inserts nothing twice and"
                " finishes the deletion"
            ) from exc
        self.metrics.staging_deleted = True
        self.metrics.staging_objects_deleted = deleted
        log.info("deleted staging", staging=str(self.req.staging), objects=deleted)
