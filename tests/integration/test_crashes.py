"""Crash anywhere: the real CLI killed with SIGKILL at chosen points (failpoints) and at
random moments, then rerun. Main must end exactly as an uninterrupted merge leaves it
(same rows, every column, compared by content hash), and staging must disappear only
once a run completed."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from stagingmerge_merger.contract import Outcome
from tests.helpers import CLI, ct, read, run_cli, run_cli_after_first_batch, write

ARGS = ("--batch-rows", "10")


def content_hash(table_path: Path) -> str:
    """sha256 over every row, every column, in key order."""
    table = read(DeltaTable(str(table_path)))
    table = table.select(sorted(table.column_names)).sort_by(
        [("source_url", "ascending"), ("cert_index", "ascending")]
    )
    digest = hashlib.sha256()
    for batch in table.to_batches(max_chunksize=1000):
        for row in batch.to_pylist():
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def build(root: Path, files: int = 8) -> tuple[Path, Path]:
    main, staging = root / "main", root / "staging"
    write(main, ct([0, 1] * 10, [i // 2 for i in range(20)], seed=1), partition_by=["seen_date"])
    for part in range(files):  # overlaps with main, repeats inside staging, new keys
        logs = [0, 1, 2] * 8
        indexes = [part * 6 + i // 3 for i in range(24)]
        write(staging, ct(logs, indexes, seed=100 + part))
    return main, staging


@dataclass(frozen=True)
class Reference:
    content: str  # content_hash of main after an uninterrupted merge
    commits: int  # how many commits that merge made


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    main, staging = build(tmp_path_factory.mktemp("reference"))
    result = run_cli("--main", str(main), "--staging", str(staging), *ARGS)
    assert result.code == 0 and result.metrics["batches"] >= 8
    assert not staging.exists()
    commits = result.metrics["main_version_after"] - result.metrics["main_version_before"]
    assert commits >= 8
    return Reference(content_hash(main), commits)


def check_keys_unique(main: Path) -> None:
    table = read(DeltaTable(str(main)), ["source_url", "cert_index"])
    keys = list(zip(table["source_url"].to_pylist(), table["cert_index"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    "point",
    [
        "batch-before-commit:1",  # before the first commit
        "batch-before-commit:4",  # mid-way, files written but not committed
        "batch-after-commit:1",
        "batch-after-commit:5",  # between batches
        "batch-after-commit:last",  # after the last commit, before staging is checked
        "staging-delete",  # log deleted, data files not
    ],
)
def test_killed_at_a_failpoint_then_rerun(tmp_path, reference, point):
    main, staging = build(tmp_path)
    point = point.replace("last", str(reference.commits))

    crashed = run_cli(
        "--main", str(main), "--staging", str(staging), *ARGS, env={"STAGINGMERGE_FAILPOINT": point}
    )

    assert crashed.code == -signal.SIGKILL
    check_keys_unique(main)
    if point == "staging-delete":
        assert not (staging / "_delta_log").exists() and any(staging.rglob("*.parquet"))
        assert content_hash(main) == reference.content  # the merge had completed
    else:
        assert (staging / "_delta_log").exists()  # staging kept until a run completes
    rerun = run_cli("--main", str(main), "--staging", str(staging), *ARGS)
    assert rerun.code == 0, rerun.stderr
    assert content_hash(main) == reference.content
    assert not staging.exists()


def test_killed_at_random_moments_until_done(tmp_path):
    """SIGKILL at random moments, over and over, then a run that completes.

    The moments are counted in progress, not in seconds, so a slow machine cannot make
    every run die before it gets anywhere: each victim is killed after a random number
    (0-2) of committed batches plus a random fraction of a batch; after the eighth kill
    a run is left to finish."""
    reference_main, reference_staging = build(tmp_path / "reference", files=40)
    assert (
        run_cli("--main", str(reference_main), "--staging", str(reference_staging), *ARGS).code == 0
    )
    main, staging = build(tmp_path / "killed", files=40)
    rng = random.Random(20261126)
    kills = 0
    while True:
        proc = subprocess.Popen(
            [CLI, "--main", str(main), "--staging", str(staging), *ARGS, "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        if kills < 8:
            batches_to_see, done = rng.randint(0, 2), 0
            for line in proc.stderr:
                if done >= batches_to_see:
                    break
                done += '"batch done"' in line
            time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next batch
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills += 1
                check_keys_unique(main)
                assert (staging / "_delta_log").exists() or (
                    staging / "_stagingmerge_merged.json"
                ).exists()
                continue
        proc.communicate(timeout=300)
        assert proc.returncode == 0
        break
    assert kills >= 2
    assert content_hash(main) == content_hash(reference_main) and not staging.exists()


def test_staging_written_during_the_merge_is_kept_and_rerun_merges_the_rest(tmp_path):
    main, staging = build(tmp_path)
    result = run_cli_after_first_batch(
        "--main",
        str(main),
        "--staging",
        str(staging),
        *ARGS,
        then=lambda _: write(staging, ct([5] * 3, [1, 2, 3], seed=7)),  # a backfill still writing
    )
    metrics = result.metrics
    assert result.code == 1 and metrics["outcome"] == Outcome.STAGING_CHANGED
    assert "changed during the merge" in metrics["error"]
    assert (staging / "_delta_log").exists()

    rerun = run_cli("--main", str(main), "--staging", str(staging), *ARGS)
    assert rerun.code == 0 and rerun.metrics["inserted"] == 3
    assert not staging.exists()
    check_keys_unique(main)
    table = read(DeltaTable(str(main)), ["source_url", "cert_index"])
    late = table.filter(pc.equal(table["source_url"], ct([5], [1])["source_url"][0]))
    assert sorted(late["cert_index"].to_pylist()) == [1, 2, 3]
