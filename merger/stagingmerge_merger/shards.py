"""One merge spread over N processes: shard i of N merges one span of staging's key space.

The split (pure functions here, the shared records in `Ledger`):

- **Disjoint by construction.** N-1 cut points cut the key space into N half-open spans
  `[cut_i, cut_i+1)` that tile it: every key tuple falls into exactly one span, so all
  copies of a key are in one shard (the first-copy rule holds within each key) and no two
  shards can insert the same key. The cut points come from staging's file statistics when
  those can balance the shards (filecuts.py: no key is read to place them), else from a
  sample of staging's keys at evenly spaced ranks (cuts_from_sample); either way they decide
  only the balance. Few distinct keys give some shards an empty span; they still report done.
- **One plan per staging version.** Statistics give every shard the same cuts, and so does
  a sample that is exact (every key, up to `--key-sample-rows`); a larger staging's sample
  depends on the order rows are read in, so the first shard to plan records its cuts
  under `_stagingmerge/shards/` in staging (a create-only write, atomic on every store)
  and the others use the recorded cuts. A dry run uses a recorded plan when there is one
  and writes nothing.
- **Staging is deleted once, after every shard.** Each shard that merged its span
  records it (`done-<i>.json`, naming the plan); the shard that then finds all N records
  of the same plan claims the deletion (create-only `delete-claim.json`) and deletes
  staging. A retried claimant finds its own claim and finishes; every other shard
  reports who deletes. A rerun with a different N plans and records afresh (the files
  are keyed by staging version and N).

`_stagingmerge/` starts with an underscore, so Delta readers and VACUUM leave it alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import keyvalues
from .contract import MAX_SHARDS, SHARDS_DIR
from .contract import SHARD_INDEX_ENV as INDEX_ENV
from .errors import InvalidInputError
from .keyspace import KeyTuple, Span
from .storage import Prefix


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`i/N` (0 <= i < N) as a Shard; InvalidInputError with the rule otherwise."""
    index, slash, count = text.strip().partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if not slash or shard is None or not (0 <= shard.index < shard.count <= MAX_SHARDS):
        raise InvalidInputError(
            f"--shard must be i/N with 0 <= i < N <= {MAX_SHARDS} (e.g. 0/4), got {text!r}"
        )
    return shard


def shard_from_environment(count: int, environ: dict[str, str] | None = None) -> Shard:
    """Shard `$JOB_COMPLETION_INDEX`/count: what `--shards N` means in an Indexed Job."""
    raw = (environ if environ is not None else dict(os.environ)).get(INDEX_ENV)
    if raw is None:
        raise InvalidInputError(
            f"--shards {count} reads the shard's index from ${INDEX_ENV} (set in each pod of"
            " an Indexed Job), which is not set; pass --shard i/N instead"
        )
    return parse_shard(f"{raw}/{count}")


# --- the plan (pure) ------------------------------------------------------------------


CUT_SAMPLE = 65_536  # keys sorted to place the cuts (within a few per mille of balance)


