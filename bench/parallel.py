"""Parallel benchmark: one merge as N shard processes, the way an Indexed Job runs them.

    python bench/parallel.py [--rows narrow,ct] [--main-rows 10000000]
                             [--staging-rows 1000000] [--shards 1,2] [--repeat 5]

Two kinds of rows (`--rows`), both cached under bench/data/:
  narrow  the scale benchmark's (bench/scale.py): keys, a 70-byte payload and seen_date
          (~100 bytes a row). Main: `--main-rows` rows as a live writer leaves them (40
          logs interleaved in every file, day partitions, checkpointed), and its
          clustered copy; staging: one log's backfill of `--staging-rows` rows from that
          log's first index in main on (half of it is in main already). A merge of these
          is mostly fixed costs (starting Python, loading pyarrow and delta-rs): the
          pessimistic case for shards.
  ct      Certificate Transparency entries, the product's data (bench/run.py: 20 columns,
          ~1.8 KB a row on disk; main: 8 logs interleaved in every file, partitioned by
          seen_date, checkpointed; staging: a backfill of 8 logs, half of it in main),
          unclustered main only (clustering a main of this size is not part of it), with
          staging's files in two layouts (`--ct-staging`): `by-log`, each file one log's
          contiguous range, as a backfill working through its logs leaves them (files in
          key order), and `interleaved`, every file holding all 8 logs (each shard then
          reads all of staging's rows to keep its half).
For each N, the N processes
`stagingmerge-merge --shard i/N --keep-staging --batch-rows 250000` start together on a
fresh copy of main (the files a run added are removed after it); reported: the wall time
from the first start to the last exit, each shard's wall and CPU time (user + system,
from wait4) and peak RSS. Each configuration runs `--repeat` times, alternating N: the
median run is kept, and each run's wall time is also divided by that of the N=1 run just
before it (`paired_ratios`; their median is the ratio the README reports, which the
machine's drift in speed from one run to the next leaves alone). Results go to
bench/results/parallel.json (other sizes: parallel-<main rows>-<staging rows>.json);
`python bench/parallel_report.py [FILE]` prints them as the README's table.

Two ways of sharing the machine's cores (`--cpus`): `shared` lets every process use all of
them (pods without a CPU limit on one node); `1` pins each process to a core of its own
(sched_setaffinity), as pods with `limits.cpu: 1` on separate cores would run. The
processes are started from a fresh `--run` child that imports nothing heavy, so each
one's peak RSS is its own (a forked child's ru_maxrss starts at its parent's size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import generate, machine, precompile, restore, snapshot  # noqa: E402 - not a package
from scale import clustered_copy, generate_main, generate_staging  # noqa: E402

RESULTS = HERE / "results"
MERGE = Path(sys.executable).with_name("stagingmerge-merge")


def run_shards(main: Path, staging: Path, count: int, pinned: bool) -> dict[str, object]:
    """All `count` shards at once; their timings, and the merge's summed counts."""
    shutil.rmtree(staging / "_stagingmerge", ignore_errors=True)  # plan afresh every run
    before = snapshot(main)
    cores = sorted(os.sched_getaffinity(0))
    started = time.monotonic()
    pending = {}
    for index in range(count):
        shard = ["--shard", f"{index}/{count}"] if count > 1 else []
        core = {cores[index % len(cores)]}
        proc = subprocess.Popen(
            [str(MERGE), "--main", str(main), "--staging", str(staging), "--keep-staging",
             "--batch-rows", "250000", "--log-format", "json", "--metrics-file", os.devnull,
             *shard],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=(lambda core=core: os.sched_setaffinity(0, core)) if pinned else None,
        )  # fmt: skip
        pending[proc.pid] = (time.monotonic(), proc)
    shards = []
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in pending:
            continue
        began, proc = pending.pop(pid)
        ended = time.monotonic()
        out = proc.stdout.read() if proc.stdout else ""
        metrics = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        shards.append(
            {
                "exit_code": os.waitstatus_to_exitcode(status),
                "seconds": round(ended - began, 2),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "shard": metrics.get("shard"),
                "inserted": metrics.get("inserted"),
                "staging_rows": metrics.get("staging_rows"),
                "main_key_bytes_read": metrics.get("main_key_bytes_read"),
            }
        )
    wall = time.monotonic() - started
    restore(main, before)
    shards.sort(key=lambda s: str(s["shard"]))
    return {
        "shards": count,
        "cpus": "1 per process" if pinned else "shared",
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(sum(float(s["cpu_seconds"]) for s in shards), 2),  # type: ignore[arg-type]
        "inserted": sum(int(s["inserted"] or 0) for s in shards),  # type: ignore[call-overload]
        "staging_rows": sum(int(s["staging_rows"] or 0) for s in shards),  # type: ignore[call-overload]
        "per_shard": shards,
    }


