"""Turn bench/results/*.json into the README's Markdown table.

python bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    if not records:
        raise SystemExit("no results: run bench/run.py first")
    rows = []
    for record in records:
        by_name = {r["contender"]: r for r in record["results"]}
        append = by_name.get("append")
        original = by_name.get("original")
        for result in record["results"]:
            vs_append = f"{result['seconds'] / append['seconds']:.2f}x" if append else ""
            vs_original = (
                f"{original['seconds'] / result['seconds']:.1f}x faster"
                if original and result is not original
                else ""
            )
            batch = (
                f"{result['batches']} x {result['batch_seconds_median']:.2f} s"
                if result.get("batches")
                else ""
            )
            rows.append(
                (
                    result["main_rows"],
                    result["staging_rows"],
                    result["contender"],
                    f"{result['seconds']:.2f}",
                    f"{result['rows_per_second']:,}",
                    f"{result['peak_rss_mib']:,.0f}",
                    batch,
                    vs_append,
                    vs_original,
                )
            )
    rows.sort(key=lambda r: (r[0], r[1], ["stagingmerge", "append", "original"].index(r[2])))
    print(
        "| main rows | staging rows | contender | seconds | staging rows/s | peak RSS MiB "
        "| batches x median s | vs append | vs original |"
    )
    print("|---:|---:|---|---:|---:|---:|---|---:|---|")
    for row in rows:
        print(f"| {row[0]:,} | {row[1]:,} | " + " | ".join(str(c) for c in row[2:]) + " |")
    machines = {r["machine"] for r in records}
    print(
        f"\nMachine: {'; '.join(sorted(machines))}. "
        f"Median of {records[0]['results'][0].get('runs', 1)} runs (original: 1 run)."
    )


if __name__ == "__main__":
    main()
