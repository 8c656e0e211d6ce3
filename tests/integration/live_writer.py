"""A second writer of main, run as its own process by test_concurrency.py.

    python live_writer.py MAIN MODE STOP_FILE OUT_FILE

MODE `append`: blind appends of new keys (log 7, counting up), like the live CT stream.
MODE `insert-if-absent`: MERGEs of keys also in staging (read from OUT_FILE.keys), a few
at a time, with delta-rs's conflict-checked insert-only merge.
It commits every ~30 ms until STOP_FILE exists, then writes what it wrote to OUT_FILE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from stagingmerge_merger.sample import ct_table

PREDICATE = "t.source_url = s.source_url AND t.cert_index = s.cert_index"


def main() -> None:
    main_uri, mode, stop_file, out_file = sys.argv[1:5]
    written: list[list[object]] = []
    commits, conflicts, step = 0, 0, 0
    todo = json.loads(Path(out_file + ".keys").read_text()) if mode == "insert-if-absent" else []
    Path(out_file + ".ready").touch()
    while not Path(stop_file).exists():
        if mode == "append":
            rows = ct_table([7] * 5, range(step * 5, step * 5 + 5), seed=step)
            write_deltalake(main_uri, rows, mode="append")
            written += [[7, i] for i in range(step * 5, step * 5 + 5)]
            commits += 1
        elif todo:
            chunk, todo = todo[:3], todo[3:]
            rows = ct_table([k[0] for k in chunk], [k[1] for k in chunk], seed=10_000 + step)
            try:
                DeltaTable(main_uri).merge(
                    rows, PREDICATE, source_alias="s", target_alias="t"
                ).when_not_matched_insert_all().execute()
                commits += 1
                written += chunk
            except CommitFailedError:
                conflicts += 1
                todo = chunk + todo
        step += 1
        time.sleep(0.03)
    Path(out_file).write_text(
        json.dumps({"keys": written, "commits": commits, "conflicts": conflicts})
    )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
