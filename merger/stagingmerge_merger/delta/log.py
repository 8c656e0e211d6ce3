"""Our own reading of a Delta log's files, where delta-rs accepts what no writer produces.

delta-rs takes a 0-byte commit file as a valid, empty version, and reports a gap in the
commits or a `_last_checkpoint` that names no checkpoint as an error that looks like
passing storage trouble. Neither can come from a Delta writer, and neither heals: a torn
commit (a writer killed mid-write on a store without atomic puts) names data files whose
rows the table then silently lacks, and merging such a staging, then deleting it, would
lose those rows for good. So before a table is read, `audit` checks what delta-rs
cannot tell apart, from the log's listing and the commits it would replay:

- `_last_checkpoint`, when present, parses and names a checkpoint that is there whole
  (every part of a multi-part one);
- the commits after the checkpoint the reader starts from (or from version 0) are all
  there, without a gap, up to the newest;
- each of those commits is a file of JSON objects, one action per line, with at least
  one action.

Anything else is invalid input (exit 2, naming the file): nothing is written and staging
is kept. Everything else about the log (the actions' meaning, checkpoints' content,
protocol features) is delta-rs's to read; this module only reads names and commit lines.
It also answers, from the listing alone, which commit versions exist (`commit_versions`),
and from one commit's file which files it added (`added_paths`) and who wrote it
(`commit_info`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..errors import InvalidInputError, MergeError
from ..storage import DELTA_LOG, Prefix

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CLASSIC = re.compile(r"^(\d{20})\.checkpoint\.parquet$")
_PART = re.compile(r"^(\d{20})\.checkpoint\.(\d{10})\.(\d{10})\.parquet$")
_V2 = re.compile(r"^(\d{20})\.checkpoint\.[0-9a-fA-F-]{36}\.(json|parquet)$")
LAST_CHECKPOINT = "_last_checkpoint"
READ_THREADS = 16  # commits fetched at once (object stores: one GET each)


@dataclass(frozen=True)
class Listing:
    """What `_delta_log/` holds, by name: commit versions and their sizes, and the
    versions of the checkpoints that are there whole."""

    commits: Mapping[int, int]  # version -> size in bytes
    checkpoints: frozenset[int]
    parts: Mapping[int, frozenset[tuple[int, int]]]  # multi-part: version -> (part, of)
    has_last_checkpoint: bool

    @property
    def newest(self) -> int | None:
        versions = [*self.commits, *self.checkpoints]
        return max(versions) if versions else None

    def complete_checkpoint(self, version: int) -> bool:
        if version in self.checkpoints:
            return True
        parts = self.parts.get(version, frozenset())
        return any({(i, total) for i in range(1, total + 1)} <= parts for _part, total in parts)


def read_listing(prefix: Prefix, since: int | None = None) -> Listing:
    """The log's files, by name, through one listing of `_delta_log/` (from version
    `since` on, as a reader lists after its checkpoint hint, when given)."""
    commits: dict[int, int] = {}
    checkpoints: set[int] = set()
    parts: dict[int, set[tuple[int, int]]] = {}
    has_last = False
    after = None if since is None else f"{DELTA_LOG}/{since:020d}"
    for name, size in prefix.list(DELTA_LOG, after=after):
        if "/" in name:  # _sidecars/, _staged_commits/: read by delta-rs, not named here
            continue
        if name == LAST_CHECKPOINT:
            has_last = True
        elif match := _COMMIT.match(name):
            commits[int(match.group(1))] = size
        elif (match := _CLASSIC.match(name)) or (match := _V2.match(name)):
            if size > 0:
                checkpoints.add(int(match.group(1)))
        elif (match := _PART.match(name)) and size > 0:
            parts.setdefault(int(match.group(1)), set()).add(
                (int(match.group(2)), int(match.group(3)))
            )
    return Listing(
        commits,
        frozenset(checkpoints),
        {v: frozenset(p) for v, p in parts.items()},
        has_last,
    )


def commit_versions(prefix: Prefix) -> list[int]:
    """The versions of the commit files the log holds, ascending."""
    return sorted(read_listing(prefix).commits)


def audit(prefix: Prefix, role: str, up_to: int | None = None) -> int | None:
    """Refuse (InvalidInputError) a log no Delta writer could have left; see the module
    docstring. `up_to`: check the commits up to this version only (the version a reader
    opened; later commits are another writer's, not yet read). Returns the newest
    version checked (None: there is no log, which delta-rs reports itself)."""
    where = f"{role} {prefix.location}"
    hint = _last_checkpoint(prefix, where)
    listing = read_listing(prefix, since=None if hint is None else hint[0])
    if hint is not None and not _whole(listing, *hint):
        raise InvalidInputError(
            f"{where} is not a valid Delta table: _delta_log/{LAST_CHECKPOINT} names"
            f" checkpoint {hint[0]}, which is not there whole"
        )
    newest = listing.newest if up_to is None else up_to
    if newest is None:
        return None
    done = [v for v in [*listing.checkpoints, *listing.parts] if v <= newest]
    whole = [v for v in done if listing.complete_checkpoint(v)]
    start = max(whole) + 1 if whole else 0
    missing = [v for v in range(start, newest + 1) if v not in listing.commits]
    if missing:
        shown = ", ".join(_commit_name(v) for v in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        after = f"checkpoint {start - 1}" if start else "version 0"
        raise InvalidInputError(
            f"{where} is not a valid Delta table: its log lacks commit {shown}{more} (a gap"
            f" between {after} and version {newest}); no reader can rebuild the table"
        )
    versions = list(range(start, newest + 1))
    empty = [v for v in versions if listing.commits[v] == 0]
    if empty:
        raise InvalidInputError(_torn(where, empty[0], "is empty (0 bytes)"))
    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(versions)))) as pool:
        for version, problem in zip(
            versions, pool.map(lambda v: _problem(prefix, v), versions), strict=True
        ):
            if problem:
                raise InvalidInputError(_torn(where, version, problem))
    return newest


def _whole(listing: Listing, version: int, parts: int | None) -> bool:
    if parts is None or parts <= 1:
        return listing.complete_checkpoint(version)
    return {(i, parts) for i in range(1, parts + 1)} <= listing.parts.get(version, frozenset())


def _last_checkpoint(prefix: Prefix, where: str) -> tuple[int, int | None] | None:
    """(version, parts) that `_last_checkpoint` names; None if it vanished meanwhile."""
    raw = prefix.read(f"{DELTA_LOG}/{LAST_CHECKPOINT}")
    if raw is None:
        return None
    try:
        hint = json.loads(raw)
        version = hint["version"]
        parts = hint.get("parts")
        if not isinstance(version, int) or not (parts is None or isinstance(parts, int)):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInputError(
            f"{where} is not a valid Delta table: _delta_log/{LAST_CHECKPOINT} does not parse"
            " (a JSON object with an integer version)"
        ) from None
    return version, parts


def _problem(prefix: Prefix, version: int) -> str | None:
    """What is wrong with one commit file, or None."""
    raw = prefix.read(f"{DELTA_LOG}/{_commit_name(version)}")
    if raw is None:
        return "vanished while the log was read"
    return problem_of(raw)


def problem_of(raw: bytes) -> str | None:
    """What makes these bytes no Delta commit, or None: every non-blank line one JSON
    object of one action, and at least one action."""
    actions = 0
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError:
            return f"does not parse as JSON at line {number} (torn or corrupt)"
        if not isinstance(action, dict) or len(action) != 1:
            return f"line {number} is not one Delta action"
        actions += 1
    return None if actions else "holds no action"


def _torn(where: str, version: int, problem: str) -> str:
    return (
        f"{where} is not a valid Delta table: commit _delta_log/{_commit_name(version)}"
        f" {problem}; no Delta writer leaves such a commit (a writer killed mid-write?):"
        " repair or rewrite the table"
    )


def _commit_name(version: int) -> str:
    return f"{version:020d}.json"


def _actions(prefix: Prefix, version: int) -> list[dict[str, Any]] | None:
    """One commit's actions, from its commit file; None when it cannot be read
    faithfully."""
    try:
        raw = prefix.read(f"{DELTA_LOG}/{_commit_name(version)}")
    except MergeError:
        return None
    if raw is None or problem_of(raw):
        return None
    actions = (json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip())
    return [action for action in actions if isinstance(action, dict)]


def added_paths(prefix: Prefix, version: int) -> set[str] | None:
    """The data files one commit added (paths as in the log, percent-decoded), from its
    commit file; None when it cannot be read faithfully."""
    actions = _actions(prefix, version)
    if actions is None:
        return None
    return {
        unquote(str(action["add"].get("path")))
        for action in actions
        if isinstance(action.get("add"), dict)
    }


def commit_info(prefix: Prefix, version: int) -> dict[str, Any] | None:
    """One commit's commitInfo action (where writers record who they are and, for us,
    the run and batch: stages/commits.py); None when there is none or it cannot be read."""
    for action in _actions(prefix, version) or []:
        if isinstance(action.get("commitInfo"), dict):
            return dict(action["commitInfo"])
    return None
