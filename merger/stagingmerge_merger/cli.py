"""`stagingmerge-merge`: arguments, logging, signals, metrics file, exit codes.

Exit codes: 0 merged or nothing to do; 1 a failure worth retrying (storage
trouble, a signal, staging written during the merge); 2 invalid input, never
worth retrying. The process leaves through `os._exit` after flushing, because a
Python process that wrote with deltalake can abort at interpreter exit
(delta-rs issue 2184) and turn a success into rc 134.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn, Protocol

from . import allocator

allocator.tune()  # before pyarrow and deltalake (imported below) start their threads

import structlog

from . import __version__, contract, parsing, redact, shards, storeoptions
from .contract import EXIT_INVALID, EXIT_OK, EXIT_RETRY, MergeMetrics, Outcome
from .engine import MergeRequest, Progress, run_merge
from .errors import InvalidInputError, MergeError
from .logs import BarProgress, LogProgress, configure, resolve_format
from .reporting import default_metrics_path
from .storage import (
    allowed_prefixes,
    one_line,
    options_from_environment,
    parse_location,
    parse_storage_options,
    scrub,
)

log = structlog.get_logger("stagingmerge.merge")


class Parser(argparse.ArgumentParser):
    """argparse, with its messages fit to print: a token it does not recognize could be a
    mistyped option's secret value, so those are shown by name only (redact.py)."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {redact.argv_for_message(unknown)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        raise InvalidInputError(f"{self.prog}: {redact.parser_message(message)} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stagingmerge-merge",
        description="Insert into MAIN every STAGING row whose key MAIN lacks, exactly once, "
        "then delete STAGING.",
    )
    p.add_argument(
        "--main",
        required=True,
        metavar="URI",
        help="main Delta table: a path, file://, s3://, gs://, az:// or abfss:// URI",
    )
    p.add_argument("--staging", required=True, metavar="URI", help="staging Delta table")
    p.add_argument(
        "--keys",
        default=",".join(contract.DEFAULT_KEYS),
        metavar="COL[,COL...]",
        help="key columns (default: %(default)s)",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=contract.BATCH_ROWS,
        metavar="N",
        help="rows inserted per batch at most; one Delta commit each (default: %(default)s)",
    )
    p.add_argument(
        "--key-memory",
        default=f"{contract.KEY_MEMORY >> 20}M",
        metavar="SIZE",
        help="memory for the keys of one span of staging's key space (e.g. 512M, 2G); a "
        "staging whose keys need more is merged span by span (default: %(default)s)",
    )
    p.add_argument(
        "--key-sample-rows",
        type=int,
        default=contract.KEY_SAMPLE_ROWS,
        metavar="N",
        help="staging keys planning keeps exactly; a larger staging is sampled (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--keep-staging", action="store_true", help="do not delete staging after a successful merge"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be inserted; write and delete nothing",
    )
    p.add_argument(
        "--no-key-index",
        dest="key_index",
        action="store_false",
        help="do not use main's key-range index (built by stagingmerge-index) to skip files",
    )
    p.add_argument(
        "--partition-by",
        default="",
        metavar="COL[,COL...]",
        help="partition columns when main has to be created (default: seen_date if staging has it)",
    )
    p.add_argument(
        "--first-by",
        default="",
        metavar="COL[,COL...]",
        help="when staging holds a key more than once, insert the copy with the smallest "
        "values of these columns (e.g. seen); ties, and the default, go by row fingerprint",
    )
    sharding = p.add_mutually_exclusive_group()
    sharding.add_argument(
        "--shard",
        metavar="I/N",
        help="merge only shard I of N (0 <= I < N): a disjoint span of staging's key space; "
        "run all N (at once or not) and the last to finish deletes staging",
    )
    sharding.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="--shard $JOB_COMPLETION_INDEX/N: the shard of this pod of an Indexed Job",
    )
    add_common_options(p)
    return p


