"""Helpers shared by every test layer: real Delta tables in tmp_path, the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from stagingmerge_merger.keysets import row_fingerprints
from stagingmerge_merger.keyspace import Span
from stagingmerge_merger.sample import ct_table

CLI = str(Path(sys.executable).with_name("stagingmerge-merge"))
CLUSTER_CLI = str(Path(sys.executable).with_name("stagingmerge-cluster"))
KEYS = ["source_url", "cert_index"]


def ct(logs: Sequence[int], indexes: Sequence[int], seed: int = 0, **kwargs: Any) -> pa.Table:
    """CT rows for (log, index) pairs."""
    return ct_table(list(logs), list(indexes), seed=seed, **kwargs)


def write(path: Path | str, table: pa.Table, **kwargs: Any) -> Path:
    write_deltalake(str(path), table, mode=kwargs.pop("mode", "append"), **kwargs)
    return Path(path)


def read(table: DeltaTable, columns: Sequence[str] | None = None) -> pa.Table:
    """A table's rows through delta-rs's own scan (column mapping, deletion vectors and
    partition values as the log says), with the table's Arrow types."""
    schema = pa.schema(
        [pa.field(f.name, f.type, f.nullable) for f in pa.schema(table.schema().to_arrow())]
    )
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    return pa.table(table.scan(columns=schema.names)).select(schema.names).cast(schema)


def rows(
    path: Path | str, version: int | None = None, options: dict[str, str] | None = None
) -> pa.Table:
    """Every row of a table, sorted by key, for exact comparisons."""
    table = read(DeltaTable(str(path), version=version, storage_options=options))
    if "seen_date" in table.column_names:
        table = table.select(sorted(table.column_names))
    keys = [k for k in KEYS if k in table.column_names] or table.column_names[:1]
    return table.sort_by([(k, "ascending") for k in keys])


def key_list(path: Path | str) -> list[tuple[Any, ...]]:
    table = read(DeltaTable(str(path)), KEYS)
    return sorted(zip(*(table[k].to_pylist() for k in KEYS), strict=True))


def version(path: Path | str) -> int:
    return int(DeltaTable(str(path)).version())


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    metrics: dict[str, Any]

    @property
    def error_lines(self) -> list[str]:
        return [
            json.loads(line)["event"]
            for line in self.stderr.splitlines()
            if line.startswith("{") and json.loads(line).get("level") == "error"
        ]


def run_cli_after_first_batch(
    *args: str,
    then: Callable[[subprocess.Popen[str]], object],
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> CliResult:
    """Run the real CLI; as soon as its first batch has committed, call `then(process)`
    (send a signal, stop the store, write to staging...); return how the run ended."""
    proc = subprocess.Popen(
        [CLI, "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if '"batch done"' in line:
            then(proc)
            break
    out, err = proc.communicate(timeout=timeout)
    metrics = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return CliResult(proc.returncode, out, "".join(seen) + err, metrics)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    command: str = CLI,
    confined_to: Path | None = None,
) -> CliResult:
    """Run the real `stagingmerge-merge` (or `command`) as a process with JSON logs;
    `confined_to`: with every file outside that folder read-only (tests/confine.py; the
    test skips where that is not possible)."""
    argv = [command, "--log-format", "json", *args]
    if confined_to is not None:
        import pytest

        from tests import confine

        wrapped = confine.confined(argv, confined_to)
        if wrapped is None:
            pytest.skip("cannot confine the run to its folder here (unshare refused)")
        argv = wrapped
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    metrics = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    return CliResult(proc.returncode, proc.stdout, proc.stderr, metrics)


def winners(
    staging_rows: pa.Table, keys: Sequence[str] = KEYS, first_by: Sequence[str] = ()
) -> dict[tuple[Any, ...], int]:
    """The README's rule, row by row in Python: for each key, the index of the copy with
    the smallest `first_by` values (NULLs last), then the smallest fingerprint."""
    prints = row_fingerprints(staging_rows)
    best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    chosen: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(staging_rows.to_pylist()):
        key = tuple(row[k] for k in keys)
        rank = (*((row[c] is None, row[c]) for c in first_by), prints[i])
        if key not in best or rank < best[key]:
            best[key], chosen[key] = rank, i
    return chosen


def expected_union(
    main_rows: pa.Table, staging_rows: pa.Table, first_by: Sequence[str] = ()
) -> pa.Table:
    """What main must hold after a merge: its rows, plus the winning staging copy of every
    key it lacks; columns sorted by name, rows by key (as `rows()` reads them)."""
    have = set(
        zip(main_rows["source_url"].to_pylist(), main_rows["cert_index"].to_pylist(), strict=True)
    )
    keep = sorted(i for key, i in winners(staging_rows, KEYS, first_by).items() if key not in have)
    table = pa.concat_tables([main_rows, staging_rows.take(keep)])
    return table.select(sorted(table.column_names)).sort_by(
        [("source_url", "ascending"), ("cert_index", "ascending")]
    )


def in_span(key: tuple[Any, ...], span: Span) -> bool:
    """Whether a key tuple lies inside the span: the span predicate's meaning, in Python
    (an oracle for the tests of the code that builds the predicate)."""
    return (span.low is None or key >= span.low) and (span.high is None or key < span.high)


def tree_hash(*paths: Path) -> str:
    """One digest of every file under `paths` (names and bytes): equal means untouched."""
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.exists():
                digest.update(str(path).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()
