"""The schema model and the checks on it: key columns, compatibility of staging with
main, partitioning, writer features (pure: Delta schema JSON in, InvalidInputError out).

Nothing here reads or writes storage.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError

DEFAULT_PARTITION_COLUMN = "seen_date"

# Delta primitive types a key column may have: each renders as an exact SQL literal.
KEY_TYPES = frozenset({"string", "long", "integer", "short", "byte", "date"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # canonical JSON of the Delta type: "long", or {"type": "array", ...}
    nullable: bool
    generation: str | None = None  # delta.generationExpression: a generated column
    invariant: str | None = None  # delta.invariants (the legacy per-column CHECK)

    @property
    def type_name(self) -> str:
        parsed = json.loads(self.type)
        return parsed if isinstance(parsed, str) else str(parsed.get("type", "struct"))


def columns_of(schema_json: str | Mapping[str, Any]) -> dict[str, Column]:
    """Columns of a Delta schema (as `DeltaTable.schema().to_json()` gives it), in order."""
    schema = json.loads(schema_json) if isinstance(schema_json, str) else schema_json
    return {
        f["name"]: Column(
            f["name"],
            _canonical_type(f["type"]),
            bool(f.get("nullable", True)),
            generation=(f.get("metadata") or {}).get("delta.generationExpression") or None,
            invariant=_invariant(f.get("metadata") or {}),
        )
        for f in schema["fields"]
    }


def _invariant(metadata: Mapping[str, Any]) -> str | None:
    raw = metadata.get("delta.invariants")
    if not raw:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
        expression = value["expression"]["expression"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError(f"unreadable delta.invariants on a column: {raw!r}") from None
    return str(expression)


def _canonical_type(value: Any) -> str:
    # Field metadata (comments, column-mapping ids) is not part of type identity.
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k != "metadata"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(value), sort_keys=True)


def check_keys(columns: Mapping[str, Column], keys: Sequence[str], table: str) -> None:
    """Every key column exists and has a type a key can have."""
    missing = [k for k in keys if k not in columns]
    if missing:
        raise InvalidInputError(
            f"{table} has no key column {', '.join(missing)}"
            f" (its columns: {', '.join(columns) or 'none'}); set --keys to columns it has"
        )
    for key in keys:
        kind = columns[key].type_name
        if kind not in KEY_TYPES:
            raise InvalidInputError(
                f"key column {key} in {table} has type {kind}; key columns must be one of "
                f"{', '.join(sorted(KEY_TYPES))}"
            )


# Types a --first-by column may have: each sorts the same way in every engine.
ORDERABLE_TYPES = KEY_TYPES | {"double", "float", "boolean", "timestamp", "timestamp_ntz"}


def check_first_by(
    columns: Mapping[str, Column], first_by: Sequence[str], keys: Sequence[str]
) -> None:
    """--first-by columns exist, are not keys, and have a type that sorts."""
    missing = [c for c in first_by if c not in columns]
    if missing:
        raise InvalidInputError(f"--first-by names {', '.join(missing)}, which staging lacks")
    keyed = [c for c in first_by if c in keys]
    if keyed:
        raise InvalidInputError(
            f"--first-by names key columns ({', '.join(keyed)}): copies of a key all share them"
        )
    unordered = [
        f"{c} ({columns[c].type_name})"
        for c in first_by
        if columns[c].type_name not in ORDERABLE_TYPES
        and not columns[c].type_name.startswith("decimal")
    ]
    if unordered:
        raise InvalidInputError(
            f"--first-by columns must be numbers, strings, dates or timestamps: "
            f"{', '.join(unordered)}"
        )


# Nested nullability. A nested field, array element or map value that staging declares
# NOT NULL fits a main that allows NULL there (Spark's CTAS makes every nested field
# nullable; its DataFrame writes keep them NOT NULL). The other way round, a struct field,
# an array's elements or a map's values that main declares NOT NULL fit when staging
# holds no NULL there (the audit counts them: `checks.rules_for`), as long as only
# structs lead there; deeper (inside an array's elements or a map's values) they do not.
_NESTED_NULLABILITY = frozenset({"nullable", "containsNull", "valueContainsNull"})

FieldPath = tuple[str, ...]  # a column's nested struct field: ("issuer", "cn")
FIELD, ELEMENTS, VALUES = "field", "elements", "values"


@dataclass(frozen=True)
class NotNullBelow:
    """Where below a column main forbids a NULL that staging allows: the struct field at
    `path` (FIELD), or the elements of the array (ELEMENTS) or the values of the map
    (VALUES) at `path` (() for the column itself)."""

    path: FieldPath
    kind: str


def nested_not_null(main_type: str, staging_type: str) -> list[NotNullBelow] | None:
    """None when staging's values of this Delta type (canonical JSON) cannot be written as
    main's; else the places below the column that main declares NOT NULL and staging
    allows NULL in, for the audit to prove NULL-free."""
    found: list[NotNullBelow] = []

    def walk(m: Any, s: Any, path: FieldPath, through_structs: bool) -> bool:
        if not (isinstance(m, dict) and isinstance(s, dict)):
            return bool(m == s)
        if m.keys() != s.keys() or m.get("type") != s.get("type"):
            return False
        if m.get("type") == "struct":
            if len(m["fields"]) != len(s["fields"]):
                return False
            for mf, sf in zip(m["fields"], s["fields"], strict=True):
                if mf["name"] != sf["name"]:
                    return False
                here = (*path, mf["name"])
                if not mf["nullable"] and sf["nullable"]:
                    if not through_structs:
                        return False
                    found.append(NotNullBelow(here, FIELD))
                if not walk(mf["type"], sf["type"], here, through_structs):
                    return False
            return True
        for k in m:
            if k in _NESTED_NULLABILITY:
                if not m[k] and s[k]:
                    if not through_structs:
                        return False
                    found.append(NotNullBelow(path, ELEMENTS if k == "containsNull" else VALUES))
            elif k != "type" and not walk(m[k], s[k], path, False):
                return False
        return True

    if main_type == staging_type:
        return []
    return found if walk(json.loads(main_type), json.loads(staging_type), (), True) else None


def check_compatible(
    main: Mapping[str, Column], staging: Mapping[str, Column], keys: Sequence[str]
) -> list[str]:
    """Refuse a staging schema that main can't take as it is; return must-be-non-null columns.

    Names and types must match (column order may differ; nested nullability may differ
    as `nested_not_null` allows). A column that
    main declares NOT NULL may be nullable in staging (pyarrow writes nullable by
    default), as long as staging holds no NULL in it: the returned list is the
    key columns plus those, for the caller to check before anything is written.
    """
    extra = [c for c in staging if c not in main]
    missing = [c for c in main if c not in staging]
    changed = [
        f"{c} (main {main[c].type_name}, staging {staging[c].type_name})"
        for c in staging
        if c in main and nested_not_null(main[c].type, staging[c].type) is None
    ]
    problems = []
    if extra:
        problems.append(f"staging has columns main lacks: {', '.join(extra)}")
    if missing:
        problems.append(f"main has columns staging lacks: {', '.join(missing)}")
    if changed:
        problems.append(f"column types differ: {', '.join(changed)}")
    if problems:
        raise InvalidInputError("schema mismatch: " + "; ".join(problems))
    check_keys(main, keys, "main")
    required = list(keys)
    required += [c for c, col in main.items() if not col.nullable and c not in keys]
    return required


# Delta partitions by primitive columns only: a struct, array, map or variant cannot be
# written as a partition value.
_UNPARTITIONABLE = frozenset({"struct", "array", "map", "variant"})


def partition_for_new_main(columns: Mapping[str, Column], requested: Sequence[str]) -> list[str]:
    """Partition columns for a main table created from staging's schema."""
    if requested:
        unknown = [c for c in requested if c not in columns]
        if unknown:
            raise InvalidInputError(
                f"--partition-by names {', '.join(unknown)}, which staging does not have"
            )
        check_partitionable(columns, requested, "--partition-by")
        return list(requested)
    return [DEFAULT_PARTITION_COLUMN] if DEFAULT_PARTITION_COLUMN in columns else []


