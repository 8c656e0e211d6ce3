"""Peak RSS after every batch of one merge: shows memory levels off instead of growing.

    python bench/memory_trace.py MAIN STAGING [BATCH_ROWS]

Merges in-process (with --keep-staging) on a copy of MAIN, sampling RSS every 5 ms.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from stagingmerge_merger import allocator

allocator.tune()

from stagingmerge_merger.contract import MergeMetrics  # noqa: E402
from stagingmerge_merger.engine import MergeRequest, run_merge  # noqa: E402
from stagingmerge_merger.logs import configure  # noqa: E402
from stagingmerge_merger.reporting import BatchResult  # noqa: E402
from stagingmerge_merger.storage import parse_location  # noqa: E402


def rss_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 2**20


class Trace:
    def __init__(self) -> None:
        self.peak = rss_mib()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.005)

    def start(self, batches: int, rows: int) -> None:
        print(f"{batches} batches, {rows:,} staging rows; peak RSS before: {self.peak} MiB")

    def batch_done(self, result: BatchResult, metrics: MergeMetrics) -> None:
        print(f"batch {result.index + 1:3}: peak RSS {self.peak} MiB", flush=True)

    def close(self) -> None:
        pass


def main() -> None:
    main_path, staging = Path(sys.argv[1]), sys.argv[2]
    batch_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 250_000
    configure("json", open(os.devnull, "w"))  # noqa: SIM115 - for the whole process
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "main"
        shutil.copytree(main_path, copy)
        request = MergeRequest(
            main=parse_location(str(copy)),
            staging=parse_location(staging),
            batch_rows=batch_rows,
            keep_staging=True,
        )
        run_merge(request, MergeMetrics(), progress=Trace())
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
