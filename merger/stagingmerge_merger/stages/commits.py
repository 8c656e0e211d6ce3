"""main as one run writes it: the concurrent-writer guard, in one place.

main moves on while a merge runs: live writers append, concurrent merges and the shards
of this one commit, an OPTIMIZE rewrites files. Exactly once holds by these rules, each
a method here:

1. **main's keys** within a span's key ranges are read once, at version *v* (`keys_within`,
   which also accounts what the read cost: keycost.py);
2. **catch up** before each commit: the files other writers added since main was last
   read, and only those whose statistics meet the span's ranges, are read and the keys
   they hold are left out of the commit (`_catch_up`);
3. **late commits**: commits that landed between the catch-up and ours may hold a key we
   just inserted; their files are read, and only if one does (`_late_files_may_hold`)
4. **repair**: our copy of a key someone else inserted at the same time is rewritten to
   the copy that was there first, the keys recorded in staging beforehand so that a run
   that cannot finish leaves the repair owed to the next (`_repair`, `repair_owed`).

Our own commits (main's creation, the declaration of its features, our batches) are
never taken for other writers' (`Versions`). main is read through the delta package:
delta-rs for its keys, delta/files.py for the files other writers added.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import unquote

import pyarrow as pa
import structlog

from .. import __version__, failpoints, keysets, predicates, rangeindex, repairs, schema
from ..contract import REPAIRS_DIR, MergeMetrics, Outcome
from ..delta import CommitConflictError, Table, plain_schema
from ..delta.files import Box, Files, FileStat, groups_meeting
from ..errors import MergeError
from ..keycost import KeyCost, index_behind_threshold
from ..reporting import BatchResult
from ..storage import Location, Prefix
from . import stream

log = structlog.get_logger("stagingmerge.merge")

READ_THREADS = 4  # main's files read at once by the key-range index (decoding releases the GIL)
DIRECT_SHARE = 0.5  # main's files read here, not by delta-rs, when the index keeps at most this
INDEX_SHARE = 0.05  # of the files a delta-rs scan reads, the share also indexed on the way
SAMPLE_LOOKS = 4  # footers looked at per file sampled (files a scan reads whole qualify)
REPAIR_ATTEMPTS = 10  # a leftover duplicate is worse than a slow batch
REPAIR_CHUNK = 500  # keys per rewrite predicate when repairing concurrent duplicates
RUN_KEY = "stagingmerge.run"  # commit metadata: the run that made the commit


@dataclass
class Versions:
    """Where one span's commits stand in main's history (pure bookkeeping).

    `seen`: main's version up to which the span's keys are checked (-1 before main
    exists); `counted`: the version up to which other writers' commits are counted."""

    seen: int
    counted: int

    @classmethod
    def at(cls, version: int) -> Versions:
        return cls(version, version)

    def own(self, version: int) -> None:
        """A commit of ours that adds no rows (main's creation, a feature declaration):
        right after what is known, it is nobody else's and nothing to catch up with."""
        if version == self.seen + 1:
            self.seen = self.counted = version

    def behind(self, latest: int) -> bool:
        """Whether main has commits the span's keys are not checked against."""
        return latest > self.seen

    def others_since_ours(self, latest: int) -> int:
        """Other writers' commits since our last one (or since main was read)."""
        return latest - self.counted

    def caught_up(self, version: int) -> None:
        self.seen = version

    def committed(self, version: int, ours: int = 0) -> int:
        """Our commit landed at `version`, `ours` of the commits before it since the last
        catch-up being ours too (a commit whose answer was lost); returns the other
        writers' commits between the last catch-up and it (late: the next catch-up takes
        the keys they hold)."""
        late = version - self.seen - 1 - ours
        self.counted = version
        if late <= 0:  # nobody else committed: main is known up to ours
            self.seen = version
        return max(0, late)


@dataclass(frozen=True)
class Target:
    """What this run writes into main, fixed by planning."""

    main: Location
    staging: Location
    options: dict[str, str]
    keys: tuple[str, ...]
    key_types: dict[str, str]
    key_schema: pa.Schema
    create_as: str | None  # the Delta schema (JSON) of a main this run creates
    partition_by: list[str]  # for a main this run creates
    shard: str | None  # recorded in each commit of a sharded run
    key_index: bool = True  # read main's keys through its key-range index (rangeindex.py)
    dry_run: bool = False  # then the index is read, never written


