"""Delta tables with features deltalake cannot write, built by writing their log actions and
files exactly as the Delta protocol (PROTOCOL.md) specifies.

- deletion vectors, stored inline (`storageType: "i"`, Z85 of the RoaringBitmapArray:
  magic 1681511377, then a 64-bit RoaringTreemap of 32-bit portable Roaring bitmaps);
- v2 checkpoints (a UUID-named JSON checkpoint with `checkpointMetadata`, pointed at by
  `_last_checkpoint`), with the commits it covers deleted;
- v1 checkpoints with the commits before them cleaned up;
- data files written by other engines: INT96 timestamps, far-future dates.

Each builder is checked against delta-rs's own reading of it in
tests/integration/test_delta_features.py, so a fixture that drifted from the protocol
would show up there rather than silently test nothing.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
DV_MAGIC = 1681511377
_ROARING_NO_RUNS = 12346  # SERIAL_COOKIE_NO_RUNCONTAINER of the portable Roaring format


def z85(data: bytes) -> str:
    """Z85 (ZeroMQ base85), zero-padded to a multiple of 4 bytes as Delta does."""
    data += b"\0" * (-len(data) % 4)
    out = []
    for start in range(0, len(data), 4):
        (value,) = struct.unpack(">I", data[start : start + 4])
        chars = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chars.append(_Z85[digit])
        out.append("".join(reversed(chars)))
    return "".join(out)


def _roaring32(values: Iterable[int]) -> bytes:
    """A 32-bit Roaring bitmap in the portable format, array containers only."""
    groups: dict[int, list[int]] = {}
    for value in sorted(set(values)):
        groups.setdefault(value >> 16, []).append(value & 0xFFFF)
    keys = sorted(groups)
    header = struct.pack("<II", _ROARING_NO_RUNS, len(keys))
    header += b"".join(struct.pack("<HH", k, len(groups[k]) - 1) for k in keys)
    first = len(header) + 4 * len(keys)
    offsets, body = b"", b""
    for key in keys:
        if len(groups[key]) > 4096:
            raise ValueError("this builder writes array containers only (<= 4096 rows)")
        offsets += struct.pack("<I", first + len(body))
        body += b"".join(struct.pack("<H", v) for v in groups[key])
    return header + offsets + body


def deletion_vector(rows: Sequence[int]) -> bytes:
    """The RoaringBitmapArray of deleted row indexes, as Delta serialises it."""
    buckets: dict[int, list[int]] = {}
    for row in rows:
        buckets.setdefault(row >> 32, []).append(row & 0xFFFFFFFF)
    out = struct.pack("<iQ", DV_MAGIC, len(buckets))
    for key in sorted(buckets):
        out += struct.pack("<I", key) + _roaring32(buckets[key])
    return out


def _log(table: Path) -> Path:
    return table / "_delta_log"


def _commit_files(table: Path) -> list[Path]:
    return sorted(p for p in _log(table).glob("*.json") if p.stem.isdigit())


def _read_actions(commit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]


def _write_actions(commit: Path, actions: Iterable[dict[str, Any]]) -> None:
    commit.write_text("".join(json.dumps(a) + "\n" for a in actions))


def _add_feature(actions: list[dict[str, Any]], feature: str, reader: bool = True) -> None:
    for action in actions:
        if "protocol" in action:
            protocol = action["protocol"]
            writer_features = set(protocol.get("writerFeatures") or [])
            reader_features = set(protocol.get("readerFeatures") or [])
            protocol["minReaderVersion"], protocol["minWriterVersion"] = 3, 7
            writer_features.add(feature)
            if reader:
                reader_features.add(feature)
            protocol["writerFeatures"] = sorted(writer_features)
            protocol["readerFeatures"] = sorted(reader_features)


def upgrade_protocol(
    table: Path,
    reader_features: Sequence[str] = (),
    writer_features: Sequence[str] = (),
    configuration: dict[str, str] | None = None,
    extra_actions: Sequence[dict[str, Any]] = (),
) -> None:
    """Rewrite the first commit as a table-features table (reader 3, writer 7) with these
    features and properties, as Spark or Databricks write them (for example column mapping
    as a reader feature, row tracking, liquid clustering with its domain metadata)."""
    commits = _commit_files(table)
    actions = _read_actions(commits[0])
    for feature in reader_features:
        _add_feature(actions, feature, reader=True)
    for feature in writer_features:
        _add_feature(actions, feature, reader=False)
    for action in actions:
        if "metaData" in action:
            action["metaData"].setdefault("configuration", {}).update(configuration or {})
    _write_actions(commits[0], [*actions, *extra_actions])


def delete_rows_with_vectors(table: Path, rows_of_file: dict[int, Sequence[int]]) -> int:
    """Attach inline deletion vectors to the add actions of the last commit, in a new
    commit (remove + add with the vector, as a DELETE by Spark would); `rows_of_file` maps
    the position of an add action in that commit to row indexes within its file.
    Enables the deletionVectors feature. Returns the rows deleted."""
    commits = _commit_files(table)
    first = _read_actions(commits[0])
    _add_feature(first, "deletionVectors")
    for action in first:
        if "metaData" in action:
            action["metaData"].setdefault("configuration", {})
            action["metaData"]["configuration"]["delta.enableDeletionVectors"] = "true"
    _write_actions(commits[0], first)
    adds = [a["add"] for a in _read_actions(commits[-1]) if "add" in a]
    new_actions: list[dict[str, Any]] = [
        {"commitInfo": {"timestamp": 0, "operation": "DELETE", "operationParameters": {}}}
    ]
    deleted = 0
    for position, rows in rows_of_file.items():
        add = dict(adds[position])
        raw = deletion_vector(rows)
        new_actions.append(
            {
                "remove": {
                    "path": add["path"],
                    "deletionTimestamp": 0,
                    "dataChange": True,
                    "extendedFileMetadata": True,
                    "partitionValues": add.get("partitionValues", {}),
                    "size": add["size"],
                }
            }
        )
        add["deletionVector"] = {
            "storageType": "i",
            "pathOrInlineDv": z85(raw),
            "sizeInBytes": len(raw),
            "cardinality": len(set(rows)),
        }
        add["dataChange"] = True
        new_actions.append({"add": add})
        deleted += len(set(rows))
    version = int(commits[-1].stem) + 1
    _write_actions(_log(table) / f"{version:020d}.json", new_actions)
    return deleted


def _state(table: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(protocol, metaData, live add actions) replayed from the JSON commits."""
    protocol: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    adds: dict[str, dict[str, Any]] = {}
    for commit in _commit_files(table):
        for action in _read_actions(commit):
            if "protocol" in action:
                protocol = action
            elif "metaData" in action:
                metadata = action
            elif "add" in action:
                adds[action["add"]["path"]] = action
            elif "remove" in action:
                adds.pop(action["remove"]["path"], None)
    return protocol, metadata, list(adds.values())