def check_partitionable(
    columns: Mapping[str, Column], partition_by: Sequence[str], what: str
) -> None:
    """Refuse partition columns whose type Delta cannot hold as a partition value, and
    binary ones: delta-rs reads a binary partition value back as its escaped text."""
    bad = [
        f"{c} ({columns[c].type_name})"
        for c in partition_by
        if c in columns and columns[c].type_name in _UNPARTITIONABLE
    ]
    if bad:
        raise InvalidInputError(
            f"{what} names columns Delta cannot partition by: {', '.join(bad)};"
            " partition columns must have a primitive type"
        )
    check_readable_partitions(columns, partition_by, what)


# The Delta writer features delta-rs (deltalake 1.x) commits correctly, as the merge
# writes main: each is proven by tests/spark (a Spark-written main with the feature,
# merged, read back by Spark). Any other writer feature is refused before anything is
# written: delta-rs would refuse the commit after the data files were written (rowTracking,
# domainMetadata, clustering, inCommitTimestamp), or write rows Spark reads otherwise
# (identityColumns: no values generated, no high-water mark).
WRITABLE_FEATURES = frozenset({
    "appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
    "columnMapping", "deletionVectors", "timestampNtz", "v2Checkpoint", "variantType",
})  # fmt: skip
# what a legacy writer version (before named table features, version 7) implies
_IMPLIED_WRITER_FEATURES = {
    2: ("appendOnly", "invariants"),
    3: ("checkConstraints",),
    4: ("changeDataFeed", "generatedColumns"),
    5: ("columnMapping",),
    6: ("identityColumns",),
}