@dataclass
class SpanKeys:
    """The keys one span inserts: what the guard checks other writers' commits against."""

    wanted: keysets.Members  # the span's keys main did not hold at `base`
    base: int  # main's version when its keys were read (-1: no main)


class MainWriter:
    """main for one run: read its keys, commit pieces under the guard, repair.

    `reopen` opens main again when another writer may have created it (the engine's
    audited open); `target` is the schema rows are written as (main's, once it exists)."""

    def __init__(
        self,
        goal: Target,
        main: Table | None,
        target: pa.Schema,
        metrics: MergeMetrics,
        reopen: Callable[[], Table | None],
        staging_columns: dict[str, schema.Column],
    ) -> None:
        self.goal = goal
        self.main = main
        self.target = target
        self.metrics = metrics
        self.reopen = reopen
        self.staging_columns = staging_columns
        self.files: Files | None = None  # main's files at the version last read
        self.cost = KeyCost()  # what reading main's keys costs (metrics only)
        self.repairs = repairs.Repairs(Prefix(goal.staging, goal.options))
        self._index: rangeindex.RangeIndex | None = None  # main's key-range index, once read
        self._index_read = False
        self._pending: list[pa.Table] = []  # entries made this run, written by save_index
        self._said_behind = False
        self._sampled = 0  # files indexed on the way besides a delta-rs scan (_index_sample)
        self._declared = False  # main's implied writer features checked (see _ready_main)
        self.run = uuid.uuid4().hex  # in each commit's metadata: our commits, told apart

    # --- reading main's keys -------------------------------------------------------

    def refresh(self, reopen: bool) -> int:
        """main's latest version (-1: no main yet); with `reopen`, a missing main is looked
        for again first (another writer may have created it)."""
        if self.main is None and reopen:
            self.main = self.reopen()
        return self.main.latest_version() if self.main else -1

    def keys_within(self, ranges: list[predicates.KeyRange]) -> pa.Table:
        """main's keys within `ranges` (none when there is no main), and what reading them
        cost (metrics)."""
        schema = self.goal.key_schema
        if self.main is None:
            return schema.empty_table()
        names = self.goal.keys
        if self.files is None or self.files.version != self.main.version:
            self.files = Files.of(self.main, names, known=self.files)
        boxes = predicates.predicate_boxes(names, ranges)
        touched = self.files.touched(boxes)
        kept, read = self._through_index(touched, ranges, boxes)
        self.metrics.main_key_scans += 1
        self.metrics.main_files = len(self.files.files)
        self.metrics.main_files_scanned += len(kept)
        self.metrics.main_files_pruned_by_index += len(touched) - len(kept)
        self.metrics.main_key_bytes_read += self.cost.key_bytes(self.files, kept, boxes)
        if read is not None:
            return read
        predicate = predicates.range_predicate(names, self.goal.key_types, ranges)
        return self.main.scan(names, predicate).cast(schema)

    def _through_index(
        self, touched: list[FileStat], ranges: list[predicates.KeyRange], boxes: list[Box]
    ) -> tuple[list[FileStat], pa.Table | None]:
        """The files of `touched` the key-range index cannot rule out and, when it rules
        out most, the keys within the boxes read from just those files (None: delta-rs
        scans `touched` with the predicate, as without an index).

        Reading a file ourselves costs about twice what delta-rs's scan of it does
        (measured), so the files are read here only when the index rules out more than
        DIRECT_SHARE of them; those read whole that had no entry get one. Otherwise
        delta-rs scans, and a sample of the files with no entry (INDEX_SHARE of the
        touched, at least one) is read whole besides and indexed: a first merge costs
        about 1.1x one without the index (the bound is 1.2x: README), and about ten
        merges index a main nobody indexed (`stagingmerge-index` does it at once).
        Entries wait for save_index."""
        index = self._key_index()
        if index is None or not touched:
            return touched, None
        kept, exact = index.prune(touched, ranges)
        unindexed = [f for f in touched if f.path not in exact]
        self._say_if_behind(unindexed)
        record = not self.goal.dry_run
        if len(kept) > DIRECT_SHARE * len(touched):
            if record and unindexed:
                self._index_sample(unindexed, len(touched), boxes)
            return touched, None
        read = self._read_files(kept, boxes, exact if record else None)
        return (touched, None) if read is None else (kept, read)

    def _read_files(
        self, files: list[FileStat], boxes: list[Box] | None, exact: set[str] | None
    ) -> pa.Table | None:
        """The keys within `boxes` of `files` (all their keys: None), read a row group at a
        time and only the row groups a scan reads; with `exact`, each file read whole
        that is not in it gets its entries recorded. None when a file cannot be read
        (logged: the caller then lets delta-rs scan)."""
        assert self.files is not None
        main, schema = self.files, self.goal.key_schema
        entries: list[pa.Table] = []

        def keys_in(stat: FileStat) -> pa.Table:
            whole, groups = main.key_groups(stat, schema, boxes, encoded=True)
            indexing = (
                exact is not None and whole and stat.path not in exact and stat.rows is not None
            )
            parts, found = [], []
            for keys in groups:
                if indexing:
                    parts.append(rangeindex.entries_of(stat, keys, schema))
                if boxes is not None:
                    found.append(rangeindex.within_boxes(keys.cast(schema), boxes))
            if indexing:
                entries.append(rangeindex.combine(parts, schema))  # list.append: atomic
            return pa.concat_tables(found) if found else schema.empty_table()

        try:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                tables = list(pool.map(keys_in, files))
        except (MergeError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
            log.warning(
                "could not read main's files for the key-range index; delta-rs scans them",
                error=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
            )
            return None
        if entries:
            self._record_entries(pa.concat_tables(entries))
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def _index_sample(self, unindexed: list[FileStat], touched: int, boxes: list[Box]) -> None:
        """Index a sample of the files with no entry, read whole besides delta-rs's scan:
        only files that scan reads whole too (every row group meets the boxes, by the
        footer), so a clustered file's skipped row groups are never read for the index.
        Drawn by main's version and the shard, so a rerun draws the same files and the
        shards of one merge different ones."""
        files = self.files
        assert files is not None
        # a run's spans and repairs each scan: the run as a whole indexes at most the share
        left = max(1, int(INDEX_SHARE * len(files.files))) - self._sampled
        candidates = [f for f in unindexed if f.rows is not None]  # else never exact
        count = min(len(candidates), max(1, int(INDEX_SHARE * touched)), left)
        seed = f"{files.version}/{self.goal.shard or ''}"
        random.Random(seed).shuffle(candidates)  # noqa: S311 - a sample, not a secret
        sample: list[FileStat] = []
        for stat in candidates[: SAMPLE_LOOKS * count]:  # a footer read per look, bounded
            if len(sample) == count:
                break
            footer = self.cost.footer(files, stat)
            if (
                footer is not None
                and len(groups_meeting(footer, files.physical, boxes)) == footer.num_row_groups
            ):
                sample.append(stat)
        if sample:
            self._sampled += len(sample)
            self._read_files(sample, None, set())

    def index_keys_read(self, stat: FileStat, keys: pa.Table) -> None:
        """Every key of main's file `stat`, read for the catch-up: its entries recorded."""
        if self._index is not None and not self.goal.dry_run and keys.num_rows:
            self._record_entries(rangeindex.entries_of(stat, keys, self.goal.key_schema))

    def _record_entries(self, entries: pa.Table) -> None:
        """Entries for files that had none: used from now on, written by save_index."""
        assert self._index is not None
        self._index = self._index.with_entries(entries)
        self._pending.append(entries)

    def save_index(self) -> None:
        """Write the entries this run made as one new index file, once the run's merge is
        done (a run refused as invalid input leaves main as it was, index included). Best
        effort: a failure only leaves them unwritten."""
        if not self._pending or self.main is None or self.files is None:
            return
        entries, self._pending = pa.concat_tables(self._pending), []
        try:
            rangeindex.write(
                Prefix(self.goal.main, self.goal.options),
                entries,
                self.main.table_id(),
                self.goal.keys,
                self.files.version,
            )
        except MergeError as exc:
            log.warning("could not add to the key-range index", error=str(exc))
            return
        self.metrics.key_index_entries_written += entries.num_rows

    def _say_if_behind(self, unindexed: list[FileStat]) -> None:
        """Once a run: one line naming `stagingmerge-index` when the files this scan
        touches that have no entry hold more than keycost.index_behind_threshold() bytes."""
        size = sum(f.size for f in unindexed)
        if self._said_behind or size <= index_behind_threshold():
            return
        self._said_behind = True
        log.warning(
            f"main's key-range index is behind: {len(unindexed)} files ({size} bytes) this"
            " merge reads have no entry, and merges index only a share of them as they go;"
            f" run `stagingmerge-index --main {self.goal.main}` to index them all",
            main=str(self.goal.main),
            files=len(unindexed),
            bytes=size,
        )

    def _key_index(self) -> rangeindex.RangeIndex | None:
        """main's key-range index, loaded once a run (None: off, or main cannot use one)."""
        if self._index_read or not self.goal.key_index or self.main is None:
            return self._index
        self._index_read = True
        why = rangeindex.unusable(self.main, self.goal.keys)
        if why is not None:
            log.info("the key-range index is not used", main=str(self.goal.main), why=why)
            return None
        loaded = rangeindex.RangeIndex.load(
            Prefix(self.goal.main, self.goal.options), self.main.table_id(), self.goal.key_schema
        )
        self.metrics.key_index_bytes_read += loaded.bytes_read
        self._index = loaded.index
        failpoints.hit("key-index-loaded")
        return self._index

    # --- one span's commits ----------------------------------------------------------

    def commit_span(
        self,
        pieces: stream.Pieces,
        span: SpanKeys,
        tally: stream.SpanTally,
        record: Callable[[BatchResult], None],
        stop_if_asked: Callable[[], None],
    ) -> None:
        """One commit per piece. Before each, catch up with other writers' commits since
        main was last read (only the files they added, within the span's key ranges) and
        leave out the keys they added; after each, a commit that shows other writers'
        commits since that catch-up gets its keys re-checked and repaired. Every result
        goes to `record` (the span's last batch takes what is left of the tally)."""
        names = self.goal.keys
        ranges = span.wanted.ranges()
        boxes = predicates.predicate_boxes(names, ranges)
        versions = Versions.at(span.base)
        own_files: set[str] = set()  # files our commits added: never read back (our keys)
        taken = self.goal.key_schema.empty_table()  # keys other writers added meanwhile
        held: BatchResult | None = None  # the span's last batch takes what is left
        while (piece := pieces.next_piece()) is not None:
            if held is not None:
                record(held)
            stop_if_asked()
            failpoints.hit("batch-start")
            started = time.monotonic()
            written: list[pa.Table] = []
            for version in self._ready_main():
                versions.own(version)
            main = self.main
            assert main is not None
            others = 0
            if versions.behind(main.latest_version()):
                others = versions.others_since_ours(main.version)
                taken = self._catch_up(taken, span.wanted.keys, ranges, boxes, own_files)
                versions.caught_up(main.version)
            rows = stream.without_keys(piece, taken, names) if taken.num_rows else piece
            metadata = self._metadata()
            committed = main.append(
                _then_failpoint(stream.keeping_keys(rows, names, written)),
                self.target,
                metadata,
            )
            failpoints.hit("batch-after-commit")
            inserted = pa.concat_tables(written) if written else self.goal.key_schema.empty_table()
            late = versions.committed(committed, self._lost_answers(versions, committed, metadata))
            repaired = 0
            if late:
                # the next piece's catch-up takes the keys those commits hold
                if self._late_files_may_hold(inserted, boxes, committed, own_files):
                    try:
                        repaired = self._repair(inserted, committed)
                    except repairs.DuplicatesLeftError:
                        # the commit landed: counted (with every row of it) before the error
                        if held is not None:
                            record(held)
                        record(
                            replace(
                                tally.piece(inserted.num_rows),
                                version=committed,
                                concurrent_commits=others + late,
                                seconds=time.monotonic() - started,
                            )
                        )
                        raise
            else:
                self.files = Files.of(main, names, known=self.files)
            held = replace(
                # a repaired key's copy is theirs now: ours counts as already in main
                tally.piece(inserted.num_rows - repaired),
                version=committed,
                concurrent_commits=others + late,
                repaired=repaired,
                seconds=time.monotonic() - started,
            )
        assert held is not None  # a span with new keys has rows to insert
        record(tally.last(held))

    def _lost_answers(self, versions: Versions, committed: int, metadata: dict[str, str]) -> int:
        """Of the commits between what the span knows of main and our commit `committed`,
        how many are this very batch's commit: the store applied it but its answer was
        lost, object_store's retry found the version taken, and delta-rs committed the same
        actions again at the next version (the same files, so no row twice). They are
        ours, not other writers' (commit_answers_lost), found by the run and batch our
        commitInfo records."""
        assert self.main is not None
        between = range(versions.seen + 1, committed)
        if not between:
            return 0
        files = self.files or Files.of(self.main, self.goal.keys)
        ours = 0
        for version in between:
            info = files.written_by(version) or {}
            if all(info.get(k) == metadata[k] for k in (RUN_KEY, "stagingmerge.batch")):
                ours += 1
        if ours:
            self.metrics.commit_answers_lost += ours
            log.warning(
                "the store applied our commit but its answer was lost; the retry committed"
                " the same files again (no row twice)",
                main=str(self.goal.main),
                version=committed,
                lost=ours,
            )
        return ours

    def _metadata(self) -> dict[str, str]:
        metadata = {
            RUN_KEY: self.run,
            "stagingmerge.staging": str(self.goal.staging),
            "stagingmerge.staging_version": str(self.metrics.staging_version),
            "stagingmerge.batch": str(self.metrics.batches + 1),
            "stagingmerge.version": __version__,
        }
        if self.goal.shard is not None:
            metadata["stagingmerge.shard"] = self.goal.shard
        return metadata

    def _catch_up(
        self,
        taken: pa.Table,
        new: pa.Table,
        ranges: list[predicates.KeyRange],
        boxes: list[Box],
        own_files: set[str],
    ) -> pa.Table:
        """`taken` plus the keys of `new` (the span's keys to insert) that the files added
        since main was last read hold, our own commits' files (`own_files`) left out: they
        hold only keys already inserted, which no later piece has. main is at its latest
        version."""
        assert self.main is not None
        names = self.goal.keys
        earlier = self.files  # None: main was created during this span, nothing to diff
        self.files = Files.of(self.main, names, known=earlier)
        touched = {f.path for f in self.files.touched(boxes)}
        added = [
            f
            for f in (self.files.added_since(earlier) if earlier else [])
            if f.path in touched and unquote(f.path) not in own_files
        ]
        found = (
            self.files.keys_of(added, self.goal.key_schema, self.index_keys_read)
            if earlier
            else None
        )
        if found is None:  # not readable from the files: the span's ranges through delta-rs
            found = self.keys_within(ranges)
        self.metrics.main_files_caught_up += len(added)
        caught = keysets.semi_join(new, found, names) if found.num_rows else found
        merged = keysets.distinct_and_repeated(
            pa.concat_tables([taken, caught.select(taken.column_names).cast(taken.schema)]),
            names,
        )[0]
        log.info(
            "caught up with other writers' commits",
            main=str(self.goal.main),
            version=self.main.version,
            files=len(added),
            keys_taken=merged.num_rows - taken.num_rows,
        )
        return merged

    def _late_files_may_hold(
        self,
        inserted: pa.Table,
        boxes: list[Box],
        committed: int,
        own_files: set[str],
    ) -> bool:
        """Whether the commits that landed between our catch-up and our commit
        `committed` may hold a key we just inserted: only the files they added (from the
        Delta log, those whose statistics overlap the span's ranges) are read. False lets
        the commit skip the repair's scan of main's key ranges; True (or anything
        unreadable) repairs. Concurrent merges of disjoint keys (the shards of one merge)
        thus never rescan main. The files commit `committed` added join `own_files`, so no
        catch-up reads them back."""
        assert self.main is not None
        earlier = self.files
        if earlier is None or inserted.num_rows == 0:
            return bool(inserted.num_rows > 0)
        now = Files.of(self.main, self.goal.keys, known=earlier)
        ours = now.added_by(committed)
        if ours is None:
            return True
        own_files |= ours
        if now.version != committed:
            return True
        touched = {f.path for f in now.touched(boxes)}
        late = [
            f
            for f in now.added_since(earlier)
            if f.path in touched and unquote(f.path) not in own_files
        ]
        found = now.keys_of(late, self.goal.key_schema, self.index_keys_read)
        if found is None:
            return True
        self.metrics.main_files_caught_up += len(late)
        clash = keysets.semi_join(inserted, found, self.goal.keys) if found.num_rows else found
        log.info(
            "other writers committed during the batch; read only their files",
            main=str(self.goal.main),
            version=committed,
            files=len(late),
            keys_in_common=clash.num_rows,
        )
        return bool(clash.num_rows > 0)

    # --- making main ready -------------------------------------------------------------

    def _ready_main(self) -> list[int]:
        """Make main ready for the first append: created when missing (empty), its implied
        writer features declared (a run killed between those two commits left a version-0
        main without them). Returns the versions of the commits this made, in order, so
        they are not counted as other writers'."""
        made: list[int] = []
        if self.main is None and self._create_main():
            assert self.main is not None
            made.append(self.main.version)
        assert self.main is not None
        if not self._declared and self.main.version == 0:
            declared = self.main.declare_implied_features(
                {"stagingmerge.created_from": str(self.goal.staging)}
            )
            if declared is not None:
                log.info(
                    "declared main's implied writer features",
                    features=",".join(sorted(self.main.writer_features())),
                    version=declared,
                )
                made.append(declared)
        self._declared = True
        return made

    def _create_main(self) -> bool:
        """Create main with staging's columns (after every check passed, before the first
        append); a failed create leaves nothing behind. False when another writer created
        it first (main is then theirs, opened)."""
        goal = self.goal
        assert goal.create_as is not None  # planned when main was missing
        try:
            self.main = Table.create(
                goal.main,
                goal.options,
                goal.create_as,
                goal.partition_by,
                {"stagingmerge.created_from": str(goal.staging)},
            )
        except MergeError:
            where = Prefix(goal.main, goal.options)
            if not where.state().has_delta_log:
                where.delete_if_not_a_table()
                raise
            # another writer (another shard, a concurrent merge) created it first
            self.main = self.reopen()
            assert self.main is not None
            schema.check_compatible(self.main.columns(), self.staging_columns, goal.keys)
            self.target = plain_schema(self.main.arrow_schema())
            log.info("another writer created main meanwhile; appending to it", main=str(goal.main))
            return False
        self.metrics.main_created = True
        log.info(
            "created main",
            main=str(goal.main),
            partition_by=goal.partition_by,
            version=self.main.version,
        )
        return True

    # --- repairs -------------------------------------------------------------------------

    def _repair(self, new: pa.Table, committed: int) -> int:
        """Other commits landed between our read and our commit: undo any duplicate key.

        Keys we inserted that main now holds more than once were added concurrently by
        someone else; the copy that was there first (at `committed - 1`) is kept. The keys
        are recorded in staging first (repairs.py), so a run that cannot finish the rewrite
        leaves them for the next one instead of ending over duplicates.
        """
        names = self.goal.keys
        now = self.keys_within(keysets.key_ranges(new, names))
        twice = keysets.repeated_keys(keysets.semi_join(now, new, names), names)
        log.info(
            "other writers committed during the batch; checked for duplicates",
            main=str(self.goal.main),
            version=committed,
            duplicates=twice.num_rows,
        )
        if twice.num_rows == 0:
            return 0
        owed = repairs.Owed(committed, twice)
        self.repairs.record(owed)
        repaired = self._rewrite_first_copies(owed)
        self.repairs.done(committed)
        return repaired

    def repair_owed(self) -> None:
        """The repairs an earlier run recorded and could not finish, before anything else:
        the keys main still holds twice are rewritten to their first copy."""
        owed = self.repairs.owed(self.goal.key_schema)
        if not owed:
            return
        if self.main is None:  # no main, so nothing in it twice: the records are stale
            for record in owed:
                self.repairs.done(record.version)
            return
        names = self.goal.keys
        for record in owed:
            now = self.keys_within(keysets.key_ranges(record.keys, names))
            twice = keysets.repeated_keys(keysets.semi_join(now, record.keys, names), names)
            log.info(
                "an earlier run left a repair owed to main",
                main=str(self.goal.main),
                version=record.version,
                keys=record.keys.num_rows,
                still_twice=twice.num_rows,
            )
            if twice.num_rows:
                self.metrics.duplicates_repaired += self._rewrite_first_copies(
                    repairs.Owed(record.version, twice)
                )
            self.repairs.done(record.version)

    def _rewrite_first_copies(self, owed: repairs.Owed) -> int:
        """Rewrite each key of `owed` to one copy, the one main held before our commit
        `owed.version` (any one, if that version can no longer be read). Raises
        DuplicatesLeftError when main refuses the rewrite or it keeps conflicting."""
        assert self.main is not None
        names = self.goal.keys
        try:
            earlier: Table | None = self.main.at_version(owed.version - 1)
        except MergeError:
            earlier = None  # log cleaned up since: every copy is a valid row of the key
        tuples = keysets.key_tuples(owed.keys, names)
        for start in range(0, len(tuples), REPAIR_CHUNK):
            chunk = tuples[start : start + REPAIR_CHUNK]
            where = predicates.keys_in_predicate(names, self.goal.key_types, chunk)
            theirs = _one_per_key((earlier or self.main).scan(None, where), names)
            for attempt in range(1, REPAIR_ATTEMPTS + 1):
                try:
                    self.main.replace(
                        theirs,
                        where,
                        {"stagingmerge.repair": f"{len(chunk)} keys inserted concurrently"},
                    )
                    break
                except MergeError as exc:
                    # Delta sees a conflict whenever a concurrent commit may hold these keys;
                    # the rewrite is idempotent, so try again after the other writer. Any
                    # other refusal (an append-only main) will not pass on a retry.
                    retry = isinstance(exc, CommitConflictError) and not _refused_for_good(exc)
                    if not retry or attempt == REPAIR_ATTEMPTS:
                        raise self._duplicates_left(owed, exc) from exc
                    self.metrics.commit_retries += 1
                    time.sleep(min(5.0, 0.2 * 2**attempt))
        log.warning(
            "removed duplicates left by a concurrent writer",
            main=str(self.goal.main),
            keys=len(tuples),
        )
        return len(tuples)

    def _duplicates_left(self, owed: repairs.Owed, cause: MergeError) -> MergeError:
        self.metrics.outcome = Outcome.DUPLICATES_LEFT
        shown = ", ".join(
            repr(k) for k in keysets.key_tuples(owed.keys.slice(0, 3), self.goal.keys)
        )
        more = f" and {owed.keys.num_rows - 3} more" if owed.keys.num_rows > 3 else ""
        return repairs.DuplicatesLeftError(
            f"another writer added {owed.keys.num_rows} of the keys our commit {owed.version}"
            f" inserted into main {self.goal.main} at the same time, and the rewrite that keeps"
            f" one copy of each failed ({cause}): main holds these keys twice ({shown}{more});"
            f" staging is kept with the record of them ({REPAIRS_DIR}/): once main"
            " accepts the rewrite (for an append-only main: lift delta.appendOnly, or remove"
            " one copy of each key yourself), rerun"
        )


def _refused_for_good(exc: MergeError) -> bool:
    """A commit main refuses whatever happens meanwhile: an append-only table."""
    return "append-only" in str(exc).lower() or "appendonly" in str(exc).lower()


def _one_per_key(rows: pa.Table, names: Sequence[str]) -> pa.Table:
    numbered = keysets.with_positions(rows, 0)
    keep = keysets.first_occurrences(numbered.select([*names, keysets.POSITION]), names)
    return rows.take(sorted(keep[keysets.POSITION].to_pylist()))


def _then_failpoint(rows: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The rows, then the `batch-before-commit` crash point (files written, no commit)."""
    yield from rows
    failpoints.hit("batch-before-commit")
