"""Clustering of main by its key: `stagingmerge-cluster`, partition by partition.

A live writer's files mix every log in arrival order, so file and row-group statistics
of main's key columns span everything and the merge's per-span key-range predicate
prunes nothing: every span then reads main's key columns in full. Rewriting a partition
z-ordered by the key (delta-rs `optimize.z_order`, which spills to disk beyond
`max_spill_size`) gives each file a narrow key range, and the merge reads only the files
its ranges touch.

- One commit per partition, oldest partition first; the newest `skip_newest` partitions
  (the ones a live appender is still filling) are left alone.
- Safe beside a live appender: the rewrite removes exactly the files it read, so rows
  appended meanwhile stay; a commit that conflicts (another rewrite of the same files)
  leaves that partition for the next run.
- Resumable and idempotent: each commit records, in its commitInfo, the partition and the
  key it clustered by (`stagingmerge.cluster`). A partition counts as clustered while it
  still holds exactly the files that commit added; an append (or another rewrite) since
  makes it due again. A kill -9 loses at most the partition in flight (its files are
  unreferenced until VACUUM) and the rerun carries on.

`plan` is the pure decision; `run_cluster` does the I/O through delta.Table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from . import failpoints, schema
from .contract import DEFAULT_KEYS, Outcome, fit_json
from .delta import CommitConflictError, Table, TableNotFoundError
from .errors import InvalidInputError, MergeInterruptedError
from .storage import Location

log = structlog.get_logger("stagingmerge.cluster")

MARK = "stagingmerge.cluster"  # the commitInfo key of this command's commits
DEFAULT_SPILL_BYTES = 1 << 30


@dataclass(frozen=True)
class ClusterRequest:
    main: Location
    by: tuple[str, ...] = DEFAULT_KEYS
    skip_newest: int = 1
    max_partitions: int | None = None
    dry_run: bool = False
    storage_options: Mapping[str, str] = field(default_factory=dict)
    target_size: int | None = None
    max_spill_size: int = DEFAULT_SPILL_BYTES


@dataclass
class ClusterMetrics:
    # clustered | conflicted (every due partition met a concurrent rewrite: the next run
    # retries them) | nothing_to_do | dry_run | interrupted | failed | invalid_input
    outcome: str = Outcome.RUNNING
    main: str = ""
    by: list[str] = field(default_factory=list)
    partitions: int = 0
    partitions_already_clustered: int = 0
    partitions_skipped_newest: int = 0
    partitions_skipped_null: int = 0
    partitions_due: int = 0
    partitions_rewritten: int = 0
    partitions_conflicted: int = 0
    partitions_left: int = 0  # due, but beyond --max-partitions or after a stop
    rows_rewritten: int = 0
    files_removed: int = 0
    files_added: int = 0
    main_version_before: int | None = None
    main_version_after: int | None = None
    duration_seconds: float = 0.0
    dry_run: bool = False
    error: str | None = None

    def to_json(self) -> str:
        return fit_json(asdict(self))


def value_text(value: Any) -> str:
    """A partition value as delta-rs's partition filters (and our commit marks) spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Partition:
    values: tuple[Any, ...]  # in partition-column order, as the log holds them
    files: int
    rows: int

    def filters(self, columns: Sequence[str]) -> dict[str, str]:
        return {c: value_text(v) for c, v in zip(columns, self.values, strict=True)}

    def label(self, columns: Sequence[str]) -> str:
        return ",".join(f"{c}={v}" for c, v in zip(columns, self.values, strict=True)) or "<all>"


@dataclass(frozen=True)
class Plan:
    due: list[Partition]  # oldest first
    already: int
    newest_skipped: int
    null_skipped: int


def recorded_files(
    commit_infos: Sequence[Mapping[str, Any]], columns: Sequence[str], by: Sequence[str]
) -> dict[tuple[str, ...], int]:
    """For each partition this command last clustered by `by`: the files that commit added
    (newest commit wins; commit infos come newest first)."""
    found: dict[tuple[str, ...], int] = {}
    for info in commit_infos:
        raw = info.get(MARK)
        if not raw:
            continue
        try:
            mark = json.loads(raw) if isinstance(raw, str) else dict(raw)
            key = tuple(str(mark["partition"][c]) for c in columns)
            files = int((info.get("operationMetrics") or {})["numFilesAdded"])
        except (ValueError, KeyError, TypeError):
            continue  # not ours to interpret
        if key not in found:
            found[key] = files if list(mark.get("by") or []) == list(by) else -1
    return found


