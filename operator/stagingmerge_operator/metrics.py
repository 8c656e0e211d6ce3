"""Prometheus metrics of the operator (served by prometheus-client on its own port)."""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

MERGES_STARTED = Counter("stagingmerge_merges_started_total", "Merge Jobs created")
MERGES_SUCCEEDED = Counter("stagingmerge_merges_succeeded_total", "Merges that succeeded")
MERGES_FAILED = Counter("stagingmerge_merges_failed_total", "Merges that failed", ["reason"])
ROWS_INSERTED = Counter("stagingmerge_rows_inserted_total", "Rows inserted into main tables")
ROWS_SKIPPED = Counter("stagingmerge_rows_skipped_total", "Staging rows not inserted", ["why"])


def serve(port: int) -> None:
    if port:
        start_http_server(port)


def record_terminal(succeeded: bool, reason: str, metrics: dict[str, object] | None) -> None:
    if succeeded:
        MERGES_SUCCEEDED.inc()
    else:
        MERGES_FAILED.labels(reason=reason).inc()
    m = metrics or {}
    for key, counter in (("inserted", ROWS_INSERTED),):
        value = m.get(key)
        if isinstance(value, int) and value > 0:
            counter.inc(value)
    for why in ("skipped_existing", "skipped_duplicates"):
        value = m.get(why)
        if isinstance(value, int) and value > 0:
            ROWS_SKIPPED.labels(why=why.removeprefix("skipped_")).inc(value)
