"""The merge engine on real Delta tables in tmp_path (in-process; the CLI has its own tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger import delta
from stagingmerge_merger.contract import MergeMetrics, Outcome
from stagingmerge_merger.engine import MergeRequest, run_merge
from stagingmerge_merger.errors import (
    InvalidInputError,
    MergeInterruptedError,
    StagingChangedError,
)
from stagingmerge_merger.storage import parse_location
from tests.helpers import ct, expected_union, key_list, read, rows, version, winners, write


def merge(main: Path, staging: Path, **kwargs) -> MergeMetrics:
    return merge_with(main, staging, MergeMetrics(), **kwargs)


def merge_with(main: Path, staging: Path, metrics: MergeMetrics, **kwargs) -> MergeMetrics:
    stop = kwargs.pop("should_stop", lambda: False)
    progress = kwargs.pop("progress", None)
    request = MergeRequest(
        main=parse_location(str(main)), staging=parse_location(str(staging)), **kwargs
    )
    return run_merge(request, metrics, should_stop=stop, progress=progress)


class TestInsertAndSkip:
    def test_inserts_missing_rows_and_keeps_existing_ones(self, tables):
        main, staging = tables
        main_rows = ct([0] * 10, range(10), seed=1)
        staging_rows = ct([0] * 10 + [1] * 3, [*range(5, 15), 0, 1, 2], seed=2)
        write(main, main_rows, partition_by=["seen_date"])
        write(staging, staging_rows)

        m = merge(main, staging)

        assert (
            m.outcome,
            m.staging_rows,
            m.inserted,
            m.skipped_existing,
            m.skipped_duplicates,
        ) == (Outcome.MERGED, 13, 8, 5, 0)
        assert rows(main).equals(expected_union(main_rows, staging_rows))
        assert (m.main_version_before, m.main_version_after) == (0, 1)
        assert m.staging_deleted and not staging.exists()

    def test_any_schema_with_a_single_integer_key(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}))
        write(staging, pa.table({"id": [3, 4, 4, 5], "v": ["x", "d", "dd", "e"]}))
        m = merge(main, staging, keys=("id",), first_by=("v",))
        got = read(DeltaTable(str(main))).sort_by("id").to_pylist()
        assert got == [
            {"id": 1, "v": "a"},
            {"id": 2, "v": "b"},
            {"id": 3, "v": "c"},
            {"id": 4, "v": "d"},
            {"id": 5, "v": "e"},
        ]
        assert (m.inserted, m.skipped_existing, m.skipped_duplicates) == (2, 1, 1)

    def test_date_and_string_keys_with_quotes(self, tables):
        main, staging = tables
        day = dt.date(2025, 1, 1)
        write(main, pa.table({"d": [day], "s": ["it's"], "v": [1]}))
        write(staging, pa.table({"d": [day, day], "s": ["it's", "o'k"], "v": [2, 3]}))
        m = merge(main, staging, keys=("d", "s"))
        assert m.inserted == 1
        assert sorted(read(DeltaTable(str(main)))["v"].to_pylist()) == [1, 3]


class TestDuplicatesInsideStaging:
    """Which copy of a key staging repeats is inserted: the README's rule, by content."""

    def test_first_by_picks_the_earliest_copy_wherever_it_was_written(self, tables):
        main, staging = tables
        write(main, ct([0], [0], seed=1))
        early = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        late = ct([0, 0, 0], [1, 2, 1], seed=2, seen_start=early + dt.timedelta(days=3))
        written_later = ct([0, 0], [1, 3], seed=3, seen_start=early)  # key 1, seen first
        write(staging, late)
        write(staging, written_later)

        m = merge(main, staging, first_by=("seen",))

        assert (m.inserted, m.skipped_duplicates, m.skipped_existing) == (3, 2, 0)
        got = rows(main).to_pylist()
        by_key = {(r["source_url"], r["cert_index"]): r["sha256"] for r in got}
        assert len(got) == 4
        url = late["source_url"][0].as_py()
        assert by_key[(url, 1)] == written_later["sha256"][0].as_py()
        assert rows(main).equals(
            expected_union(ct([0], [0], seed=1), pa.concat_tables([late, written_later]), ["seen"])
        )

    def test_without_first_by_the_fingerprint_decides(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1], "v": ["a"]}))
        write(staging, pa.table({"id": [2, 3], "v": ["b", "x"]}))
        write(staging, pa.table({"id": [2, 3], "v": ["c", "y"]}))
        merge(main, staging, keys=("id",))
        staged = pa.table({"id": [2, 3, 2, 3], "v": ["b", "x", "c", "y"]})
        chosen = winners(staged, ("id",))
        got = read(DeltaTable(str(main))).sort_by("id").to_pylist()
        assert got == [{"id": 1, "v": "a"}] + [
            staged.take([chosen[(k,)]]).to_pylist()[0] for k in (2, 3)
        ]

    def test_rewriting_staging_does_not_change_what_is_inserted(self, tmp_path):
        """Compaction, z-order and a delete that rewrites files reorder staging's rows and
        files; the merged main stays identical (the deleted rows' keys are in main)."""
        main_rows = ct([0, 1, 2], [0, 0, 0], seed=1)
        results = []
        for how in ("as written", "compacted", "z-ordered", "rows deleted"):
            main, staging = tmp_path / f"m-{how}", tmp_path / f"s-{how}"
            write(main, main_rows)
            for part in range(6):  # every key twice or more, with differing content
                write(staging, ct([0, 1, 2] * 2, [part % 3, part % 3, 0, 1, 2, 0], seed=part))
            table = DeltaTable(str(staging))
            if how == "compacted":
                table.optimize.compact()
            elif how == "z-ordered":
                table.optimize.z_order(["cert_index", "sha256"])
            elif how == "rows deleted":
                table.delete(
                    "cert_index = 0 AND source_url = '" + main_rows["source_url"][0].as_py() + "'"
                )
            assert DeltaTable(str(staging)).version() > 5 or how == "as written"
            merge(main, staging, batch_rows=4)
            results.append(rows(main))
        assert all(r.equals(results[0]) for r in results[1:])

    def test_copies_in_different_files_are_duplicates_not_existing(self, tmp_path):
        counts = set()
        for batch_rows in (1, 2, 1000):
            main, staging = tmp_path / f"m{batch_rows}", tmp_path / f"s{batch_rows}"
            write(main, ct([0] * 3, [0, 1, 2], seed=1))
            write(staging, ct([0, 0], [1, 5], seed=2))
            write(staging, ct([0, 0], [5, 6], seed=3))
            write(staging, ct([0, 0], [5, 2], seed=4))
            m = merge(main, staging, batch_rows=batch_rows)
            counts.add((m.inserted, m.skipped_existing, m.skipped_duplicates))
            assert key_list(main) == [
                (ct([0], [0])["source_url"][0].as_py(), i) for i in (0, 1, 2, 5, 6)
            ]
        # 1 and 2 are in main (existing, once each); 5 thrice: inserted once, 2 duplicates
        assert counts == {(2, 2, 2)}

    def test_the_winner_does_not_depend_on_the_batch_size(self, tmp_path):
        results = []
        for batch_rows in (1, 3, 1000):
            main, staging = tmp_path / f"m{batch_rows}", tmp_path / f"s{batch_rows}"
            write(main, ct([0, 1], [0, 0], seed=1))
            for seed in range(4):
                write(staging, ct([0, 1, seed % 2], [seed, seed, 0], seed=10 + seed))
            merge(main, staging, batch_rows=batch_rows)
            results.append(rows(main))
        assert results[0].equals(results[1]) and results[1].equals(results[2])

    def test_keys_not_all_in_hand_are_read_per_batch_with_the_same_result(self, tmp_path):
        """A staging larger than the planning sample: each batch reads its own keys."""
        results = []
        for sample in (1_000_000, 7):
            main, staging = tmp_path / f"m{sample}", tmp_path / f"s{sample}"
            write(main, ct([0, 1] * 5, [i // 2 for i in range(10)], seed=1))
            for part in range(5):
                write(staging, ct([0, 1, 2] * 4, [part * 2 + i // 3 for i in range(12)], seed=part))
            m = merge(main, staging, batch_rows=10, key_sample_rows=sample, key_memory=1)
            assert m.batches >= 4 and m.inserted + m.skipped_existing + m.skipped_duplicates == 60
            results.append((rows(main), m.inserted, m.skipped_duplicates))
        assert results[0][0].equals(results[1][0]) and results[0][1:] == results[1][1:]


class TestBadInput:
    def test_null_keys_are_refused_before_anything_is_written(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1], "v": ["a"]}))
        write(staging, pa.table({"id": [2, 3], "v": ["b", "c"]}))
        write(staging, pa.table({"id": pa.array([None], pa.int64()), "v": ["n"]}))
        with pytest.raises(InvalidInputError, match="NULL in key column id: 1 rows"):
            merge(main, staging, keys=("id",), batch_rows=1)
        assert version(main) == 0 and staging.exists()

    def test_nulls_in_a_column_main_declares_not_null(self, tables):
        main, staging = tables
        DeltaTable.create(
            str(main),
            pa.schema([pa.field("id", pa.int64(), False), pa.field("v", pa.string(), False)]),
        )
        write(staging, pa.table({"id": [1, 2], "v": ["x", None]}))
        with pytest.raises(InvalidInputError, match="NULL in NOT NULL column v: 1 rows"):
            merge(main, staging, keys=("id",))
        assert version(main) == 0

    @pytest.mark.parametrize("cn", ["x", None])
    def test_a_struct_field_main_declares_not_null(self, tables, cn):
        """Staging that allows NULL in a struct field main requires (Spark's CTAS beside a
        Spark DataFrame write) merges when it holds none there, and is refused if it does."""
        main, staging = tables
        strict = pa.struct([pa.field("cn", pa.string(), False)])
        DeltaTable.create(
            str(main), pa.schema([pa.field("id", pa.int64(), False), pa.field("s", strict)])
        )
        loose = pa.struct([pa.field("cn", pa.string(), True)])
        write(staging, pa.table({"id": [1, 2], "s": pa.array([{"cn": "a"}, {"cn": cn}], loose)}))
        if cn is None:
            with pytest.raises(InvalidInputError, match=r"NULL in NOT NULL field s\.cn: 1 rows"):
                merge(main, staging, keys=("id",))
            assert version(main) == 0
        else:
            assert merge(main, staging, keys=("id",)).inserted == 2
            assert rows(main).sort_by("id")["s"].to_pylist() == [{"cn": "a"}, {"cn": "x"}]

    @pytest.mark.parametrize("null_inside", [False, True])
    @pytest.mark.parametrize("kind", ["array", "map", "array in a struct"])
    def test_elements_main_declares_not_null(self, tables, kind, null_inside):
        """The same for an array's elements and a map's values (a CT row's `all_domains`
        as pyarrow or Spark's CTAS writes it: items nullable), at any struct depth: merged
        when staging holds no NULL there, else refused, counting the NULL values."""
        main, staging = tables

        def column(items_nullable: bool) -> tuple[pa.DataType, list]:
            item = pa.field("item", pa.string(), items_nullable)
            values = [["a", "b"], ["c", None if null_inside else "d"], None, []]
            if kind == "array":
                return pa.list_(item), values
            if kind == "map":
                typed = pa.map_(pa.string(), pa.field("value", pa.string(), items_nullable))
                return typed, [None if v is None else list(enumerate(v)) for v in values]
            boxed = pa.struct([pa.field("names", pa.list_(item))])
            return boxed, [None if v is None else {"names": v} for v in values]

        strict, _ = column(False)
        DeltaTable.create(
            str(main), pa.schema([pa.field("id", pa.int64(), False), pa.field("c", strict)])
        )
        loose, values = column(True)
        if kind == "map":
            values = [None if v is None else [(str(k), x) for k, x in v] for v in values]
        write(staging, pa.table({"id": [1, 2, 3, 4], "c": pa.array(values, loose)}))
        if null_inside:
            noun = "value" if kind == "map" else "element"
            with pytest.raises(
                InvalidInputError, match=rf"NULL {noun} in c(\.names)?, .*: 1 values"
            ):
                merge(main, staging, keys=("id",))
            assert version(main) == 0
        else:
            assert merge(main, staging, keys=("id",)).inserted == 4
            assert rows(main).sort_by("id")["c"].to_pylist() == pa.array(values, loose).to_pylist()

    def test_schema_mismatch_changes_nothing(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1], "v": ["a"]}))
        write(staging, pa.table({"id": [2], "v": ["b"], "extra": [1.5]}))
        with pytest.raises(InvalidInputError, match="staging has columns main lacks: extra"):
            merge(main, staging, keys=("id",))
        assert version(main) == 0 and staging.exists()

    def test_missing_key_column(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1]}))
        write(staging, pa.table({"id": [2]}))
        with pytest.raises(InvalidInputError, match="staging has no key column source_url"):
            merge(main, staging)

    @pytest.mark.parametrize("nested", [False, True])
    def test_staging_and_main_must_not_overlap(self, tmp_path, nested):
        main = tmp_path / "lake"
        write(main, pa.table({"id": [1]}))
        staging = main / "staging" if nested else main
        with pytest.raises(InvalidInputError, match="same location or one is inside the other"):
            merge(main, staging, keys=("id",))
        assert version(main) == 0