def plan(
    partitions: Mapping[tuple[Any, ...], tuple[int, int]],
    recorded: Mapping[tuple[str, ...], int],
    skip_newest: int,
    partitioned: bool,
) -> Plan:
    """Which partitions to rewrite, oldest first. "Newest" is by partition value (a day
    column sorts by date); an unpartitioned table is one partition, never skipped."""

    def order(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((v is not None, v) for v in values)

    ordered = sorted(
        (Partition(k, files, rows) for k, (files, rows) in partitions.items()),
        key=lambda p: order(p.values),
    )
    newest = min(skip_newest, len(ordered)) if partitioned else 0
    candidates = ordered[: len(ordered) - newest]
    due, already, nulls = [], 0, 0
    for part in candidates:
        if any(v is None for v in part.values):
            nulls += 1  # delta-rs cannot address a NULL partition value in its filters
        elif recorded.get(tuple(value_text(v) for v in part.values)) == part.files:
            already += 1
        else:
            due.append(part)
    return Plan(due, already, newest, nulls)


def run_cluster(
    request: ClusterRequest,
    metrics: ClusterMetrics,
    should_stop: Callable[[], bool] = lambda: False,
) -> ClusterMetrics:
    started = time.monotonic()
    metrics.main, metrics.by, metrics.dry_run = str(request.main), list(request.by), request.dry_run
    try:
        table = _open(request)
        columns = table.partition_columns()
        _check(table, request, columns)
        metrics.main_version_before = metrics.main_version_after = table.version
        found = table.files_by_partition()
        decided = plan(
            found,
            recorded_files(table.commit_infos(), columns, request.by),
            request.skip_newest,
            partitioned=bool(columns),
        )
        metrics.partitions = len(found)
        metrics.partitions_already_clustered = decided.already
        metrics.partitions_skipped_newest = decided.newest_skipped
        metrics.partitions_skipped_null = decided.null_skipped
        metrics.partitions_due = len(decided.due)
        limit = request.max_partitions or len(decided.due)
        todo, metrics.partitions_left = decided.due[:limit], max(0, len(decided.due) - limit)
        if request.dry_run:
            for part in todo:
                log.info("would cluster", partition=part.label(columns), files=part.files)
            metrics.outcome = Outcome.DRY_RUN
            return metrics
        for index, part in enumerate(todo):
            if should_stop():
                metrics.partitions_left += len(todo) - index
                metrics.outcome = Outcome.INTERRUPTED
                raise MergeInterruptedError(
                    f"stopped by a signal after {metrics.partitions_rewritten} partitions;"
                    " rerun to cluster the rest"
                )
            _rewrite(table, request, columns, part, metrics, index, len(todo))
        metrics.outcome = (
            Outcome.CLUSTERED
            if metrics.partitions_rewritten
            else Outcome.CONFLICTED
            if metrics.partitions_conflicted
            else Outcome.NOTHING_TO_DO
        )
        return metrics
    finally:
        metrics.duration_seconds = round(time.monotonic() - started, 3)


def _open(request: ClusterRequest) -> Table:
    try:
        return Table.open(request.main, request.storage_options)
    except TableNotFoundError as exc:
        raise InvalidInputError(
            f"main {request.main} is not a Delta table: nothing to cluster"
        ) from exc


def _check(table: Table, request: ClusterRequest, partition_columns: Sequence[str]) -> None:
    schema.check_keys(table.columns(), request.by, "main")
    inside = [c for c in request.by if c in partition_columns]
    if inside:
        raise InvalidInputError(
            f"--by {','.join(inside)}: partition columns cannot order the rows inside a"
            " partition; name data columns (for example source_url,cert_index)"
        )
    if request.skip_newest < 0:
        raise InvalidInputError(f"--skip-newest must be 0 or more, not {request.skip_newest}")


def _rewrite(
    table: Table,
    request: ClusterRequest,
    columns: Sequence[str],
    part: Partition,
    metrics: ClusterMetrics,
    index: int,
    total: int,
) -> None:
    label = part.label(columns)
    mark = json.dumps({"partition": part.filters(columns), "by": list(request.by)})
    try:
        result = table.z_order(
            request.by,
            part.filters(columns),
            {MARK: mark},
            request.target_size,
            request.max_spill_size,
        )
    except CommitConflictError as exc:
        metrics.partitions_conflicted += 1
        log.warning(
            "partition left for the next run: a concurrent commit conflicts",
            partition=label,
            error=str(exc),
        )
        return
    failpoints.hit("cluster-after-commit")
    metrics.partitions_rewritten += 1
    metrics.rows_rewritten += part.rows
    metrics.files_removed += int(result.get("numFilesRemoved", 0))
    metrics.files_added += int(result.get("numFilesAdded", 0))
    metrics.main_version_after = table.version
    log.info(
        "clustered",
        partition=label,
        progress=f"{index + 1}/{total}",
        files_before=int(result.get("numFilesRemoved", 0)),
        files_after=int(result.get("numFilesAdded", 0)),
        rows=part.rows,
        version=table.version,
    )
