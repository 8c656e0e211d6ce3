"""Print the scale benchmark's table (bench/results/scale.json) as Markdown for the README.

python bench/scale_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"


def mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:,.1f}"


def main() -> None:
    record = json.loads(RESULTS.read_text())
    results = record["results"]

    def find(contender: str, rows: int, layout: str, staging: int | None) -> dict | None:
        for r in results:
            if (r["contender"], r["main_rows"], r["layout"], r["staging_rows"]) == (
                contender,
                rows,
                layout,
                staging,
            ):
                return r
        return None

    print(
        "| main rows | layout | staging rows | merge s | batches x median s | peak RSS MiB"
        " | main MiB read | key MiB (metrics) | files scanned | append s | key scan s | key scan"
        " MiB read | scan + 1.5 x append s | key scan, merge's partitions s"
        " | main key columns MiB |"
    )
    print("|" + "---:|" * 2 + "---:|" * 13)
    for merge in sorted(
        (r for r in results if r["contender"] == "stagingmerge"),
        key=lambda r: (r["main_rows"], r["layout"] != "unclustered", r["staging_rows"]),
    ):
        rows, layout, staging = merge["main_rows"], merge["layout"], merge["staging_rows"]
        append = find("append", rows, layout, staging) or {}
        scan = find("keyscan", rows, layout, None) or {}
        partitioned = find("keyscan-partitioned", rows, layout, None) or {}
        batches = merge["batch_seconds"]
        median = sorted(batches)[len(batches) // 2] if batches else None
        out = merge["output"]
        bound = scan["seconds"] + 1.5 * append["seconds"] if scan and append else None
        print(
            f"| {rows:,} | {layout} | {staging:,} | {merge['seconds']:.2f}"
            f" | {len(batches)} x {median:.2f} | {merge['peak_rss_mib']:,.0f}"
            f" | {mib(merge['main_bytes_read'])} | {mib(out.get('main_key_bytes_read'))}"
            f" | {out.get('main_files_scanned')} of {out.get('main_files')}"
            f" | {append.get('seconds', '')} | {scan.get('seconds', '')}"
            f" | {mib(scan.get('main_bytes_read'))} | {'' if bound is None else f'{bound:.2f}'}"
            f" | {partitioned.get('seconds', '')} | {mib(merge['main_key_column_bytes'])} |"
        )
    print(f"\nMachine: {record['machine']} ({record['when']}).")


if __name__ == "__main__":
    main()