def run_fresh(main: Path, staging: Path, count: int, pinned: bool) -> dict[str, object]:
    """run_shards in a fresh `--run` process (see the module docstring)."""
    out = subprocess.run(
        [sys.executable, __file__, "--run", str(main), str(staging), str(count), str(int(pinned))],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="narrow,ct", help="narrow, ct, or both")
    parser.add_argument("--main-rows", type=int, default=10_000_000)
    parser.add_argument("--staging-rows", type=int, default=1_000_000)
    parser.add_argument("--shards", default="1,2")
    parser.add_argument("--layouts", default="unclustered,clustered", help="narrow rows' main")
    parser.add_argument("--ct-staging", default="by-log,interleaved", help="CT staging's files")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpus", default="shared,1", help="shared, 1 (per process), or both")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        main_path, staging_path, count, pinned = args.run
        result = run_shards(Path(main_path), Path(staging_path), int(count), pinned == "1")
        print(json.dumps(result))
        return
    precompile()
    wanted = args.layouts.split(",")
    setups: list[tuple[str, str, Path, Path]] = []  # (rows, layout, main, staging)
    if "narrow" in args.rows.split(","):
        unclustered = generate_main(args.main_rows)
        staging = generate_staging(args.staging_rows)
        if "unclustered" in wanted:
            setups.append(("narrow", "unclustered", unclustered, staging))
        if "clustered" in wanted:
            setups.append(("narrow", "clustered", clustered_copy(unclustered)[0], staging))
    if "ct" in args.rows.split(","):
        for order in args.ct_staging.split(","):
            by_log = order == "by-log"
            ct_main, ct_staging = generate(args.main_rows, args.staging_rows, 0.5, by_log=by_log)
            setups.append((f"ct, staging {order}", "unclustered", ct_main, ct_staging))
    counts = [int(n) for n in args.shards.split(",")]
    results = []
    modes = [mode == "1" for mode in args.cpus.split(",")]
    for kind, layout, main_path, staging in setups:
        for pinned in modes:
            runs: dict[int, list[dict[str, object]]] = {n: [] for n in counts}
            for _ in range(args.repeat):
                for count in counts:  # alternating, so drift in the machine's load hits both
                    result = run_fresh(main_path, staging, count, pinned)
                    failed = [s for s in result["per_shard"] if s["exit_code"] != 0]  # type: ignore[attr-defined]
                    assert not failed, result
                    runs[count].append(result)
                    print(json.dumps({"rows": kind, "layout": layout, **result}), flush=True)
            walls = {n: [float(r["wall_seconds"]) for r in found] for n, found in runs.items()}  # type: ignore[arg-type]
            for count, found in runs.items():
                median = statistics.median(walls[count])
                kept = min(found, key=lambda r: abs(float(r["wall_seconds"]) - median))  # type: ignore[arg-type]
                # each run against the N=1 run just before it: slow drift in this shared
                # machine's speed cancels out of the pair
                paired = [n / one for n, one in zip(walls[count], walls[counts[0]], strict=True)]
                results.append(
                    {
                        "rows": kind,
                        "layout": layout,
                        "main_rows": args.main_rows,
                        "staging_rows_total": args.staging_rows,
                        "runs_wall_seconds": walls[count],
                        "paired_ratios": [round(x, 3) for x in paired],
                        "paired_ratio_median": round(statistics.median(paired), 3),
                        **kept,
                    }
                )
    RESULTS.mkdir(exist_ok=True)
    record = {"machine": machine(), "when": time.strftime("%Y-%m-%d"), "results": results}
    default = (args.main_rows, args.staging_rows) == (10_000_000, 1_000_000)
    name = "parallel.json" if default else f"parallel-{args.main_rows}-{args.staging_rows}.json"
    (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        single = next(
            x
            for x in results
            if (x["rows"], x["layout"], x["cpus"], x["shards"])
            == (r["rows"], r["layout"], r["cpus"], 1)
        )
        ratio = float(r["wall_seconds"]) / float(single["wall_seconds"])  # type: ignore[arg-type]
        print(
            f"{r['rows']} rows, {r['layout']}, cpus {r['cpus']}: N={r['shards']} wall"
            f" {r['wall_seconds']} s ({ratio:.2f}x N=1's median, {r['paired_ratio_median']:.2f}x"
            f" paired), cpu {r['cpu_seconds']} s"
        )


if __name__ == "__main__":
    main()
