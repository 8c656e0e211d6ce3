"""`stagingmerge-cluster`: cluster main's partitions by the key (clustering.py does the work).

Same conventions as `stagingmerge-merge`: exit 0 done or nothing to do, 1 worth retrying
(storage trouble, a signal: the rerun carries on), 2 invalid input; the metrics JSON on
stdout and in --metrics-file (the termination log in a Kubernetes container); storage
options from --storage-option, AWS_*/AZURE_*/GOOGLE_* variables and
STAGINGMERGE_STORAGE_OPTIONS.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from . import contract, parsing
from .cli import Parser, StopFlag, add_common_options, leave, run_command, storage_options_from
from .clustering import DEFAULT_SPILL_BYTES, ClusterMetrics, ClusterRequest, run_cluster
from .errors import InvalidInputError
from .storage import parse_location


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stagingmerge-cluster",
        description="Rewrite MAIN's partitions z-ordered by the key, one commit per partition, "
        "so that merges read only the files their key ranges touch. Resumable; partitions "
        "already clustered are skipped.",
    )
    p.add_argument("--main", required=True, metavar="URI", help="main Delta table")
    p.add_argument(
        "--by",
        default=",".join(contract.DEFAULT_KEYS),
        metavar="COL[,COL...]",
        help="the key to cluster by (default: %(default)s)",
    )
    p.add_argument(
        "--skip-newest",
        type=int,
        default=1,
        metavar="N",
        help="leave the N newest partitions (by partition value) to the live writer "
        "(default: %(default)s; an unpartitioned table is clustered whole)",
    )
    p.add_argument(
        "--max-partitions",
        type=int,
        default=None,
        metavar="N",
        help="rewrite at most N partitions in this run, oldest first (default: all due)",
    )
    p.add_argument(
        "--max-spill-size",
        default="1G",
        metavar="SIZE",
        help="memory the rewrite may use before it spills to local disk (default: %(default)s)",
    )
    p.add_argument(
        "--target-size",
        default="",
        metavar="SIZE",
        help="target file size (default: delta-rs's, or the table's delta.targetFileSize)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what is due; write nothing")
    add_common_options(p)
    return p


def request_from_args(args: argparse.Namespace) -> ClusterRequest:
    if args.max_partitions is not None and args.max_partitions < 1:
        raise InvalidInputError(f"--max-partitions must be 1 or more, not {args.max_partitions}")
    return ClusterRequest(
        main=parse_location(args.main),
        by=parsing.parse_keys(args.by),
        skip_newest=args.skip_newest,
        max_partitions=args.max_partitions,
        dry_run=args.dry_run,
        storage_options=storage_options_from(args),
        target_size=parsing.parse_size(args.target_size, "--target-size")
        if args.target_size
        else None,
        max_spill_size=parsing.parse_size(args.max_spill_size, "--max-spill-size")
        if args.max_spill_size
        else DEFAULT_SPILL_BYTES,
    )


def run(argv: Sequence[str] | None = None) -> int:
    metrics = ClusterMetrics()

    def cluster(
        args: argparse.Namespace, _fmt: str, stop: StopFlag, options: dict[str, str]
    ) -> None:
        request = request_from_args(args)
        options.update(request.storage_options)
        run_cluster(request, metrics, should_stop=stop.is_set)

    return run_command(argv, build_parser(), metrics, cluster, "cluster finished")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    leave(run(argv))


if __name__ == "__main__":
    main()
