"""Another process writes to main while the real CLI merges into it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deltalake import DeltaTable

from stagingmerge_merger.sample import LOGS
from tests.helpers import CLI, ct, read, run_cli, write

WRITER = Path(__file__).with_name("live_writer.py")


def keys_of(path: Path) -> list[tuple[str, int]]:
    table = read(DeltaTable(str(path)), ["source_url", "cert_index"])
    return list(zip(table["source_url"].to_pylist(), table["cert_index"].to_pylist(), strict=True))


def build(root: Path, files: int = 40) -> tuple[Path, Path, set[tuple[int, int]]]:
    main, staging = root / "main", root / "staging"
    write(main, ct([0, 1] * 10, [i // 2 for i in range(20)], seed=1))
    staged: set[tuple[int, int]] = set()
    for part in range(files):
        logs, indexes = [0, 1] * 10, [part * 10 + i // 2 for i in range(20)]
        write(staging, ct(logs, indexes, seed=part))
        staged |= set(zip(logs, indexes, strict=True))
    return main, staging, staged


def run_with_writer(
    tmp_path: Path, mode: str, keys: list[list[int]] | None = None, files: int = 40
):
    main, staging, staged = build(tmp_path, files)
    stop, out = tmp_path / "stop", tmp_path / "writer.json"
    if keys is not None:
        Path(str(out) + ".keys").write_text(json.dumps(keys))
    writer = subprocess.Popen([sys.executable, str(WRITER), str(main), mode, str(stop), str(out)])
    deadline = time.monotonic() + 60
    while not Path(str(out) + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        result = run_cli("--main", str(main), "--staging", str(staging), "--batch-rows", "20")
    finally:
        stop.touch()
        writer.wait(timeout=60)
    return main, staging, staged, result, json.loads(out.read_text())


def test_a_live_stream_appending_meanwhile_loses_nothing(tmp_path):
    main, staging, staged, result, writer = run_with_writer(tmp_path, "append")

    assert result.code == 0, result.stderr
    keys = keys_of(main)
    assert len(keys) == len(set(keys)), "a key is in main twice"
    url = {i: url for i, (_, url) in enumerate(LOGS)}
    expected = (
        {(url[log], index) for log, index in staged}
        | {(url[0], i) for i in range(10)}
        | {(url[1], i) for i in range(10)}
        | {(url[log], index) for log, index in writer["keys"]}
    )
    assert set(keys) == expected
    assert writer["commits"] > 0 and result.metrics["concurrent_commits"] > 0
    assert not staging.exists()


def test_a_writer_inserting_the_same_keys_meanwhile_leaves_each_key_once(tmp_path):
    _, _, staged = build(tmp_path / "plan", files=80)
    race = sorted(staged, key=lambda k: (k[1] * 7919 + k[0]) % 401)[:400]
    main, _staging, staged, result, writer = run_with_writer(
        tmp_path / "run", "insert-if-absent", [list(k) for k in race], files=80
    )

    assert result.code == 0, result.stderr
    keys = keys_of(main)
    assert len(keys) == len(set(keys)), "a key is in main twice"
    url = {i: url for i, (_, url) in enumerate(LOGS)}
    assert set(keys) == {(url[log], index) for log, index in staged}
    m = result.metrics
    print("writer", writer["commits"], "commits", writer["conflicts"], "conflicts;", m)
    # Both writers won some keys; the writer's conflict-checked merges lose to our appends
    # (CommitFailedError: concurrent append) and retry, our guard covers the other order.
    assert writer["commits"] > 0 and m["inserted"] < len(staged)
    # every staging row is accounted for, whoever inserted it
    assert m["inserted"] + m["skipped_existing"] + m["skipped_duplicates"] == m["staging_rows"]


def test_keys_another_writer_added_before_our_commit_are_caught_up_from_its_files(store, tmp_path):
    """The merge is held after reading main's keys, right before its first commit; another
    writer appends some of staging's new keys meanwhile. The merge reads only the file that
    commit added (by range reads, on every store), leaves those keys out (theirs landed
    first) and needs no repair."""
    store.write("main", ct([0, 1] * 10, [i // 2 for i in range(20)], seed=1))  # indexes 0-9
    for part in range(4):  # staging: indexes 0-39 of logs 0 and 1
        store.write("staging", ct([0, 1] * 10, [part * 10 + i // 2 for i in range(20)], seed=part))
    theirs = ct([0, 1] * 5, [20 + i // 2 for i in range(10)], seed=77)  # staged, not in main
    pause = tmp_path / "pause"
    proc = subprocess.Popen(
        [
            CLI,
            "--log-format",
            "json",
            "--main",
            store.uri("main"),
            "--staging",
            store.uri("staging"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **store.env, "STAGINGMERGE_PAUSE": f"batch-start:{pause}"},
    )
    deadline = time.monotonic() + 300
    while not Path(f"{pause}.waiting").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the merge never paused"
        time.sleep(0.05)
    store.write("main", theirs)
    Path(f"{pause}.go").touch()
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert (m["main_files_caught_up"], m["duplicates_repaired"], m["concurrent_commits"]) == (
        1,
        0,
        1,
    )
    assert (m["inserted"], m["skipped_existing"]) == (80 - 20 - 10, 20 + 10)
    url = {i: url for i, (_, url) in enumerate(LOGS)}
    assert store.keys("main") == sorted((url[log], i) for log in (0, 1) for i in range(40))
    columns = ("source_url", "cert_index", "seen")
    final = read(store.table("main"), list(columns))
    rows = zip(*(final[c].to_pylist() for c in columns), strict=True)
    kept = {row for row in rows if 20 <= row[1] < 25}
    assert kept == set(zip(*(theirs[c].to_pylist() for c in columns), strict=True))  # theirs


def test_keys_another_writer_adds_during_a_commit_are_left_out_of_the_later_batches(tmp_path):
    """The merge is held right before its first commit (its catch-up done); another writer
    then appends the new staged keys of the later batches. The first commit lands after
    theirs and needs no repair (none of its keys are theirs), and the later batches,
    catching up, insert none of theirs: each key ends in main once, theirs kept.

    Staging is one file in key order, so the first batch is its first 20 new keys (a
    span's rows stream in file order)."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0, 1] * 10, [i // 2 for i in range(20)], seed=1))  # indexes 0-9
    write(staging, ct([0] * 40 + [1] * 40, [*range(40), *range(40)], seed=2))
    pause = tmp_path / "pause"
    proc = subprocess.Popen(
        [CLI, "--log-format", "json", "--main", str(main), "--staging", str(staging),
         "--batch-rows", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "STAGINGMERGE_PAUSE": f"batch-before-commit:{pause}"},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not Path(f"{pause}.waiting").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the merge never paused"
        time.sleep(0.05)
    theirs = [(0, i) for i in range(30, 40)] + [(1, i) for i in range(10, 40)]  # batches 2-3
    write(main, ct([k[0] for k in theirs], [k[1] for k in theirs], seed=77))
    Path(f"{pause}.go").touch()
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err[-3000:]
    m = json.loads(out.strip().splitlines()[-1])
    keys = keys_of(main)
    assert len(keys) == len(set(keys)) == 80
    assert (m["inserted"], m["duplicates_repaired"]) == (20, 0)
    url = {i: u for i, (_, u) in enumerate(LOGS)}
    inserted = (
        set(keys)
        - {(url[log], i) for log, i in theirs}
        - {(url[log], i) for log in (0, 1) for i in range(10)}
    )
    assert inserted == {(url[0], i) for i in range(10, 30)}  # the first batch: ours