def v2_checkpoint_without_commits(table: Path) -> None:
    """Write a v2 (UUID-named, JSON) checkpoint of the latest version, enable the
    v2Checkpoint feature in it, and delete every commit but the latest one, so the table
    can only be read through the checkpoint."""
    commits = _commit_files(table)
    version = int(commits[-1].stem)
    protocol, metadata, adds = _state(table)
    _add_feature([protocol], "v2Checkpoint")
    metadata["metaData"].setdefault("configuration", {})["delta.checkpointPolicy"] = "v2"
    name = f"{version:020d}.checkpoint.{uuid.uuid4()}.json"
    actions = [{"checkpointMetadata": {"version": version}}, protocol, metadata, *adds]
    _write_actions(_log(table) / name, actions)
    size = (_log(table) / name).stat().st_size
    (_log(table) / "_last_checkpoint").write_text(
        json.dumps(
            {
                "version": version,
                "size": len(actions),
                "sizeInBytes": size,
                "numOfAddFiles": len(adds),
                "v2Checkpoint": {"path": name, "sizeInBytes": size, "modificationTime": 0},
            }
        )
    )
    for commit in commits[:-1]:
        commit.unlink()


def cleaned_up_log(table: Path) -> None:
    """Delete every commit a checkpoint (deltalake's, at the latest version) covers, as a
    log cleanup past the retention period would."""
    from deltalake import DeltaTable

    DeltaTable(str(table)).create_checkpoint()
    for commit in _commit_files(table)[:-1]:
        commit.unlink()


def table_from_parquet(
    table: Path, schema_fields: list[dict[str, Any]], files: Sequence[pa.Table], **write: Any
) -> None:
    """A Delta table whose data files are written by pyarrow (as another engine would,
    e.g. with `use_deprecated_int96_timestamps=True`), with a log written by hand."""
    _log(table).mkdir(parents=True)
    actions: list[dict[str, Any]] = [
        {"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
        {
            "metaData": {
                "id": str(uuid.uuid4()),
                "format": {"provider": "parquet", "options": {}},
                "schemaString": json.dumps({"type": "struct", "fields": schema_fields}),
                "partitionColumns": [],
                "configuration": {},
                "createdTime": 0,
            }
        },
    ]
    for data in files:
        name = f"part-{uuid.uuid4()}.parquet"
        pq.write_table(data, table / name, **write)
        actions.append(
            {
                "add": {
                    "path": name,
                    "partitionValues": {},
                    "size": (table / name).stat().st_size,
                    "modificationTime": 0,
                    "dataChange": True,
                }
            }
        )
    _write_actions(_log(table) / f"{0:020d}.json", actions)