def cuts_from_sample(
    sample: pa.Table, names: Sequence[str], count: int, exact: bool = False
) -> pa.Table:
    """The N-1 cut points of `count` shards: keys at ranks j*len/N of the sample, sorted
    and non-decreasing (equal neighbours leave an empty shard between them).

    Unless `exact`, the ranks are taken in an evenly spaced subsample of CUT_SAMPLE keys
    (sorting a million keys costs more than the shard's whole plan otherwise); which keys
    those are depends on the order the sample was read in, so the cuts are agreed on by
    recording them (Ledger.agree_on). `exact` sorts the whole sample: for an exact sample
    (every key), the same cuts in every process without a record (a dry run)."""
    keys = sample.select(list(names))
    if not exact and keys.num_rows > CUT_SAMPLE:
        step = keys.num_rows / CUT_SAMPLE
        keys = keys.take(pa.array([int(i * step) for i in range(CUT_SAMPLE)], pa.int64()))
    ordered = keys.sort_by([(n, "ascending") for n in names])
    if count <= 1 or ordered.num_rows == 0:
        return ordered.slice(0, 0)
    ranks = [min(ordered.num_rows - 1, (j * ordered.num_rows) // count) for j in range(1, count)]
    return ordered.take(pa.array(ranks, pa.int64()))


def span_of(cuts: pa.Table, names: Sequence[str], shard: Shard) -> Span:
    """Shard i's span: [cut_i, cut_i+1), open at both ends of the key space."""
    points = [tuple(row[n] for n in names) for row in keyvalues.as_numbers(cuts).to_pylist()]
    if len(points) != shard.count - 1:
        raise ValueError(f"{len(points)} cut points cannot make {shard.count} shards")
    bounds: list[KeyTuple | None] = [None, *points, None]
    return Span(bounds[shard.index], bounds[shard.index + 1])


def is_empty(span: Span) -> bool:
    return span.low is not None and span.high is not None and span.low >= span.high


def clamp(spans: Sequence[Span], outer: Span) -> list[Span]:
    """Spans planned over a shard's keys (open at both ends) closed to the shard's span."""
    if is_empty(outer):
        return []
    result = list(spans)
    result[0] = Span(outer.low, result[0].high)
    result[-1] = Span(result[-1].low, outer.high)
    return result


def encode_cuts(cuts: pa.Table) -> bytes:
    """The cut points as an Arrow IPC stream: every key type round-trips exactly."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, cuts.schema) as writer:
        writer.write_table(cuts)
    return sink.getvalue()


def decode_cuts(data: bytes, schema: pa.Schema) -> pa.Table:
    table = pa.ipc.open_stream(data).read_all()
    if table.schema.names != schema.names:
        raise InvalidInputError(
            f"the shard plan recorded in staging's {SHARDS_DIR}/ has keys"
            f" {','.join(table.schema.names)}, this run {','.join(schema.names)}: rerun with"
            f" --keys {','.join(table.schema.names)}, or delete {SHARDS_DIR}/ to plan afresh"
        )
    return table.cast(schema)


def plan_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --- the records in staging (I/O through Prefix) --------------------------------------


@dataclass(frozen=True)
class Finish:
    """What a shard found when it recorded its span as done."""

    done: int  # shards of this plan that recorded done (this one included)
    deletes: bool  # this shard deletes staging
    deleter: int | None  # the shard that claimed the deletion, when known


class Ledger:
    """A staging version's shard plan and done-records, under `_stagingmerge/shards/`."""

    def __init__(self, prefix: Prefix, staging_version: int, shard: Shard) -> None:
        self.prefix = prefix
        self.shard = shard
        self.folder = f"{SHARDS_DIR}/v{staging_version}-of-{shard.count}"

    def agree_on(self, cuts: pa.Table, record: bool) -> tuple[pa.Table, str]:
        """The plan every shard uses: the recorded one if there is one, else `cuts`
        (recorded first, unless `record` is false: a dry run writes nothing)."""
        path = f"{self.folder}/plan.arrows"
        data = encode_cuts(cuts)
        if record and self.prefix.create(path, data):
            return cuts, plan_id(data)
        recorded = self.prefix.read(path)
        if recorded is None:
            return cuts, plan_id(data)
        return decode_cuts(recorded, cuts.schema), plan_id(recorded)

    def finish(self, plan: str, summary: dict[str, Any]) -> Finish:
        """Record this shard's span as merged; claim the deletion if every shard has."""
        me = self.shard.index
        body = {"shard": me, "shards": self.shard.count, "plan": plan, **summary}
        self.prefix.put(f"{self.folder}/done-{me}.json", json.dumps(body).encode())
        done = 0
        for index in range(self.shard.count):
            record = self._json(f"{self.folder}/done-{index}.json")
            done += bool(record and record.get("plan") == plan)
        if done < self.shard.count:
            return Finish(done, deletes=False, deleter=None)
        claim = f"{self.folder}/delete-claim.json"
        if self.prefix.create(claim, json.dumps({"shard": me, "plan": plan}).encode()):
            return Finish(done, deletes=True, deleter=me)
        holder = (self._json(claim) or {}).get("shard")
        return Finish(done, deletes=holder == me, deleter=holder)

    def _json(self, path: str) -> dict[str, Any] | None:
        raw = self.prefix.read(path)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