class TestBatchesAndReruns:
    def test_one_commit_per_batch_and_an_idempotent_rerun(self, tables):
        main, staging = tables
        write(main, ct([0] * 4, range(4), seed=1))
        for part in range(5):
            write(staging, ct([0] * 4, range(part * 3, part * 3 + 4), seed=20 + part))

        m1 = merge(main, staging, batch_rows=4, keep_staging=True)
        after_first = rows(main)
        v1 = version(main)
        m2 = merge(main, staging, batch_rows=4, keep_staging=True)

        # 12 rows to insert, at most 4 a commit: 3 commits
        assert m1.batches == 3 and v1 == 3
        # 0..3 are in main (4 keys); 3, 6, 9 and 12 are written twice (4 duplicates)
        assert (m1.inserted, m1.skipped_existing, m1.skipped_duplicates) == (12, 4, 4)
        assert m2.inserted == 0 and version(main) == v1
        # on a rerun every key is in main already, including those staging repeats
        assert (m2.skipped_existing, m2.skipped_duplicates) == (16, 4)
        assert rows(main).equals(after_first)
        assert len(key_list(main)) == len(set(key_list(main))) == 16

    def test_an_interrupted_run_resumes_without_duplicates(self, tmp_path):
        def build(name: str) -> tuple[Path, Path]:
            main, staging = tmp_path / f"{name}-main", tmp_path / f"{name}-staging"
            write(main, ct([0, 1] * 5, [i for i in range(5) for _ in range(2)], seed=1))
            for part in range(6):
                write(staging, ct([0, 1, 0], [part * 2, part * 2, part * 2 + 1], seed=30 + part))
            return main, staging

        reference_main, reference_staging = build("reference")
        merge(reference_main, reference_staging, batch_rows=3)

        main, staging = build("crash")
        stops = iter([False, False, True])
        metrics = MergeMetrics()
        with pytest.raises(MergeInterruptedError, match="after 2 batches"):
            merge_with(main, staging, metrics, batch_rows=3, should_stop=lambda: next(stops))
        assert metrics.outcome == Outcome.INTERRUPTED and metrics.batches == 2 and staging.exists()
        merge(main, staging, batch_rows=3)

        assert rows(main).equals(rows(reference_main))
        assert not staging.exists()


