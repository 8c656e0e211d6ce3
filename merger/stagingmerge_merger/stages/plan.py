"""Stage 1, the plan: open both tables, refuse bad input, cut staging's key space.

Everything that can refuse the input happens here, before anything is written: both
logs audited (delta/log.py) and their values checked for misreads (misreads.py); the
keys, the schemas and the partitioning checked (schema.py); staging audited in one
pushed-down query for every rule main would refuse a row for (checks.py). Then one pass
over staging's key columns samples them and cuts the key space into spans whose keys fit
`key_memory` (keyspace.py); a shard first agrees with the others on the cuts (shards.py)
and plans only its own span. The result is a frozen `Plan`: what every later stage needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import structlog

from .. import checks, filecuts, keyspace, misreads, schema, shards
from ..contract import MergeMetrics
from ..delta import QUERY_TABLE, Table, TableNotFoundError, plain_schema
from ..delta import log as deltalog
from ..errors import InvalidInputError
from ..request import MergeRequest
from ..storage import Location, Prefix, PrefixState, check_deletable, links_reaching

log = structlog.get_logger("stagingmerge.merge")

# A span holds its staging keys several times over (all, distinct, new, main's present)
# and the hash tables of the joins: bytes per key = KEY_OVERHEAD x the Arrow bytes.
KEY_OVERHEAD = 4
# a shard warns when the staging files its span meets hold more than this x its rows
SPREAD_WARN = 1.5


@dataclass(frozen=True)
class Plan:
    """What the checks found and how staging is cut: everything a span needs."""

    rows: int  # staging's rows (a shard's: its span's, estimated when sampled)
    spans: tuple[keyspace.Span, ...]
    main: Table | None  # main as planning opened it (None: missing)
    staging_columns: dict[str, schema.Column]
    key_types: dict[str, str]
    key_schema: pa.Schema
    target: pa.Schema  # what rows are cast to and written as
    partition_by: list[str]  # for a main this run creates
    create_as: str | None  # the Delta schema (JSON) of a main this run creates
    keys: tuple[pa.Table, ...] | None = None  # each span's staging keys, when all are in hand
    plan_id: str = "empty"  # the shard plan all shards agreed on (an empty staging: none)


@dataclass(frozen=True)
class _Cut:
    """The key space cut into spans, and what planning learnt doing it."""

    rows: int
    spans: tuple[keyspace.Span, ...]
    keys: tuple[pa.Table, ...] | None
    plan_id: str


def check_locations(req: MergeRequest) -> None:
    """Refuse locations that would make the merge read main as staging, or delete main."""
    if req.staging.overlaps(req.main):
        raise InvalidInputError(
            f"staging {req.staging} and main {req.main} are the same location"
            " or one is inside the other"
        )
    if req.deletes:
        check_deletable(req.staging, req.main, req.allowed_prefixes)
    reaching = links_reaching(req.staging, req.main)
    if reaching:
        link, target = reaching[0]
        raise InvalidInputError(
            f"staging {req.staging} holds a symbolic link into main {req.main} ({link} ->"
            f" {target}{f', and {len(reaching) - 1} more' if len(reaching) > 1 else ''});"
            " staging would be read from main's own files: remove the link"
        )


def open_staging(req: MergeRequest, prefix: Prefix, state: PrefixState) -> Table | None:
    """Staging, audited; None when it does not exist."""
    if not state.exists:
        log.info("nothing to merge: staging does not exist", staging=str(req.staging))
        return None
    if not state.has_delta_log:
        raise InvalidInputError(
            f"staging {req.staging} is not a Delta table (it has files but no _delta_log/)"
        )
    return _open_audited(req.staging, prefix, "staging", req.storage_options)


def open_main(req: MergeRequest) -> Table | None:
    """main, audited; None when it does not exist yet (the run creates it)."""
    prefix = Prefix(req.main, req.storage_options)
    state = prefix.state()
    if not state.exists:
        log.info("main does not exist yet; it will be created", main=str(req.main))
        return None
    if not state.has_delta_log:
        raise InvalidInputError(
            f"main {req.main} is not a Delta table (it has files but no _delta_log/)"
        )
    return _open_audited(req.main, prefix, "main", req.storage_options)


def _open_audited(location: Location, prefix: Prefix, role: str, options: dict[str, str]) -> Table:
    """The table, once its log has passed deltalog.audit (before delta-rs reads it, and
    again up to the version delta-rs opened if a commit landed in between)."""
    audited = deltalog.audit(prefix, role)
    try:
        table = Table.open(location, options)
    except TableNotFoundError as exc:
        raise InvalidInputError(f"{role} {location} is not a Delta table: {exc}") from exc
    if audited is None or table.version > audited:
        deltalog.audit(prefix, role, up_to=table.version)
    return table


def plan(req: MergeRequest, staging: Table, metrics: MergeMetrics) -> Plan:
    """Every check that can refuse the input, before anything is written; then the
    spans staging is merged in."""
    prefix = Prefix(req.staging, req.storage_options)
    staging_columns = staging.columns()
    schema.check_keys(staging_columns, req.keys, "staging")
    schema.check_first_by(staging_columns, req.first_by, req.keys)
    schema.check_readable_partitions(
        staging_columns, staging.partition_columns(), f"staging {req.staging}"
    )
    misreads.check(staging, prefix, "staging")
    main = open_main(req)
    partition_by: list[str] = []
    if main is not None:
        # main's key values decide what is new: misread, they would let a copy in
        misreads.check(main, Prefix(req.main, req.storage_options), "main", only=req.keys)
        schema.check_writable(main.writer_features(), f"main {req.main}")
        main_columns = main.columns()
        schema.check_compatible(main_columns, staging_columns, req.keys)
        written_by = main.partition_columns()
        schema.check_partitionable(main_columns, written_by, f"main {req.main}")
        metrics.main_version_before = main.version
        target = plain_schema(main.arrow_schema())
    else:
        partition_by = schema.partition_for_new_main(staging_columns, req.partition_by)
        written_by = partition_by
        target = plain_schema(staging.arrow_schema())
    rows = _audit(
        req, staging, main, staging_columns, schema.decimal_partitions(staging_columns, written_by)
    )
    key_types = {k: staging_columns[k].type_name for k in req.keys}
    key_schema = pa.schema([target.field(k) for k in req.keys])
    cut = _Spans(req, staging, prefix, key_types, key_schema).cut(rows) if rows else None
    return Plan(
        rows=cut.rows if cut else 0,
        spans=cut.spans if cut else (),
        main=main,
        staging_columns=staging_columns,
        key_types=key_types,
        key_schema=key_schema,
        target=target,
        partition_by=partition_by,
        create_as=staging.plain_delta_schema() if main is None else None,
        keys=cut.keys if cut else None,
        plan_id=cut.plan_id if cut else "empty",
    )


def _audit(
    req: MergeRequest,
    staging: Table,
    main: Table | None,
    staging_columns: dict[str, schema.Column],
    decimal_partitions: Sequence[str],
) -> int:
    """Count staging's rows and, in the same pushed-down query, the rows breaking each
    rule main would refuse them for (NULL keys too: NULL never equals NULL, so a NULL
    key could be inserted again on every rerun). Returns staging's row count."""
    rules = checks.rules_for(
        req.keys,
        main.columns() if main else None,
        main.configuration() if main else None,
        decimal_partitions,
        never_null=staging.never_null(),
        staging_columns=staging_columns,
    )
    counts = staging.query(checks.audit_sql(QUERY_TABLE, rules)).to_pylist()[0]
    for name, sql in checks.element_audit_sql(QUERY_TABLE, rules):
        counts[name] = staging.query(sql).to_pylist()[0]["n"]
    found = checks.violations(rules, counts)
    if found:
        raise InvalidInputError(checks.refusal(found))
    return int(counts[checks.ROWS] or 0)


