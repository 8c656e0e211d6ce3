"""Print the parallel benchmark's table (bench/results/parallel*.json) as Markdown for the README.

python bench/parallel_report.py [bench/results/parallel.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "parallel.json"
HEADER = (
    "| rows | layout | cores | N | wall s (runs) | wall vs N=1, paired | CPU s (all shards)"
    " | per shard: wall s / CPU s / peak RSS MiB | main key MiB read per shard |"
)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    record = json.loads(path.read_text())
    results = record["results"]
    print(HEADER)
    print("|---|---|---|---:|---|---:|---:|---|---|")
    for r in results:
        runs = [float(x) for x in r["runs_wall_seconds"]]
        shards = "; ".join(
            f"{s['seconds']:.2f} / {s['cpu_seconds']:.2f} / {s['peak_rss_mib']:.0f}"
            for s in r["per_shard"]
        )
        keys = "; ".join(f"{(s['main_key_bytes_read'] or 0) / 2**20:.1f}" for s in r["per_shard"])
        spread = f"{min(runs):.2f}-{max(runs):.2f}"
        print(
            f"| {r['rows']} | {r['layout']} | {r['cpus']} | {r['shards']}"
            f" | {r['wall_seconds']:.2f} ({spread})"
            f" | {r['paired_ratio_median']:.2f}x | {r['cpu_seconds']:.2f} | {shards} | {keys} |"
        )
    print(f"\nMachine: {record['machine']} ({record['when']}).")


if __name__ == "__main__":
    main()
