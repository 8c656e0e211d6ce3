"""Prometheus metrics of the operator (served by prometheus-client on its own port).

Counters of merges and rows; histograms of what each finished merge took (seconds, rows);
gauges, per main table, of the StagingMerges queued for it and running into it (updated
by the polling loop, every STAGINGMERGE_QUEUE_POLL_SECONDS). The chart's Grafana dashboard
(charts/stagingmerge/dashboards/) reads exactly these names.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from stagingmerge_merger.contract import MergeMetrics

MERGES_STARTED = Counter("stagingmerge_merges_started_total", "Merge Jobs created")
MERGES_SUCCEEDED = Counter("stagingmerge_merges_succeeded_total", "Merges that succeeded")
MERGES_FAILED = Counter("stagingmerge_merges_failed_total", "Merges that failed", ["reason"])
MERGES_EXPIRED = Counter(
    "stagingmerge_merges_expired_total", "Finished StagingMerges deleted by their TTL"
)
ROWS_INSERTED = Counter("stagingmerge_rows_inserted_total", "Rows inserted into main tables")
ROWS_SKIPPED = Counter("stagingmerge_rows_skipped_total", "Staging rows not inserted", ["why"])
MERGE_DURATION = Histogram(
    "stagingmerge_merge_duration_seconds",
    "How long finished merges ran (a parallel merge: its slowest shard)",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
)
MERGE_ROWS = Histogram(
    "stagingmerge_merge_rows",
    "Rows of finished merges: staging rows read, and rows inserted",
    ["kind"],
    buckets=tuple(float(10**e) for e in range(0, 11)),
)
QUEUED = Gauge("stagingmerge_merges_queued", "StagingMerges waiting for their main table", ["main"])
RUNNING = Gauge(
    "stagingmerge_merges_running", "StagingMerges running (Pending or Running) per main", ["main"]
)
_mains: set[str] = set()


def serve(port: int) -> None:
    if port:
        start_http_server(port)


def record_terminal(succeeded: bool, reason: str, metrics: dict[str, object] | None) -> None:
    if succeeded:
        MERGES_SUCCEEDED.inc()
    else:
        MERGES_FAILED.labels(reason=reason).inc()
    if not metrics:  # no report (the pod never wrote one): nothing more is known
        return
    m = MergeMetrics.from_report(metrics)
    if _count(m.inserted):
        ROWS_INSERTED.inc(m.inserted)
    for why, value in (("existing", m.skipped_existing), ("duplicates", m.skipped_duplicates)):
        if _count(value):
            ROWS_SKIPPED.labels(why=why).inc(value)
    if isinstance(m.duration_seconds, int | float):
        outcome = "succeeded" if succeeded else "failed"
        MERGE_DURATION.labels(outcome=outcome).observe(m.duration_seconds)
    for kind, rows in (("staging", m.staging_rows), ("inserted", m.inserted)):
        if isinstance(rows, int) and succeeded:
            MERGE_ROWS.labels(kind=kind).observe(rows)


def _count(value: object) -> bool:
    """A count the report holds (not garbled, more than zero)."""
    return isinstance(value, int) and value > 0


def set_fleet(counts: Mapping[str, tuple[int, int]]) -> None:
    """The per-main gauges; a main no StagingMerge names any more drops to 0."""
    for main in _mains - set(counts):
        QUEUED.labels(main=main).set(0)
        RUNNING.labels(main=main).set(0)
    for main, (queued, running) in counts.items():
        QUEUED.labels(main=main).set(queued)
        RUNNING.labels(main=main).set(running)
    _mains.update(counts)
