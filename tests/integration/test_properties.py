"""Property: for any main, any staging (overlaps, repeats, several files) and any batch size,
main after the merge holds exactly the union, each key once, the first staging copy winning."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagingmerge_merger.engine import MergeRequest, run_merge
from stagingmerge_merger.metrics import MergeMetrics
from stagingmerge_merger.storage import parse_location

keys = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=30))
staging_files = st.lists(st.lists(keys, min_size=0, max_size=12), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    main_keys=st.lists(keys, max_size=20, unique=True),
    files=staging_files,
    batch_rows=st.integers(min_value=1, max_value=40),
)
def test_main_becomes_the_union(main_keys, files, batch_rows):
    root = Path(tempfile.mkdtemp(prefix="prop-"))
    try:
        main, staging = root / "main", root / "staging"
        if main_keys:
            write_deltalake(str(main), table(main_keys, tag="main"))
        for number, file_keys in enumerate(files):
            write_deltalake(str(staging), table(file_keys, tag=f"file{number}"), mode="append")

        metrics = run_merge(
            MergeRequest(
                main=parse_location(str(main)),
                staging=parse_location(str(staging)),
                keys=("log", "index"),
                batch_rows=batch_rows,
            ),
            MergeMetrics(),
        )

        expected: dict[tuple[str, int], str] = {k: "main" for k in main_keys}
        for number, file_keys in enumerate(files):
            for k in file_keys:
                expected.setdefault(k, f"file{number}")
        staged = sum(len(f) for f in files)
        if staged == 0:
            assert metrics.outcome == "nothing_to_merge"
            return
        got = DeltaTable(str(main)).to_pyarrow_table().to_pylist()
        assert len(got) == len(expected)
        assert {(r["log"], r["index"]): r["tag"] for r in got} == expected
        assert metrics.inserted == len(expected) - len(main_keys)
        assert metrics.inserted + metrics.skipped_existing + metrics.skipped_duplicates == staged
        assert not staging.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(pairs: list[tuple[str, int]], tag: str) -> pa.Table:
    return pa.table(
        {
            "log": pa.array([p[0] for p in pairs], pa.string()),
            "index": pa.array([p[1] for p in pairs], pa.int64()),
            "tag": pa.array([tag] * len(pairs), pa.string()),
        }
    )