def writer_features(min_writer_version: int, named: Sequence[str] | None) -> set[str]:
    """The writer features a table's protocol requires of whoever writes to it."""
    if min_writer_version >= 7:
        return set(named or ())
    return {
        feature
        for version, features in _IMPLIED_WRITER_FEATURES.items()
        if version <= min_writer_version
        for feature in features
    }


def undeclared_features(
    min_writer_version: int, named: Sequence[str] | None, columns: Mapping[str, Column]
) -> list[str]:
    """Writer features a table-features protocol (writer version 7) must list for what
    its schema already holds, and does not: `invariants` for a NOT NULL column, top level
    or nested. delta-rs 1.x creates such tables (a new main with timestamp_ntz or variant
    columns) and Spark refuses to read them (DELTA_FEATURES_PROTOCOL_METADATA_MISMATCH)."""
    if min_writer_version < 7 or "invariants" in (named or ()):
        return []

    def nested(node: Any) -> bool:  # a struct field declared NOT NULL, at any depth
        if isinstance(node, dict):
            return node.get("nullable") is False or any(nested(v) for v in node.values())
        return isinstance(node, list) and any(nested(v) for v in node)

    not_null = any(not c.nullable or nested(json.loads(c.type)) for c in columns.values())
    return ["invariants"] if not_null else []


def check_writable(features: Collection[str], what: str) -> None:
    """Refuse a main whose protocol needs writer features this merge cannot honour."""
    missing = sorted(set(features) - WRITABLE_FEATURES)
    if missing:
        raise InvalidInputError(
            f"{what} needs Delta writer features this merge cannot honour:"
            f" {', '.join(missing)}; nothing was written. Merge with an engine that"
            " implements them (Spark's MERGE INTO), or drop them from main"
            " (ALTER TABLE ... DROP FEATURE)"
        )


def check_readable_partitions(
    columns: Mapping[str, Column], partition_by: Sequence[str], what: str
) -> None:
    binary = [c for c in partition_by if c in columns and columns[c].type_name == "binary"]
    if binary:
        raise InvalidInputError(
            f"{what} has binary partition columns ({', '.join(binary)}), whose values"
            f" deltalake reads back as escaped text, not bytes; refusing rather than"
            " merging wrong values"
        )


def decimal_partitions(columns: Mapping[str, Column], partition_by: Sequence[str]) -> list[str]:
    """Decimal partition columns of a main delta-rs will write to."""
    return [c for c in partition_by if c in columns and columns[c].type_name.startswith("decimal")]
