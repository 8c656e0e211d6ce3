"""Scale benchmark: does a merge's cost grow with main? (issue 10)

    python bench/scale.py --main-rows 1000000,10000000,100000000 --staging-rows 200000,1000000

Data (cached under bench/data/scale-*, deterministic): a narrow main (source_url,
cert_index, a 70-byte payload, seen_date) as a live writer leaves it: 40 logs interleaved
in arrival order in every 500 K-row file, each log at its own height of cert_index,
25 M rows per day partition, checkpointed. Staging is one log's backfill (log 0,
positions [0, S)); main already holds every other one of those, so half of staging is
new. Where main holds them is --backfill-log: spread over the files (`lowest`, `middle`),
or in a window of 4 files mid-main (`gap`, main >= 4 M rows; see BACKFILL_LOG). The
clustered layout is a copy of main after `stagingmerge-cluster --skip-newest 0`;
the indexed layout a copy of the unclustered main with its key-range index built by
`stagingmerge-index` (the build's seconds in `index_seconds`).

Each contender runs --repeat times (default 3, contenders interleaved); the run of median
wall time is reported, with every run's time. Contenders, each a child of a fresh
`scale.py --one` process (its peak RSS and I/O are the child's; /proc/self/io counts
reaped children):
  stagingmerge  the merge CLI (--keep-staging, --batch-rows 250000, default options)
  stagingmerge-noindex  the same with --no-key-index (the merge without the key-range index;
                on the unclustered layout `stagingmerge` is then a first run, building
                the index on the way: every run's additions to main are removed after it)
  append        the limit: read staging, append the rows known to be new (an oracle)
  keyscan       one bare scan of main's key columns through delta-rs (`DeltaTable.scan`,
                its defaults: the I/O floor of any design that reads main's keys once)
  keyscan-partitioned  the same scan in as many DataFusion partitions as the merge uses
                (delta.SCAN_CONFIG): the floor like for like

Bytes read from main: before each run main's files are evicted from the page cache
(posix_fadvise DONTNEED) and staging's are preloaded, so the run's block reads
(`read_bytes`) are main's. Main's key-column bytes come from the Parquet footers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from run import machine, precompile, restore, snapshot  # noqa: E402 - bench/ is not a package

LOGS = 40
FILE_ROWS = 500_000
DAY_ROWS = 25_000_000
BACKFILL_MAX = 1_000_000  # main holds the even positions of log 0's [0, BACKFILL_MAX)
BASES = [i * 3_700_000_000 + 1_000_000 for i in range(LOGS)]
# Which log the backfill is of (--backfill-log, passed to the child processes through the
# environment): "lowest", log 0 below every other log's cert_index, so each file's minimum
# of cert_index lets the statistics skip the files past the backfill's range; or "middle",
# log 0 between other logs, as most logs are: every file's statistics span it, nothing
# prunes, and only clustering or the key-range index can.
# Or "gap": log 0 in the middle too, and in every file (1 row in LOGS), but the entries main
# holds of the backfill's range sit in one window of GAP_SHARE * BACKFILL_MAX / 2 rows in the
# middle of main (log 0 takes 1 row in GAP_SHARE there): the log had a gap, backfilled
# later. Every file's statistics span the backfill; per log, only the window's files meet it.
BACKFILL_LOG = os.environ.get("SCALE_BACKFILL_LOG", "lowest")
if BACKFILL_LOG in ("middle", "gap"):
    BASES[0] = BASES[LOGS // 2] + 1_850_000_000
GAP_SHARE = 4
VARIANT = "" if BACKFILL_LOG == "lowest" else f"-{BACKFILL_LOG}"
URLS = [f"https://ct.example.net/logs/log{i:02d}/" for i in range(LOGS)]
KEYS = ("source_url", "cert_index")


def chunk(start: int, rows: int, total: int) -> object:
    """Rows [start, start + rows) of main's arrival stream, as an Arrow table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def mod(values: object, by: int) -> object:
        return pc.subtract(values, pc.multiply(pc.divide(values, by), by))

    i = pa.array(range(start, start + rows), pa.int64())
    if BACKFILL_LOG == "gap":
        log, position = gap_layout(start, rows, total)
    else:
        every = max(1, total // (BACKFILL_MAX // 2))  # log 0's held entries, spread evenly
        held = pc.and_(pc.equal(mod(i, every), 0), pc.less(pc.divide(i, every), BACKFILL_MAX // 2))
        log = pc.if_else(held, 0, pc.add(mod(i, LOGS - 1), 1))
        position = pc.if_else(held, pc.multiply(pc.divide(i, every), 2), pc.divide(i, LOGS - 1))
    index = pc.add(pa.array(BASES, pa.int64()).take(log), position)
    first_day = datetime(2026, 1, 1, tzinfo=UTC)
    days = sorted(set(range(start // DAY_ROWS, (start + rows - 1) // DAY_ROWS + 1)))
    names = pa.array([(first_day + timedelta(days=d)).strftime("%Y-%m-%d") for d in days])
    dates = names.take(pc.subtract(pc.divide(i, DAY_ROWS), days[0]))
    return pa.table(
        {
            "source_url": pa.array(URLS).take(log),
            "cert_index": index,
            "payload": pc.utf8_lpad(pc.cast(index, pa.string()), 70, "p"),
            "seen_date": dates,
        }
    )


def gap_layout(start: int, rows: int, total: int) -> tuple[object, object]:
    """Rows [start, start + rows) of the "gap" main: (log, position in the log) per row.
    Outside the window log 0 is every LOGS-th row, at positions below 0 before it and from
    BACKFILL_MAX on after it; inside, every GAP_SHARE-th row, at the even positions of
    [0, BACKFILL_MAX). Every other row is one of logs 1.. in turn."""
    import numpy as np
    import pyarrow as pa

    window = GAP_SHARE * (BACKFILL_MAX // 2)
    if total < 2 * window:
        raise SystemExit(f"--backfill-log gap needs a main of at least {2 * window} rows")
    first = (total // 2 - window // 2) // FILE_ROWS * FILE_ROWS
    i = np.arange(start, start + rows, dtype=np.int64)
    k = i - first
    inside = (k >= 0) & (k < window)
    log = (1 + i % (LOGS - 1)).astype(np.int64)
    position = i // (LOGS - 1)
    held = inside & (k % GAP_SHARE == 0)
    before = (k < 0) & (i % LOGS == 0)
    after = (k >= window) & (i % LOGS == 0)
    log[held | before | after] = 0
    position[held] = 2 * (k[held] // GAP_SHARE)
    position[before] = -((first - i[before]) // LOGS) - 1
    position[after] = BACKFILL_MAX + (k[after] - window) // LOGS
    return pa.array(log), pa.array(position)


def generate_main(rows: int) -> Path:
    from deltalake import DeltaTable, write_deltalake

    main = DATA / f"scale-main{rows}{VARIANT}" / "main"
    done = main.parent / ".complete"
    if done.exists():
        return main
    shutil.rmtree(main.parent, ignore_errors=True)
    for start in range(0, rows, FILE_ROWS):
        table = chunk(start, min(FILE_ROWS, rows - start), rows)
        write_deltalake(main, table, partition_by=["seen_date"], mode="append")
        if (start // FILE_ROWS) % 20 == 0:
            print(f"main{rows}: {start + FILE_ROWS:,} rows", file=sys.stderr)
    DeltaTable(str(main)).create_checkpoint()
    done.touch()
    return main


def prepared_copy(main: Path, layout: str, command: str, *args: str) -> tuple[Path, float]:
    """A copy of the unclustered main that `command` (a stagingmerge CLI) ran on, cached
    under the layout's name; also the seconds the command took."""
    target = main.parent / layout
    done = main.parent / f".{layout}"
    if done.exists():
        return target, float(done.read_text() or 0)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(main, target)
    exe = Path(sys.executable).with_name(command)
    started = time.monotonic()
    subprocess.run(
        [str(exe), "--main", str(target), *args, "--log-format", "json"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    done.write_text(f"{seconds:.1f}")
    return target, seconds


def clustered_copy(main: Path) -> tuple[Path, float]:
    return prepared_copy(main, "clustered", "stagingmerge-cluster", "--skip-newest", "0")


def indexed_copy(main: Path) -> tuple[Path, float]:
    """With its key-range index built (the build's seconds)."""
    return prepared_copy(main, "indexed", "stagingmerge-index")


def generate_staging(rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    staging = DATA / f"scale-staging{rows}{VARIANT}"
    if (staging / ".complete").exists():
        return staging / "table"
    shutil.rmtree(staging, ignore_errors=True)
    for start in range(0, rows, FILE_ROWS // 2):
        n = min(FILE_ROWS // 2, rows - start)
        index = pa.array(range(BASES[0] + start, BASES[0] + start + n), pa.int64())
        table = pa.table(
            {
                "source_url": pa.array([URLS[0]] * n),
                "cert_index": index,
                "payload": pc.utf8_lpad(pc.cast(index, pa.string()), 70, "p"),
                "seen_date": pa.array(["2025-12-31"] * n),
            }
        )
        write_deltalake(staging / "table", table, mode="append")
    (staging / ".complete").touch()
    return staging / "table"


def key_column_bytes(main: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    total = 0
    for path in pa.table(DeltaTable(str(main)).get_add_actions(flatten=True)).column("path"):
        meta = pq.read_metadata(main / path.as_py())
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                if meta.row_group(g).column(c).path_in_schema in KEYS:
                    total += meta.row_group(g).column(c).total_compressed_size
    return total


# --- one contender in a fresh process ----------------------------------------------------


def evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def preload(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def io_counters() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(v) for k, v in fields.items()}


def contender_command(name: str, main: Path, staging: Path) -> list[str]:
    if name == "stagingmerge":
        exe = Path(sys.executable).with_name("stagingmerge-merge")
        return [
            str(exe), "--main", str(main), "--staging", str(staging), "--keep-staging",
            "--batch-rows", "250000", "--log-format", "json", "--metrics-file", os.devnull,
        ]  # fmt: skip
    if name == "stagingmerge-noindex":  # the merge as it was before the key-range index
        return [*contender_command("stagingmerge", main, staging), "--no-key-index"]
    if name == "keyscan":
        code = (
            "import sys, pyarrow as pa; from deltalake import DeltaTable\n"
            "n = sum(pa.record_batch(b).num_rows for b in DeltaTable(sys.argv[1]).scan("
            "columns=['source_url', 'cert_index']))\n"
            "print('{\"rows\": %d}' % n)"
        )
        return [sys.executable, "-c", code, str(main)]
    if name == "keyscan-partitioned":
        from stagingmerge_merger.delta import SCAN_CONFIG

        code = (
            "import sys, json, pyarrow as pa; from deltalake import DeltaTable, QueryBuilder\n"
            "q = QueryBuilder(json.loads(sys.argv[2])).register('t', DeltaTable(sys.argv[1]))\n"
            "n = sum(b.num_rows for b in q.execute('SELECT source_url, cert_index FROM t'))\n"
            "print('{\"rows\": %d}' % n)"
        )
        return [sys.executable, "-c", code, str(main), json.dumps(SCAN_CONFIG)]
    return [sys.executable, str(HERE / "scale.py"), "--append", str(main), str(staging)]


def one(name: str, main: Path, staging: Path) -> dict[str, object]:
    before = snapshot(main)
    evict(main)
    preload(staging)
    io_before = io_counters()
    started = time.monotonic()
    proc = subprocess.run(
        contender_command(name, main, staging), capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    io_after = io_counters()
    restore(main, before)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    batches = [
        float(json.loads(line)["seconds"])
        for line in proc.stderr.splitlines()
        if '"batch done"' in line
    ]
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return {
        "contender": name,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "main_bytes_read": io_after["read_bytes"] - io_before["read_bytes"],
        "batch_seconds": batches,
        "output": json.loads(last),
    }


def plain_append(main: str, staging: str) -> None:
    """The oracle: staging's rows main lacks are the odd positions (and any beyond
    BACKFILL_MAX); append them without looking at main."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable, write_deltalake

    from stagingmerge_merger.delta import Handoff, plain_schema

    dt = DeltaTable(main)
    schema = plain_schema(pa.schema(dt.schema().to_arrow()))
    inserted = 0

    def batches():  # type: ignore[no-untyped-def]
        nonlocal inserted
        for raw in DeltaTable(staging).scan():
            batch = pa.record_batch(raw).select(schema.names).cast(schema)
            position = pc.subtract(batch["cert_index"], BASES[0])
            held = pc.and_(
                pc.equal(pc.bit_wise_and(position, 1), 0), pc.less(position, BACKFILL_MAX)
            )
            keep = batch.filter(pc.invert(held))
            inserted += keep.num_rows
            yield keep

    handoff = Handoff(batches())
    with handoff.feeding():
        write_deltalake(dt, handoff.reader(schema), mode="append")
    sys.stdout.write(json.dumps({"inserted": inserted}) + "\n")
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main-rows", default="1000000,10000000,100000000")
    parser.add_argument("--staging-rows", default="200000,1000000")
    parser.add_argument("--contenders", default="stagingmerge,append,keyscan,keyscan-partitioned")
    parser.add_argument("--layouts", default="unclustered,clustered,indexed")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--backfill-log", choices=["lowest", "middle", "gap"], default=BACKFILL_LOG)
    parser.add_argument("--results", default="scale.json", help="file under bench/results/")
    parser.add_argument(
        "--one", nargs=3, metavar=("NAME", "MAIN", "STAGING"), help=argparse.SUPPRESS
    )
    parser.add_argument("--append", nargs=2, metavar=("MAIN", "STAGING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.append:
        plain_append(*args.append)
        return
    if args.one:
        name, main_path, staging_path = args.one
        print(json.dumps(one(name, Path(main_path), Path(staging_path))))
        return
    if args.backfill_log != BACKFILL_LOG:  # the children and this process alike
        os.environ["SCALE_BACKFILL_LOG"] = args.backfill_log
        os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])
    precompile()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / args.results
    record = json.loads(path.read_text()) if path.exists() else {"results": []}
    for main_rows in [int(x) for x in args.main_rows.split(",")]:
        unclustered = generate_main(main_rows)
        layouts = {"unclustered": (unclustered, None)}
        if "clustered" in args.layouts.split(","):
            target, cluster_seconds = clustered_copy(unclustered)
            layouts["clustered"] = (target, cluster_seconds)
        if "indexed" in args.layouts.split(","):
            layouts["indexed"] = indexed_copy(unclustered)
        for layout, (main, prepared_seconds) in layouts.items():
            if layout not in args.layouts:
                continue
            key_bytes = key_column_bytes(main)
            for staging_rows in [int(x) for x in args.staging_rows.split(",")]:
                staging = generate_staging(staging_rows)
                names = [
                    name
                    for name in args.contenders.split(",")
                    # the key scan is independent of staging: once per main and layout
                    if not name.startswith("keyscan")
                    or staging_rows == int(args.staging_rows.split(",")[0])
                ]
                runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
                for _ in range(args.repeat):  # contenders interleaved: drift hits them alike
                    for name in names:
                        out = subprocess.run(
                            [sys.executable, __file__, "--one", name, str(main), str(staging)],
                            check=True, capture_output=True, text=True,
                        )  # fmt: skip
                        runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                for name in names:
                    result = median_run(runs[name])
                    result.update(
                        main_rows=main_rows,
                        staging_rows=None if name.startswith("keyscan") else staging_rows,
                        layout=layout,
                        main_key_column_bytes=key_bytes,
                        cluster_seconds=prepared_seconds if layout == "clustered" else None,
                        index_seconds=prepared_seconds if layout == "indexed" else None,
                        backfill_log=BACKFILL_LOG,
                    )
                    record["results"] = [
                        r
                        for r in record["results"]
                        if (
                            r["contender"],
                            r["main_rows"],
                            r["staging_rows"],
                            r["layout"],
                            r.get("backfill_log", "lowest"),
                        )
                        != (name, main_rows, result["staging_rows"], layout, BACKFILL_LOG)
                    ] + [result]
                    print(json.dumps(result), flush=True)
                    record.update(machine=machine(), when=time.strftime("%Y-%m-%d"))
                    path.write_text(json.dumps(record, indent=2) + "\n")


def median_run(runs: list[dict[str, object]]) -> dict[str, object]:
    """The run of median wall time (its own bytes, RSS and batches), with every run's time."""
    ordered = sorted(runs, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_seconds"] = [r["seconds"] for r in runs]
    return chosen


if __name__ == "__main__":
    main()
