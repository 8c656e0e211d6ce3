"""Which of a span's staging rows are inserted, and how they are cut into commits (pure).

The rows come as a stream of record batches (a delta-rs scan of the span, in no
particular order). `rows_to_insert` keeps the rows whose key is new to main; a key staging
holds more than once is held back until the stream ends, then its winning copy is
emitted (keysets.pick_winners). `cut` splits a stream into consecutive pieces of at most
`size` rows, one commit each, without reading ahead of the piece being written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from .. import keysets
from ..reporting import BatchResult


def rows_to_insert(
    batches: Iterator[pa.RecordBatch],
    new: keysets.Members,
    repeated: pa.Table,
    names: Sequence[str],
    first_by: Sequence[str],
) -> Iterator[pa.RecordBatch]:
    """The rows of `batches` whose key is in `new` (distinct keys), each key once.

    `repeated` holds the keys of `new` that `batches` contains more than once: their
    copies are held back (at most the span's repeated rows) and one winner each is
    emitted at the end."""
    held: list[pa.Table] = []
    repeated_keys = keysets.Members(repeated, names)
    for rows in _chunks(batches, FILTER_ROWS, FILTER_BYTES):
        wanted = rows.filter(new.mask(rows))
        if len(repeated_keys):
            twice = repeated_keys.mask(wanted)
            if pc.any(twice).as_py():
                held.append(wanted.filter(twice))
                wanted = wanted.filter(pc.invert(twice))
        yield from wanted.to_batches()
    if held:
        yield from keysets.pick_winners(pa.concat_tables(held), names, first_by).to_batches()


# Rows filtered at a time: up to 16 K rows or 16 MiB (wide rows), whichever comes first.
# Each probe of the key index has a fixed cost, and the writer waits for each chunk: on
# 1 M narrow rows 8 K-row chunks took 10 % more CPU, 32 K and 64 K ones let the writer wait.
FILTER_ROWS = 16_384
FILTER_BYTES = 16 << 20


def _chunks(batches: Iterator[pa.RecordBatch], rows: int, size: int) -> Iterator[pa.Table]:
    """Record batches gathered into tables of about `rows` rows or `size` bytes, whichever
    comes first (fewer, larger probes; memory bounded however wide the rows)."""
    gathered: list[pa.RecordBatch] = []
    count = nbytes = 0
    for batch in batches:
        gathered.append(batch)
        count += batch.num_rows
        nbytes += batch.nbytes
        if count >= rows or nbytes >= size:
            yield pa.Table.from_batches(gathered)
            gathered, count, nbytes = [], 0, 0
    if gathered:
        yield pa.Table.from_batches(gathered)


class Pieces:
    """`batches` cut into consecutive pieces of at most `size` rows (the last may be
    shorter); iterate each piece to its end before asking for the next."""

    def __init__(self, batches: Iterator[pa.RecordBatch], size: int) -> None:
        self._batches = batches
        self._size = size
        self._carry: pa.RecordBatch | None = None
        self._done = False

    def next_piece(self) -> Iterator[pa.RecordBatch] | None:
        """The next piece, or None when the stream is exhausted."""
        if self._carry is None and not self._done:
            self._carry = next(self._batches, None)
            self._done = self._carry is None
        if self._carry is None:
            return None
        return self._piece()

    def _piece(self) -> Iterator[pa.RecordBatch]:
        left = self._size
        while left > 0:
            batch = self._carry if self._carry is not None else next(self._batches, None)
            self._carry = None
            if batch is None:
                self._done = True
                return
            if batch.num_rows > left:
                self._carry = batch.slice(left)
                batch = batch.slice(0, left)
            left -= batch.num_rows
            if batch.num_rows:
                yield batch


def batch_count(rows: int, size: int) -> int:
    """How many pieces of at most `size` rows `rows` rows make (at least one)."""
    return max(1, -(-rows // size))


@dataclass
class SpanTally:
    """A span's counts, handed out batch by batch: each batch its inserted rows, the
    span's last batch also the rest (copies of keys main held, repeated copies)."""

    rows: int
    distinct: int
    inserted: int = 0

    def piece(self, inserted: int) -> BatchResult:
        self.inserted += inserted
        return BatchResult(0, inserted, inserted, 0, 0, None, 0.0)

    def last(self, result: BatchResult) -> BatchResult:
        existing, duplicates = self.distinct - self.inserted, self.rows - self.distinct
        return replace(
            result,
            rows=result.rows + existing + duplicates,
            skipped_existing=existing,
            skipped_duplicates=duplicates,
        )


def keeping_keys(
    rows: Iterator[pa.RecordBatch], names: Sequence[str], into: list[pa.Table]
) -> Iterator[pa.RecordBatch]:
    """The rows, unchanged; the key columns of each go to `into` (to re-check them)."""
    for batch in rows:
        into.append(pa.Table.from_batches([batch]).select(list(names)))
        yield batch


def without_keys(
    rows: Iterator[pa.RecordBatch], keys: pa.Table, names: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """The rows whose key is not in `keys` (distinct keys other writers added meanwhile)."""
    taken = keysets.Members(keys, names)
    for batch in rows:
        table = pa.Table.from_batches([batch])
        yield from table.filter(pc.invert(taken.mask(table))).to_batches()
