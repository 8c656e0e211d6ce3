"""Bytes a backfill reads from main at 10^9 and 10^10 rows, with and without the key-range
index, projected from the measured 100 M-row runs (issue 25, item 4):

    python bench/index_projection.py [bench/results/scale-keyindex.json]

From each backfill layout's largest measured main (bench/scale.py results):
- without the index, every file's key columns are read: the measured bytes per main file
  times the files of the larger main (same 500 K-row files);
- with it, the index itself (its measured bytes per main file, times the files) plus the
  files it keeps, whose count does not grow with main where main's copies of the
  backfill's keys sit in a few files (`gap`); where they are spread over every file
  (`middle`), the files it keeps grow with main, in proportion;
- clustered, the files the key range meets: as measured (it does not grow with main).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale-keyindex.json"
ROWS = (10**9, 10**10)


def mb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def pick(results: list[dict], **where: object) -> dict | None:
    found = [r for r in results if all(r.get(k) == v for k, v in where.items())]
    return max(found, key=lambda r: int(r["main_rows"]), default=None)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    record = json.loads(path.read_text())
    results = [r for r in record["results"] if r["contender"].startswith("stagingmerge")]
    print(f"projected from {path.name} ({record['machine']}, {record['when']})\n")
    print(
        "| backfill | staging | main rows | without the index | with it"
        " | of which the index | clustered |"
    )
    print("|---|---|---|---|---|---|---|")
    for backfill, staging in sorted({(r["backfill_log"], r["staging_rows"]) for r in results}):
        same = {"backfill_log": backfill, "staging_rows": staging}
        plain = pick(results, layout="unclustered", contender="stagingmerge-noindex", **same)
        plain = plain or pick(results, layout="unclustered", **same)
        indexed = pick(results, layout="indexed", **same)
        clustered = pick(results, layout="clustered", **same)
        if plain is None or indexed is None:
            continue
        files = int(indexed["output"]["main_files"])
        per_file = int(plain["main_bytes_read"]) / int(plain["output"]["main_files"])
        index_per_file = int(indexed["output"]["key_index_bytes_read"]) / files
        kept = int(indexed["main_bytes_read"]) - int(indexed["output"]["key_index_bytes_read"])
        # gap: main's copies of the backfill's keys are in the same few files at any size;
        # else they are spread over every file, and the files kept grow with main
        fixed = backfill == "gap"
        for rows in ROWS:
            scale = rows / int(indexed["main_rows"])
            index_bytes = index_per_file * files * scale
            with_index = index_bytes + (kept if fixed else kept * scale)
            without = per_file * int(plain["output"]["main_files"]) * scale
            flat = mb(int(clustered["main_bytes_read"])) if clustered else "-"
            print(
                f"| {backfill} | {staging:,} | {rows:.0e} | {mb(without)} | {mb(with_index)}"
                f" | {mb(index_bytes)} | {flat} |"
            )


if __name__ == "__main__":
    main()
