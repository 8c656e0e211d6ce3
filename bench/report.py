"""Turn bench/results/*.json into the README's Markdown table.

python bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["stagingmerge", "append", "original", "spark"]


def main() -> None:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("main*.json"))]
    if not records:
        raise SystemExit("no results: run bench/run.py first")
    rows = []
    for record in records:
        by_name = {r["contender"]: r for r in record["results"]}
        append, original = by_name.get("append"), by_name.get("original")
        for r in record["results"]:
            ours = r["contender"] == "stagingmerge"
            rows.append(
                (
                    r["main_rows"],
                    r["staging_rows"],
                    r["batch_rows"] if ours else 0,
                    r["contender"],
                    f"{r['seconds']:.2f}",
                    f"{r['rows_per_second']:,}",
                    f"{r['peak_rss_mib']:,.0f}",
                    f"{r['batches']} x {r['batch_seconds_median']:.2f} s"
                    if r.get("batches")
                    else f"{r['startup_seconds']:.1f} s start, {r['merge_seconds']:.1f} s MERGE"
                    if r.get("merge_seconds") is not None
                    else "",
                    f"{r['seconds'] / append['seconds']:.2f}x" if append else "",
                    versus(original["seconds"], r["seconds"])
                    if original and r is not original
                    else "",
                )
            )
    rows.sort(key=lambda r: (r[0], r[1], -r[2], ORDER.index(r[3])))
    print(
        "| main rows | staging rows | --batch-rows | contender | seconds | staging rows/s "
        "| peak RSS MiB | batches x median (spark: start, MERGE) | time vs append | vs original |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---|---:|---|")
    for row in rows:
        batch = f"{row[2]:,}" if row[2] else ""
        cells = [f"{row[0]:,}", f"{row[1]:,}", batch, *map(str, row[3:])]
        print("| " + " | ".join(cells) + " |")
    measured = sorted(
        {(r.get("machine", rec["machine"]), r.get("when", rec["when"]), r["contender"])
         for rec in records for r in rec["results"]}
    )  # fmt: skip
    by_machine: dict[tuple[str, str], list[str]] = {}
    for where, when, contender in measured:
        names = by_machine.setdefault((where, when), [])
        if contender not in names:
            names.append(contender)
    print()
    for (where, when), names in sorted(by_machine.items(), key=lambda kv: kv[0][1]):
        print(f"- {', '.join(sorted(names, key=ORDER.index))}: {where} ({when})")
    print("\nEach figure is the median of 3 runs (original and spark: 1 run).")


def versus(original: float, seconds: float) -> str:
    ratio = original / seconds
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


if __name__ == "__main__":
    main()