class _Spans:
    """Cuts staging's key space into spans (one pass over its key columns)."""

    def __init__(
        self,
        req: MergeRequest,
        staging: Table,
        prefix: Prefix,
        key_types: dict[str, str],
        key_schema: pa.Schema,
    ) -> None:
        self.req, self.staging, self.prefix = req, staging, prefix
        self.names = list(req.keys)
        self.key_types, self.key_schema = key_types, key_schema

    def cut(self, rows: int) -> _Cut:
        """Sample staging's keys (a shard's: its span's, when the file statistics place
        the cuts) and cut the key space."""
        names, req = self.names, self.req
        outer, plan_id = keyspace.Span(), "empty"
        if req.sharded:
            assert req.shard is not None
            outer, sample, table, rows, plan_id = self._shard_keys(req.shard, rows)
            if rows == 0:
                return _Cut(0, (), None, plan_id)
        else:
            sample = self._sample(outer)
            table = sample.table()
        key_bytes = max(1, KEY_OVERHEAD * table.nbytes // max(1, table.num_rows))
        span_rows = max(req.batch_rows, req.key_memory // key_bytes)
        spans = keyspace.plan_spans(table, names, rows, span_rows)
        if req.sharded:
            spans = shards.clamp(spans, outer)
        log.info(
            "planned",
            staging_rows=rows,
            spans=len(spans),
            span_rows=span_rows,
            keys_in_hand=sample.stride == 1,
        )
        # every key is in hand: no span has to read them again
        keys = tuple(keyspace.split_by_spans(table, names, spans)) if sample.stride == 1 else None
        return _Cut(rows, tuple(spans), keys, plan_id)

    def _shard_keys(
        self, shard: shards.Shard, rows: int
    ) -> tuple[keyspace.Span, keyspace.KeySample, pa.Table, int, str]:
        """This shard's span (the plan all shards agree on), the sample of its keys, their
        table, the span's staging rows and the plan's id. When staging's file statistics
        place the cuts, only the span's keys are read (and counted exactly); otherwise all
        of staging's are sampled, cut, and the span's rows estimated from the sample unless
        it holds every key."""
        names = self.names
        files = self._staging_files()
        cuts = self._cuts_from_statistics(files, shard)
        if cuts is not None:
            span, plan_id = self._agree_on(cuts, shard)
            sample = self._sample(span)
            rows = sample.seen
            table = sample.table() if not sample.empty else self.key_schema.empty_table()
        else:
            sample = self._sample(keyspace.Span())
            everything = sample.table()
            exact = self.req.dry_run  # records nothing: every shard must find the same cuts
            span, plan_id = self._agree_on(
                shards.cuts_from_sample(everything, names, shard.count, exact=exact), shard
            )
            table = keyspace.within(everything, names, span)
            if shards.is_empty(span):
                rows = 0
            elif sample.stride == 1:
                rows = table.num_rows
            else:  # an estimate (progress, batch sizes): at least one row, it may hold some
                rows = max(1, round(rows * table.num_rows / everything.num_rows))
        log.info(
            "shard planned",
            shard=str(shard),
            plan=plan_id,
            cuts_from="sample" if cuts is None else "file statistics",
            low=None if span.low is None else list(span.low),
            high=None if span.high is None else list(span.high),
            staging_rows=rows,
        )
        if files is not None and rows:
            self._warn_if_spread(files, span, rows, shard)
        return span, sample, table, rows, plan_id

    def _warn_if_spread(
        self, files: list[filecuts.FileRange], span: keyspace.Span, rows: int, shard: shards.Shard
    ) -> None:
        """Warn when this shard's scan of its span has to read files holding far more rows
        than the span: staging's files mix the whole key space, so every shard reads (and
        decodes) nearly all of staging to keep its part, and shards save little."""
        read = filecuts.rows_meeting(files, span)
        if read <= SPREAD_WARN * rows:
            return
        log.warning(
            f"staging's files are not laid out by key: shard {shard} reads files"
            f" holding {read} rows to merge its {rows}, and every shard does the same;"
            " shards pay off when staging is written in key order (a backfill working"
            " through its logs one after another)",
            staging=str(self.req.staging),
            staging_rows_read=read,
            staging_rows=rows,
        )

    def _sample(self, span: keyspace.Span) -> keyspace.KeySample:
        """A sample of staging's keys inside `span` (every key up to --key-sample-rows)."""
        sample = keyspace.KeySample(self.req.key_sample_rows)
        if shards.is_empty(span):
            return sample
        where = keyspace.span_predicate(self.names, self.key_types, span)
        for batch in self.staging.stream(self.names, where):
            sample.add(pa.Table.from_batches([batch]))
        return sample

    def _staging_files(self) -> list[filecuts.FileRange] | None:
        """Staging's files with their rows and key ranges from the Delta log's statistics,
        or None when those cannot be compared as the engine compares keys. Never for a key
        that is a partition column: its values are in the log's partition values."""
        names = self.names
        if set(names) & set(self.staging.partition_columns()) or not filecuts.usable_types(
            self.key_schema
        ):
            return None
        return filecuts.ranges_of(self.staging.key_file_stats(names), names)

    def _cuts_from_statistics(
        self, files: list[filecuts.FileRange] | None, shard: shards.Shard
    ) -> pa.Table | None:
        """The shards' cut points from staging's file statistics (filecuts.py), or None
        when they cannot place them and keys must be sampled."""
        names = self.names
        integer_last = pa.types.is_integer(self.key_schema.field(names[-1]).type)
        points = filecuts.cuts_from_statistics(files or [], shard.count, integer_last)
        if files is None or points is None:
            return None
        columns = {n: [p[i] for p in points] for i, n in enumerate(names)}
        return pa.table(columns, schema=self.key_schema)

    def _agree_on(self, cuts: pa.Table, shard: shards.Shard) -> tuple[keyspace.Span, str]:
        """This shard's span of the key space and the plan's id, from the plan all shards
        agree on: the one recorded in staging, else `cuts` (recorded, unless a dry run)."""
        ledger = shards.Ledger(self.prefix, self.staging.version, shard)
        agreed, plan_id = ledger.agree_on(cuts, record=not self.req.dry_run)
        return shards.span_of(agreed, self.req.keys, shard), plan_id
