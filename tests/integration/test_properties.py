"""Property: for any main, any staging (overlaps, repeats, several files), any batch size and
any staging layout (plain, partitioned, column-mapped by name or id), main after the merge
holds exactly the union, each key once, the copy the README's rule picks winning; and a dry
run beforehand counts exactly what the merge then does."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagingmerge_merger.contract import MergeMetrics, Outcome
from stagingmerge_merger.engine import MergeRequest, run_merge
from stagingmerge_merger.storage import parse_location
from tests.helpers import read

keys = st.tuples(st.sampled_from(["a", "b", "c", ""]), st.integers(min_value=0, max_value=30))
staging_files = st.lists(st.lists(keys, min_size=0, max_size=12), min_size=1, max_size=5)
LAYOUTS = {
    "plain": {},
    "partitioned": {"partition_by": ["log"]},
    "column-mapped by name": {"configuration": {"delta.columnMapping.mode": "name"}},
    "column-mapped by id": {"configuration": {"delta.columnMapping.mode": "id"}},
    "both": {"partition_by": ["tag"], "configuration": {"delta.columnMapping.mode": "name"}},
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    main_keys=st.lists(keys, max_size=20, unique=True),
    files=staging_files,
    batch_rows=st.integers(min_value=1, max_value=40),
    staging_layout=st.sampled_from(sorted(LAYOUTS)),
    main_layout=st.sampled_from(sorted(LAYOUTS)),
)
def test_main_becomes_the_union(main_keys, files, batch_rows, staging_layout, main_layout):
    root = Path(tempfile.mkdtemp(prefix="prop-"))
    try:
        main, staging = root / "main", root / "staging"
        if main_keys:
            write_deltalake(str(main), table(main_keys, "main", 0), **LAYOUTS[main_layout])
        seq = 0
        for number, file_keys in enumerate(files):
            write_deltalake(
                str(staging),
                table(file_keys, f"file{number}", seq),
                mode="append",
                **(LAYOUTS[staging_layout] if number == 0 else {}),
            )
            seq += len(file_keys)

        request = MergeRequest(
            main=parse_location(str(main)),
            staging=parse_location(str(staging)),
            keys=("log", "index"),
            batch_rows=batch_rows,
            first_by=("seq",),  # written order: the first copy written wins
        )
        dry = run_merge(replace(request, dry_run=True), MergeMetrics())
        metrics = run_merge(request, MergeMetrics())
        assert (dry.inserted, dry.skipped_existing, dry.skipped_duplicates, dry.batches) == (
            metrics.inserted,
            metrics.skipped_existing,
            metrics.skipped_duplicates,
            metrics.batches,
        ), "a dry run counts exactly what the run does"

        expected: dict[tuple[str, int], str] = {k: "main" for k in main_keys}
        for number, file_keys in enumerate(files):
            for k in file_keys:
                expected.setdefault(k, f"file{number}")
        staged = sum(len(f) for f in files)
        if staged == 0:
            assert metrics.outcome == Outcome.NOTHING_TO_MERGE
            return
        got = read(DeltaTable(str(main))).to_pylist()
        assert len(got) == len(expected)
        assert {(r["log"], r["index"]): r["tag"] for r in got} == expected
        assert metrics.inserted == len(expected) - len(main_keys)
        assert metrics.inserted + metrics.skipped_existing + metrics.skipped_duplicates == staged
        assert not staging.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(pairs: list[tuple[str, int]], tag: str, first_seq: int) -> pa.Table:
    return pa.table(
        {
            "log": pa.array([p[0] for p in pairs], pa.string()),
            "index": pa.array([p[1] for p in pairs], pa.int64()),
            "tag": pa.array([tag] * len(pairs), pa.string()),
            "seq": pa.array(range(first_seq, first_seq + len(pairs)), pa.int64()),
        }
    )
