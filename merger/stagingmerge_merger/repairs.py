"""Repairs owed to main, recorded in staging until they are done.

A commit of ours that other writers' commits preceded can leave a key in main twice
(theirs and ours); the merge then rewrites those keys back to the copy that was there
first. That rewrite can be refused for good (a main with `delta.appendOnly`) or keep
conflicting. Were the run to stop there, a rerun would find every key present, insert
nothing, delete staging and exit 0 over the duplicates. So the keys are recorded in
staging (`_stagingmerge/repairs/<version>.arrows`, an Arrow IPC stream of the key
columns, one record per commit that needs repairing) *before* the rewrite, and removed
once it committed. A run finding records does them first, and fails (exit 1, staging
kept, the keys named) for as long as one cannot be done: never success over duplicates.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import structlog

from .contract import REPAIRS_DIR, Reason
from .errors import MergeError
from .storage import Prefix

log = structlog.get_logger("stagingmerge.merge")


class DuplicatesLeftError(MergeError):
    """Main holds keys twice that a rewrite could not repair; staging is kept (with the
    record of them) so no rerun reports success before they are repaired."""

    reason = Reason.DUPLICATES_LEFT


@dataclass(frozen=True)
class Owed:
    """One recorded repair: the keys main may hold twice since commit `version` of ours."""

    version: int
    keys: pa.Table


class Repairs:
    """The records under staging's `_stagingmerge/repairs/`."""

    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix

    def _path(self, version: int) -> str:
        return f"{REPAIRS_DIR}/{version:020d}.arrows"

    def record(self, owed: Owed) -> None:
        """Best effort: a record that cannot be written is a warning (the rewrite is still
        tried; only a failed rewrite *and* a lost record could leave duplicates unseen)."""
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, owed.keys.schema) as writer:
            writer.write_table(owed.keys)
        try:
            self.prefix.put(self._path(owed.version), sink.getvalue())
        except MergeError as exc:
            log.warning("could not record the repair owed to main", error=str(exc))

    def done(self, version: int) -> None:
        self.prefix.delete(self._path(version))

    def owed(self, schema: pa.Schema) -> list[Owed]:
        """Every recorded repair, oldest first; a record that cannot be read as keys of
        `schema` fails the run (it names keys main may hold twice)."""
        found = []
        for name, _size in sorted(self.prefix.list(REPAIRS_DIR)):
            stem = name.removesuffix(".arrows")
            if "/" in name or not stem.isdigit():
                continue
            raw = self.prefix.read(f"{REPAIRS_DIR}/{name}")
            if raw is None:
                continue
            try:
                keys = pa.ipc.open_stream(raw).read_all()
                keys = keys.select(schema.names).cast(schema)
            except (pa.ArrowException, KeyError, ValueError) as exc:
                raise MergeError(
                    f"staging's {REPAIRS_DIR}/{name} records keys main may hold twice, but"
                    f" cannot be read with keys {','.join(schema.names)} ({exc}); rerun with"
                    " the keys of the run that wrote it"
                ) from exc
            found.append(Owed(int(stem), keys))
        return found