def shard_from_args(args: argparse.Namespace) -> shards.Shard | None:
    if args.shard is not None:
        return shards.parse_shard(args.shard)
    if args.shards is not None:
        return shards.shard_from_environment(args.shards)
    return None


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options every command of the package takes (merge, cluster)."""
    p.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="write the metrics JSON here (default: /dev/termination-log if it exists)",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="deltalake/object_store option, repeatable; AWS_*, AZURE_*, GOOGLE_* "
        "environment variables are read too",
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="auto: text on a terminal, JSON otherwise (default)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def request_from_args(args: argparse.Namespace) -> MergeRequest:
    options = storage_options_from(args)  # first: registered, so no message shows a secret
    return MergeRequest(
        main=parse_location(args.main),
        staging=parse_location(args.staging),
        keys=parsing.parse_keys(args.keys),
        batch_rows=parsing.parse_batch_rows(args.batch_rows),
        keep_staging=args.keep_staging,
        dry_run=args.dry_run,
        storage_options=options,
        partition_by=parsing.parse_columns(args.partition_by, "--partition-by"),
        allowed_prefixes=tuple(allowed_prefixes()),
        first_by=parsing.parse_columns(args.first_by, "--first-by"),
        key_memory=parsing.parse_size(args.key_memory, "--key-memory"),
        key_sample_rows=parsing.parse_batch_rows(args.key_sample_rows, "--key-sample-rows"),
        shard=shard_from_args(args),
        key_index=args.key_index,
    )


class StopFlag:
    """SIGTERM/SIGINT: finish the batch in flight, then stop. A second signal exits now.

    The handler only sets a flag (and, for the second signal, writes one line with
    os.write): logging from a signal handler can re-enter a stream mid-write.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._event.is_set():
            os.write(
                2,
                b'{"level":"error","event":"second signal: leaving now; the batch in'
                b' flight is not committed"}\n',
            )
            os._exit(EXIT_RETRY)
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Report(Protocol):
    """What a command reports: MergeMetrics, cluster.ClusterMetrics."""

    outcome: str
    error: str | None

    def to_json(self) -> str: ...


# work(args, log format, stop flag, options): fills `options` (the storage options, so
# that every error line is scrubbed of them) as soon as it knows them, then does the work
Work = Callable[[argparse.Namespace, str, StopFlag, dict[str, str]], None]


def run_command(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    metrics: Report,
    work: Work,
    what: str,
) -> int:
    """Parse, do `work`, report the metrics JSON on stdout and in --metrics-file; return
    the exit code (never raises). `work` raises MergeError subclasses for exit codes 1, 2."""
    metrics_path = default_metrics_path()
    options: dict[str, str] = {}
    configure(resolve_format("auto"))
    try:
        args = parser.parse_args(argv)
        metrics_path = args.metrics_file or metrics_path
        fmt = resolve_format(args.log_format)
        configure(fmt)
        stop = StopFlag()
        stop.install()
        work(args, fmt, stop, options)
        code = EXIT_OK
    except MergeError as exc:
        code = exc.exit_code
        metrics.error = scrub(str(exc), options)
        if metrics.outcome == Outcome.RUNNING:
            metrics.outcome = Outcome.INVALID_INPUT if code == EXIT_INVALID else Outcome.FAILED
        log.error(metrics.error, reason=exc.reason, exit_code=code)
    except Exception as exc:  # noqa: BLE001 - the last resort: reported, exit 1
        code = EXIT_RETRY
        metrics.outcome = Outcome.FAILED
        metrics.error = scrub(f"unexpected {type(exc).__name__}: {one_line(str(exc))}", options)
        # the traceback is a field of the one event, scrubbed like every other line
        log.error(
            "unexpected error",
            error=metrics.error,
            traceback=scrub(traceback.format_exc(), options),
        )
    _report(metrics, metrics_path, what)
    return code


def storage_options_from(args: argparse.Namespace) -> dict[str, str]:
    """The run's storage options, their secrets registered for redaction (redact.py)."""
    options = {**options_from_environment(), **parse_storage_options(args.storage_option)}
    redact.register(options)
    storeoptions.validate(options)
    return options


def run(argv: Sequence[str] | None = None) -> int:
    """`stagingmerge-merge`: merge, report; return the exit code (never raises)."""
    metrics = MergeMetrics()

    def merge(args: argparse.Namespace, fmt: str, stop: StopFlag, options: dict[str, str]) -> None:
        request = request_from_args(args)
        options.update(request.storage_options)
        progress: Progress = (
            BarProgress() if fmt == "text" and sys.stderr.isatty() else LogProgress()
        )
        run_merge(request, metrics, progress=progress, should_stop=stop.is_set)

    return run_command(argv, build_parser(), metrics, merge, "merge finished")


def _report(metrics: Report, path: Path | None, what: str) -> None:
    line = metrics.to_json()
    fields = json.loads(line)
    fields.pop("error", None)  # already logged, as the error line
    log.info(what, **fields)
    sys.stdout.write(line + "\n")
    if path is not None:
        try:
            path.write_text(line + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("could not write the metrics file", path=str(path), error=str(exc))


def leave(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    leave(run(argv))


if __name__ == "__main__":
    main()
