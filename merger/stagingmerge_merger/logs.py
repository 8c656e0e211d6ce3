"""Structured logs (JSON in containers, readable on a terminal) and batch progress."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from . import redact
from .contract import MergeMetrics
from .reporting import BatchResult

log = structlog.get_logger("stagingmerge.merge")


def resolve_format(requested: str, stream: TextIO = sys.stderr) -> str:
    """`auto` means text on a terminal and JSON anywhere else (a container's log)."""
    if requested != "auto":
        return requested
    return "text" if stream.isatty() else "json"


def configure(fmt: str, stream: TextIO = sys.stderr) -> None:
    """Send structlog events to `stream`, one per line, as JSON or key=value text."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrubbed,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _scrubbed(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Every string of every event without a registered secret or URL user-info."""
    return {key: _scrub_value(value) for key, value in event.items()}


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact.scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


class LogProgress:
    """One log line per batch: what a container log shows."""

    def __init__(self) -> None:
        self.total = 0

    def start(self, batches: int, rows: int) -> None:
        self.total = batches
        log.info("merging", batches=batches, staging_rows=rows)

    def batch_done(self, result: BatchResult, metrics: MergeMetrics) -> None:
        log.info(
            "batch done",
            batch=result.index + 1,
            batches=self.total,
            rows=result.rows,
            inserted=result.inserted,
            skipped_existing=result.skipped_existing,
            skipped_duplicates=result.skipped_duplicates,
            main_version=result.version,
            seconds=round(result.seconds, 3),
            concurrent_commits=result.concurrent_commits,
            total_inserted=metrics.inserted,
        )

    def close(self) -> None:
        pass


class BarProgress:
    """A progress bar over batches (rows as the unit), for a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar: Any = None

    def start(self, batches: int, rows: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=rows,
            unit="row",
            unit_scale=True,
            file=self.stream,
            desc=f"merging {batches} batch{'es' if batches != 1 else ''}",
        )

    def batch_done(self, result: BatchResult, metrics: MergeMetrics) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                inserted=metrics.inserted,
                skipped=metrics.skipped_existing + metrics.skipped_duplicates,
                refresh=False,
            )
            self.bar.update(result.rows)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
