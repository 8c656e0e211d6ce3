"""What one merge is asked to do (the CLI's options, parsed): the input of every stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import shards
from .contract import BATCH_ROWS, DEFAULT_KEYS, KEY_MEMORY, KEY_SAMPLE_ROWS
from .storage import Location


@dataclass(frozen=True)
class MergeRequest:
    main: Location
    staging: Location
    keys: tuple[str, ...] = DEFAULT_KEYS
    batch_rows: int = BATCH_ROWS
    keep_staging: bool = False
    dry_run: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    partition_by: tuple[str, ...] = ()
    allowed_prefixes: tuple[Location, ...] = ()
    first_by: tuple[str, ...] = ()  # which copy of a repeated key wins (then: fingerprint)
    key_memory: int = KEY_MEMORY  # bytes of keys one span may hold (sizes spans)
    key_sample_rows: int = KEY_SAMPLE_ROWS  # planning keeps every key of a staging this small
    shard: shards.Shard | None = None  # merge only this shard's span (shards.py)
    key_index: bool = True  # skip main's files by its key-range index (rangeindex.py)

    @property
    def sharded(self) -> bool:
        """Whether this run merges one of several shards' spans."""
        return self.shard is not None and self.shard.count > 1

    @property
    def deletes(self) -> bool:
        """Whether a successful run deletes staging."""
        return not (self.keep_staging or self.dry_run)
