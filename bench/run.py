"""Benchmark: stagingmerge against the original design and the plain-append limit.

    python bench/run.py --main-rows 1000000 --staging-rows 100000

Data (cached under bench/data/, deterministic): CT-like rows (~2.2 KB, `as_der`
1.6 KB of random base64) from 8 logs interleaved in every file, as a live writer
leaves them; main partitioned by `seen_date`; staging overlaps main by
`--overlap` of its keys. Each contender runs as a fresh process on the same
main, which is reset to its original version afterwards; wall time and the
child's peak RSS are measured from outside (wait4).

Contenders:
  stagingmerge  the `stagingmerge-merge` CLI (with --keep-staging)
  append        the plain-append limit: read staging, append the rows known to be
                new (an oracle: no look at main at all)
  original      the original design: collect all of staging, then one insert-only
                MERGE per 8,192 rows with the key-only predicate
  spark         Delta Spark 4.0 (local, every core): MERGE INTO main USING staging ON
                the keys WHEN NOT MATCHED THEN INSERT *, Delta's insert-only merge on;
                its seconds include the JVM and session start, reported apart too
                (needs `make test`'s Spark install: pyspark and .tools/delta jars)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
CONTENDERS = ("stagingmerge", "append", "original", "spark")
DEFAULT_CONTENDERS = ("stagingmerge", "append", "original")  # spark: asked for by name
LOGS = 8
FILE_ROWS = 100_000  # rows per main commit: each file holds every log, interleaved


@dataclass
class Result:
    contender: str
    main_rows: int
    staging_rows: int
    batch_rows: int
    seconds: float
    peak_rss_mib: float
    rows_per_second: float
    inserted: int
    exit_code: int
    batches: int | None = None
    batch_seconds_median: float | None = None
    batch_seconds_max: float | None = None
    startup_seconds: float | None = None  # spark: the JVM's and the session's start
    merge_seconds: float | None = None  # spark: the MERGE statement alone


def in_main(offset: int, overlap: float) -> bool:
    """Whether the staging key at `offset` within its log's staging range is in main:
    `overlap` of the range, spread evenly (a live writer that lost part of the stream)."""
    return int((offset + 1) * overlap) > int(offset * overlap)


def generate(
    main_rows: int, staging_rows: int, overlap: float, by_log: bool = False
) -> tuple[Path, Path]:
    """main: main_rows entries of 8 logs interleaved in arrival order; staging: a backfill of
    a range of each log in index order, of which main already holds `overlap` (spread
    evenly, so every batch has the same mix). Written once, reused across runs.

    Staging's files interleave the 8 logs, unless `by_log`: then the backfill is written log
    after log, so each file holds one log's contiguous range (files in key order, as a
    backfill that works through its logs one at a time leaves them; folder `staging-by-log`
    beside the same main)."""
    from datetime import UTC, datetime, timedelta

    from deltalake import DeltaTable, write_deltalake

    from stagingmerge_merger.sample import ct_table

    folder = DATA / f"main{main_rows}-staging{staging_rows}-overlap{overlap:g}"
    main, staging = folder / "main", folder / "staging"
    done = folder / ".complete"
    if by_log:
        return main, _staging_by_log(generate(main_rows, staging_rows, overlap)[0])
    if done.exists():
        return main, staging
    shutil.rmtree(folder, ignore_errors=True)
    per_log, s_per_log = main_rows // LOGS, staging_rows // LOGS
    held = sum(in_main(o, overlap) for o in range(s_per_log))
    low = per_log - held  # main: [0, low) and the held part of [low, low + s_per_log)
    main_offsets = list(range(low)) + [low + o for o in range(s_per_log) if in_main(o, overlap)]
    # Logs at very different index ranges, as real CT logs are.
    bases = [i * 37_000_000 + 1_000_000 for i in range(LOGS)]
    log_ids = [log for _ in range(per_log) for log in range(LOGS)]
    indexes = [bases[log] + main_offsets[i // LOGS] for i, log in enumerate(log_ids)]
    step = timedelta(seconds=0.5)
    for start in range(0, len(indexes), FILE_ROWS):
        table = ct_table(
            log_ids[start : start + FILE_ROWS],
            indexes[start : start + FILE_ROWS],
            seed=start,
            seen_start=datetime(2025, 10, 1, tzinfo=UTC) + start * step,
            seen_step=step,
        )
        write_deltalake(main, table, partition_by=["seen_date"], mode="append")
        print(f"main: {start + table.num_rows:,} rows", file=sys.stderr)
    DeltaTable(str(main)).create_checkpoint()  # as a live table would have
    s_logs = [log for _ in range(s_per_log) for log in range(LOGS)]
    s_indexes = [bases[log] + low + i // LOGS for i, log in enumerate(s_logs)]
    for start in range(0, len(s_indexes), FILE_ROWS // 4):
        stop = start + FILE_ROWS // 4
        table = ct_table(
            s_logs[start:stop],
            s_indexes[start:stop],
            seed=10**9 + start,
            seen_start=datetime(2025, 12, 1, tzinfo=UTC),
        )
        write_deltalake(staging, table, mode="append")
    (folder / "oracle.json").write_text(
        json.dumps({"low": low, "overlap": overlap, "bases": bases})
    )
    done.touch()
    return main, staging


def _staging_by_log(main: Path) -> Path:
    """The staging of the same backfill with its rows ordered by (log, index): generate's
    staging, rewritten in files of one log's contiguous range each."""
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from stagingmerge_merger.delta import Table
    from stagingmerge_merger.storage import parse_location

    staging, target = main.with_name("staging"), main.with_name("staging-by-log")
    done = main.with_name(".complete-by-log")
    if done.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    table = Table.open(parse_location(str(staging)), {})
    urls = pc.unique(table.scan(["source_url"], None)["source_url"]).to_pylist()
    for url in sorted(urls):
        rows = table.scan(None, f"source_url = '{url}'").sort_by([("cert_index", "ascending")])
        for start in range(0, rows.num_rows, FILE_ROWS // 4):
            write_deltalake(target, rows.slice(start, FILE_ROWS // 4), mode="append")
    done.touch()
    return target


def snapshot(table: Path) -> dict[Path, bytes | None]:
    """Every file of the table; the bytes of its log's files too (small, and the ones a
    writer may rewrite in place: Spark's MERGE rewrites `_last_checkpoint`)."""
    return {
        p: p.read_bytes() if "_delta_log" in p.parts else None
        for p in table.rglob("*")
        if p.is_file()
    }


def restore(table: Path, before: dict[Path, bytes | None]) -> None:
    """Put main back as it was: remove every file a contender added, rewrite every log
    file it changed."""
    for path in set(snapshot(table)) - set(before):
        path.unlink()
    for path, content in before.items():
        if content is not None and path.read_bytes() != content:
            path.write_bytes(content)


def run_contender(
    name: str, main: Path, staging: Path, batch_rows: int
) -> tuple[int, float, float, str]:
    """Run one contender as a child process; (exit code, seconds, peak RSS MiB, output).

    getrusage(RUSAGE_CHILDREN) is the peak over reaped children, so this is called
    from a fresh `run.py --one` process whose only child is the contender."""
    if name == "stagingmerge":
        exe = Path(sys.executable).with_name("stagingmerge-merge")
        cmd = [
            str(exe),
            "--main",
            str(main),
            "--staging",
            str(staging),
            "--keep-staging",
            "--batch-rows",
            str(batch_rows),
            "--log-format",
            "json",
            "--metrics-file",
            os.devnull,
        ]
    else:
        cmd = [sys.executable, str(HERE / "contenders.py"), name, str(main), str(staging)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return proc.returncode, seconds, rss_mib, proc.stdout + proc.stderr


def parse_batches(output: str) -> list[float]:
    seconds = []
    for line in output.splitlines():
        if '"batch done"' in line:
            seconds.append(float(json.loads(line)["seconds"]))
    return seconds


def parse_answer(output: str) -> dict[str, float]:
    """The contender's last JSON line holding "inserted" ({"inserted": -1} if none)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{") and '"inserted"' in line:
            try:
                answer = json.loads(line)
                int(answer["inserted"])
            except (ValueError, KeyError):
                continue
            return dict(answer)
    return {"inserted": -1}


def one(args: argparse.Namespace) -> None:
    """Run one contender in this (fresh) process's only child; print a Result as JSON."""
    main, staging = Path(args.main), Path(args.staging)
    before = snapshot(main)
    try:
        code, seconds, rss, output = run_contender(args.one, main, staging, args.batch_rows)
    finally:
        restore(main, before)
    batches = parse_batches(output)
    if code != 0:
        print(output[-3000:], file=sys.stderr)
    answer = parse_answer(output)
    ordered = sorted(batches)
    result = Result(
        contender=args.one,
        main_rows=args.main_rows,
        staging_rows=args.staging_rows,
        batch_rows=args.batch_rows,
        seconds=round(seconds, 2),
        peak_rss_mib=round(rss, 1),
        rows_per_second=round(args.staging_rows / seconds),
        inserted=int(answer["inserted"]),
        exit_code=code,
        batches=len(batches) or None,
        batch_seconds_median=ordered[len(ordered) // 2] if ordered else None,
        batch_seconds_max=ordered[-1] if ordered else None,
        startup_seconds=answer.get("startup_seconds"),
        merge_seconds=answer.get("merge_seconds"),
    )
    print(json.dumps(asdict(result)))


def precompile() -> None:
    """Compile the project's modules to bytecode before measuring, as the images' `pip
    install` does: an editable install run with PYTHONDONTWRITEBYTECODE=1 would otherwise
    compile them again in every merge process (measured: 0.1-0.2 s of each start)."""
    import compileall

    root = HERE.parent
    for package in (root / "merger", root / "operator"):
        compileall.compile_dir(package, quiet=1)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    except OSError:
        mem = 0
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem} GiB RAM, {platform.system()}, Python "
        f"{platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main-rows", type=int, default=1_000_000)
    parser.add_argument("--staging-rows", type=int, default=100_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-rows", type=int, default=250_000)
    parser.add_argument(
        "--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"of {', '.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per contender; the median run is reported"
    )
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--main", help=argparse.SUPPRESS)
    parser.add_argument("--staging", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    precompile()
    main_path, staging_path = generate(args.main_rows, args.staging_rows, args.overlap)
    RESULTS.mkdir(exist_ok=True)
    results = []
    for name in args.contenders.split(","):
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--main",
            str(main_path),
            "--staging",
            str(staging_path),
            "--main-rows",
            str(args.main_rows),
            "--staging-rows",
            str(args.staging_rows),
            "--batch-rows",
            str(args.batch_rows),
        ]
        runs = []
        for _ in range(1 if name in ("original", "spark") else args.repeat):
            out = subprocess.run(command, check=True, capture_output=True, text=True)
            if out.stderr:
                print(out.stderr, file=sys.stderr)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["seconds"])
        result = runs[len(runs) // 2]  # the median run
        result["runs"] = len(runs)
        result["peak_rss_mib_max"] = max(r["peak_rss_mib"] for r in runs)
        results.append(result)
        print(json.dumps(result), flush=True)
    name = f"main{args.main_rows}-staging{args.staging_rows}-batch{args.batch_rows}.json"
    path = RESULTS / name
    ran = {r["contender"] for r in results}
    here, today = machine(), time.strftime("%Y-%m-%d")
    for r in results:
        r["machine"], r["when"] = here, today
    if path.exists():  # keep the contenders not run this time (e.g. the slow original)
        old = json.loads(path.read_text())
        kept = [r for r in old.get("results", []) if r["contender"] not in ran]
        for r in kept:  # each keeps the machine and day it was measured on
            r.setdefault("machine", old.get("machine"))
            r.setdefault("when", old.get("when"))
        results = kept + results
    record = {"machine": here, "when": today, "results": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {RESULTS / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
