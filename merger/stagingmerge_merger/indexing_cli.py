"""`stagingmerge-index`: build or catch up main's key-range index (indexing.py does it),
with the conventions of every stagingmerge command (exit codes, metrics JSON, storage
options, logs: clustering_cli.py says them)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from . import contract, parsing
from .cli import Parser, StopFlag, add_common_options, leave, run_command, storage_options_from
from .indexing import FILES_PER_PASS, IndexMetrics, IndexRequest, run_index
from .storage import parse_location


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stagingmerge-index",
        description="Build or catch up MAIN's key-range index: per data file and key prefix, "
        "the range of the last key column, so merges read only the files that can hold "
        "their keys. Resumable; files already indexed are skipped.",
    )
    p.add_argument("--main", required=True, metavar="URI", help="main Delta table")
    p.add_argument(
        "--keys",
        default=",".join(contract.DEFAULT_KEYS),
        metavar="COL[,COL...]",
        help="the merge's key columns (default: %(default)s)",
    )
    p.add_argument(
        "--files-per-pass",
        type=int,
        default=FILES_PER_PASS,
        metavar="N",
        help="data files whose entries go into one index file (default: %(default)s)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what is due; write nothing")
    add_common_options(p)
    return p


def request_from_args(args: argparse.Namespace) -> IndexRequest:
    options = storage_options_from(args)  # first: registered, so no message shows a secret
    return IndexRequest(
        main=parse_location(args.main),
        keys=parsing.parse_keys(args.keys),
        dry_run=args.dry_run,
        storage_options=options,
        files_per_pass=parsing.parse_batch_rows(args.files_per_pass, "--files-per-pass"),
    )


def run(argv: Sequence[str] | None = None) -> int:
    metrics = IndexMetrics()

    def index(args: argparse.Namespace, _fmt: str, stop: StopFlag, options: dict[str, str]) -> None:
        request = request_from_args(args)
        options.update(request.storage_options)
        run_index(request, metrics, should_stop=stop.is_set)

    return run_command(argv, build_parser(), metrics, index, "index finished")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    leave(run(argv))


if __name__ == "__main__":
    main()