class TestMainReads:
    def test_main_is_only_scanned_for_its_key_columns(self, tables, monkeypatch):
        main, staging = tables
        write(main, ct([0, 1, 2] * 20, [i // 3 for i in range(60)], seed=1))
        write(staging, ct([0, 1, 2] * 20, [10 + i // 3 for i in range(60)], seed=2))
        calls = []
        original = delta.Table.scan

        def spy(self, columns, predicate):
            if self.location.path == str(main):
                calls.append((tuple(columns or ()), predicate))
            return original(self, columns, predicate)

        monkeypatch.setattr(delta.Table, "scan", spy)
        merge(main, staging, batch_rows=20, key_memory=1)  # spans of 20 keys: 3 spans
        assert calls and all(cols == ("source_url", "cert_index") for cols, _ in calls)
        # one scan per span, bounded to the span's key ranges: one term per log it holds
        assert len(calls) == 3
        assert all(1 <= pred.count("BETWEEN") <= 2 for _, pred in calls)


class TestConcurrentWriters:
    def _inject(self, monkeypatch, main: Path, table: pa.Table):
        """Commit `table` to main from another handle right before the merge commits."""
        original = delta.Table.append
        done = []

        def append(self, batches, schema, metadata):
            if not done:
                done.append(True)
                write_deltalake(str(main), table, mode="append")
            return original(self, batches, schema, metadata)

        monkeypatch.setattr(delta.Table, "append", append)

    def test_unrelated_concurrent_rows_are_kept(self, tables, monkeypatch):
        main, staging = tables
        write(main, ct([0] * 3, range(3), seed=1))
        write(staging, ct([0] * 3, range(3, 6), seed=2))
        self._inject(monkeypatch, main, ct([1] * 2, range(2), seed=3))
        m = merge(main, staging)
        assert (m.concurrent_commits, m.duplicates_repaired) == (1, 0)
        assert len(key_list(main)) == 8 == len(set(key_list(main)))

    def test_a_writer_committing_before_every_batch_costs_no_read_of_our_own_files(
        self, tables, monkeypatch
    ):
        """Another writer of disjoint keys (a sibling shard, another log's merge) commits
        right before each of our commits: each batch lands after theirs, and the next
        batch's catch-up must not read back the file our previous batch added (its keys
        are ours, already inserted) — it reads nothing, since their files lie outside the
        span's key ranges. Before this was fixed, every batch re-read its predecessor's
        file: a concurrent merge paid twice for every batch."""
        main, staging = tables
        write(main, ct([0] * 3, range(3), seed=1))
        write(staging, ct([0] * 60, range(3, 63), seed=2))
        original = delta.Table.append
        theirs = iter(range(1000))

        def append(self, batches, schema, metadata):
            write_deltalake(str(main), ct([1], [next(theirs)], seed=3), mode="append")
            return original(self, batches, schema, metadata)

        monkeypatch.setattr(delta.Table, "append", append)
        m = merge(main, staging, batch_rows=20)

        assert (m.batches, m.inserted, m.concurrent_commits) == (3, 60, 3)
        assert (m.main_files_caught_up, m.duplicates_repaired) == (0, 0)
        keys = key_list(main)
        assert len(keys) == len(set(keys)) == 3 + 60 + 3

    def test_a_key_inserted_concurrently_is_kept_once_with_the_first_copy(
        self, tables, monkeypatch
    ):
        main, staging = tables
        write(main, ct([0] * 3, range(3), seed=1), partition_by=["seen_date"])
        write(staging, ct([0] * 4, range(3, 7), seed=2))
        live = ct([0, 1], [5, 0], seed=3)  # the live writer got to key (0, 5) first
        self._inject(monkeypatch, main, live)

        m = merge(main, staging)

        keys = key_list(main)
        assert len(keys) == len(set(keys)) == 8  # log 0: 0..6, log 1: 0
        assert (m.concurrent_commits, m.duplicates_repaired) == (1, 1)
        # their copy of key 5 stays: ours counts as already in main, not as inserted
        assert (m.inserted, m.skipped_existing, m.staging_rows) == (3, 1, 4)
        row = next(r for r in rows(main).to_pylist() if r["cert_index"] == 5)
        assert row["sha256"] == live["sha256"][0].as_py()


class TestLifecycle:
    def test_missing_staging_is_nothing_to_merge(self, tables):
        main, staging = tables
        m = merge(main, staging)
        assert m.outcome == Outcome.NOTHING_TO_MERGE and not main.exists()

    def test_empty_staging_table_is_nothing_to_merge_and_is_cleaned_up(self, tables):
        main, staging = tables
        write(main, pa.table({"id": [1]}))
        DeltaTable.create(str(staging), pa.schema([("id", pa.int64())]))
        m = merge(main, staging, keys=("id",))
        assert m.outcome == Outcome.NOTHING_TO_MERGE and not staging.exists() and version(main) == 0

    def test_missing_main_is_created_partitioned_by_seen_date(self, tables):
        main, staging = tables
        staging_rows = ct([0, 0, 1], [1, 1, 2], seed=5)
        write(staging, staging_rows)
        m = merge(main, staging)
        table = DeltaTable(str(main))
        assert m.main_created and m.main_version_before is None
        assert table.metadata().partition_columns == ["seen_date"]
        assert (m.inserted, m.skipped_duplicates, m.skipped_existing) == (2, 1, 0)
        assert pa.schema(table.schema().to_arrow()) == staging_rows.schema

    def test_keep_staging_and_dry_run_leave_staging(self, tables):
        main, staging = tables
        write(main, ct([0], [0], seed=1))
        write(staging, ct([0, 0, 0], [0, 1, 1], seed=2))
        dry = merge(main, staging, dry_run=True)
        assert (dry.outcome, dry.inserted, dry.skipped_existing, dry.skipped_duplicates) == (
            Outcome.DRY_RUN,
            1,
            1,
            1,
        )
        assert version(main) == 0 and staging.exists()
        kept = merge(main, staging, keep_staging=True)
        assert kept.inserted == 1 and staging.exists() and not kept.staging_deleted

    def test_dry_run_counts_duplicates_across_batches(self, tables):
        main, staging = tables
        write(staging, ct([0, 0], [1, 2], seed=1))
        write(staging, ct([0, 0], [2, 3], seed=2))
        m = merge(main, staging, dry_run=True, batch_rows=2)
        assert (m.inserted, m.skipped_duplicates) == (3, 1) and not main.exists()

    def test_staging_written_during_the_merge_is_kept(self, tables):
        main, staging = tables
        write(staging, ct([0, 0], [1, 2], seed=1))
        write(staging, ct([0, 0], [3, 4], seed=2))

        class WriteToStaging:
            def start(self, batches, rows):
                pass

            def batch_done(self, result, metrics):
                if result.index == 0:
                    write(staging, ct([0], [9], seed=3))

            def close(self):
                pass

        metrics = MergeMetrics()
        with pytest.raises(StagingChangedError, match="version 1 -> 2"):
            merge_with(main, staging, metrics, batch_rows=2, progress=WriteToStaging())
        assert metrics.outcome == Outcome.STAGING_CHANGED and staging.exists()
        m = merge(main, staging)
        assert m.inserted == 1 and len(key_list(main)) == 5 and not staging.exists()

    def test_a_half_deleted_staging_is_finished_by_a_rerun(self, tables):
        main, staging = tables
        write(staging, ct([0], [1], seed=1))
        (staging / "_stagingmerge_merged.json").write_text('{"staging_version": 0}')
        for log in (staging / "_delta_log").iterdir():
            log.unlink()
        (staging / "_delta_log").rmdir()
        m = merge(main, staging)
        assert m.outcome == Outcome.NOTHING_TO_MERGE and m.staging_deleted and not staging.exists()

    def test_a_directory_that_is_not_a_table(self, tables):
        main, staging = tables
        staging.mkdir()
        (staging / "data.parquet").write_bytes(b"x")
        with pytest.raises(InvalidInputError, match="not a Delta table"):
            merge(main, staging)
