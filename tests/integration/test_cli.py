"""`stagingmerge-merge` run as a real process: exit codes, metrics file, logs, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from stagingmerge_merger.contract import Outcome
from tests.helpers import CLI, ct, key_list, rows, run_cli, run_cli_after_first_batch, write

METRIC_KEYS = {
    "staging_rows",
    "inserted",
    "skipped_existing",
    "skipped_duplicates",
    "batches",
    "main_version_before",
    "main_version_after",
    "staging_deleted",
    "duration_seconds",
    "outcome",
}


def test_success_writes_metrics_and_one_log_line_per_batch(tables, tmp_path):
    main, staging = tables
    write(main, ct([0] * 5, range(5), seed=1), partition_by=["seen_date"])
    for part in range(3):
        write(staging, ct([0, 1], [part + 3, part], seed=10 + part))
    metrics_file = tmp_path / "metrics.json"

    result = run_cli(
        "--main",
        str(main),
        "--staging",
        str(staging),
        "--batch-rows",
        "2",
        "--metrics-file",
        str(metrics_file),
    )

    assert result.code == 0, result.stderr
    written = json.loads(metrics_file.read_text())
    assert written.keys() >= METRIC_KEYS
    assert written == result.metrics
    assert (
        written["outcome"],
        written["inserted"],
        written["skipped_existing"],
        written["batches"],
        written["staging_deleted"],
    ) == (Outcome.MERGED, 4, 2, 2, True)  # 4 rows to insert, 2 per commit
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["batch"] for e in events if e["event"] == "batch done"] == [1, 2]
    assert all({"level", "timestamp", "event"} <= e.keys() for e in events)
    assert not staging.exists()


def test_text_logs_are_key_value_lines(tables):
    main, staging = tables
    write(staging, ct([0], [1]))
    proc = subprocess.run(
        [CLI, "--main", str(main), "--staging", str(staging), "--log-format", "text"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "batch done" in proc.stderr and "inserted=1" in proc.stderr
    assert not proc.stderr.lstrip().startswith("{")


def test_nothing_to_merge_exits_zero(tables):
    main, staging = tables
    result = run_cli("--main", str(main), "--staging", str(staging))
    assert (result.code, result.metrics["outcome"]) == (0, Outcome.NOTHING_TO_MERGE)


def test_invalid_input_exits_two_with_one_line_and_metrics(tables, tmp_path):
    main, staging = tables
    metrics_file = tmp_path / "m.json"
    result = run_cli(
        "--main",
        str(main),
        "--staging",
        str(staging),
        "--batch-rows",
        "0",
        "--metrics-file",
        str(metrics_file),
    )
    assert result.code == 2
    assert result.error_lines == ["--batch-rows must be a positive number of rows, got 0"]
    assert json.loads(metrics_file.read_text())["outcome"] == Outcome.INVALID_INPUT


def test_usage_errors_are_invalid_input(tables):
    result = run_cli("--staging", "x")
    assert result.code == 2
    assert "the following arguments are required: --main" in result.error_lines[0]


def test_sigterm_stops_after_a_committed_batch_and_a_rerun_finishes(tmp_path):
    def build(name: str) -> tuple[Path, Path]:
        main, staging = tmp_path / f"{name}-main", tmp_path / f"{name}-staging"
        write(main, ct([0] * 10, range(10), seed=1))
        for part in range(40):
            write(staging, ct([0, 1] * 10, [part * 10 + i // 2 for i in range(20)], seed=part))
        return main, staging

    reference, reference_staging = build("reference")
    assert (
        run_cli(
            "--main", str(reference), "--staging", str(reference_staging), "--batch-rows", "20"
        ).code
        == 0
    )
    main, staging = build("signal")
    result = run_cli_after_first_batch(
        "--main",
        str(main),
        "--staging",
        str(staging),
        "--batch-rows",
        "20",
        then=lambda proc: proc.send_signal(signal.SIGTERM),
    )
    metrics = result.metrics

    assert result.code == 1, result.stderr
    assert metrics["outcome"] == Outcome.INTERRUPTED and 1 <= metrics["batches"] < 40
    assert staging.exists()
    keys = key_list(main)
    assert len(keys) == len(set(keys)) == 10 + metrics["inserted"]

    rerun = run_cli("--main", str(main), "--staging", str(staging), "--batch-rows", "20")
    assert rerun.code == 0 and not staging.exists()
    assert rows(main).equals(rows(reference))


def test_exit_code_survives_deltalake_teardown(tables):
    """A write then a normal exit can abort with rc 134 (delta-rs #2184); the CLI must not."""
    main, staging = tables
    for attempt in range(3):
        write(staging, ct([0], [attempt], seed=attempt))
        assert run_cli("--main", str(main), "--staging", str(staging)).code == 0


def test_metrics_go_to_stdout_even_without_a_file(tables):
    main, staging = tables
    write(staging, ct([0], [1]))
    env = {k: v for k, v in os.environ.items() if k != "STAGINGMERGE_ALLOWED_PREFIXES"}
    started = time.monotonic()
    result = run_cli("--main", str(main), "--staging", str(staging), env=env)
    assert result.metrics["inserted"] == 1
    assert result.metrics["duration_seconds"] <= time.monotonic() - started


def test_a_merge_on_one_cpu_finishes(tables):
    """A pod with `limits.cpu: 1` gives delta-rs one runtime thread, which its writer blocks
    while it waits for rows: a staging stream whose batches need that runtime never comes
    (a QueryBuilder stream hung so, measured at this size). Pinned to one CPU, as such a pod
    runs. The timeout only turns a hang into a failure."""
    import pyarrow as pa

    main, staging = tables

    def narrow(indexes: range) -> pa.Table:
        return pa.table(
            {
                "source_url": ["https://ct.example/log/"] * len(indexes),
                "cert_index": pa.array(indexes, pa.int64()),
                "payload": [f"p{i:070d}" for i in indexes],
            }
        )

    write(main, narrow(range(0, 200_000, 2)))
    for part in range(4):
        write(staging, narrow(range(part * 50_000, (part + 1) * 50_000)))
    cpu = min(os.sched_getaffinity(0))
    args = ["--main", str(main), "--staging", str(staging), "--batch-rows", "50000"]
    proc = subprocess.run(
        [CLI, "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=240,  # within pytest's 300 s: the hung child is killed, not left behind
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (metrics["inserted"], metrics["skipped_existing"], metrics["batches"]) == (
        100_000,
        100_000,
        2,
    )
    assert key_list(main) == [("https://ct.example/log/", i) for i in range(200_000)]
