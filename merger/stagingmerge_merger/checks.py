"""Everything that could refuse a staging row, checked over all of staging before any write.

Pure: `rules_for` turns main's schema and configuration into SQL predicates that are
true for a violating row, `audit_sql` counts them all in one aggregate query (run by
delta-rs's engine, so the check is pushed down and reads only the columns it needs),
and `refusal` words the result. Messages name the rule and how many rows break it,
never row contents: staging rows stay out of logs.

The semantics are delta-rs's own, because delta-rs is what writes main: a CHECK
constraint (or an invariant) fails a row when the expression is not TRUE (NULL
fails too); a generated column fails a row whose value is distinct from the
expression; NOT NULL fails a NULL.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .predicates import quote_ident
from .schema import ELEMENTS, FIELD, Column, FieldPath, NotNullBelow, nested_not_null

CONSTRAINT_PREFIX = "delta.constraints."


@dataclass(frozen=True)
class Rule:
    label: str  # what the message calls it: "NULL in key column source_url", ...
    violation: str  # SQL, true for a row that breaks the rule
    # SQL of an array whose NULL elements break the rule instead (then `violation` is
    # unused): counted by a query of its own (element_audit_sql), in values, not rows
    elements: str | None = None


def rules_for(
    keys: Sequence[str],
    main_columns: Mapping[str, Column] | None,
    main_configuration: Mapping[str, str | None] | None,
    decimal_partitions: Sequence[str] = (),
    never_null: Collection[str] = (),
    staging_columns: Mapping[str, Column] | None = None,
) -> list[Rule]:
    """The rules a staging row must pass: keys never NULL, then (when main exists)
    main's NOT NULL columns, CHECK constraints, invariants and generated columns, and
    no negative value in a decimal partition column of main (delta-rs 1.x writes
    those partition values wrongly: -3.25 becomes "-3.-25", which nothing can read).

    `never_null`: staging's columns that cannot hold NULL (declared NOT NULL in staging's
    schema, which every Delta writer enforces, or NULL-free by every file's statistics):
    their NULL checks are left out, so the audit reads only what can break a rule.
    `staging_columns`: staging's schema, for the struct fields main declares NOT NULL
    and staging allows NULL in (`schema.nested_not_null`)."""
    rules = [
        Rule(f"NULL in key column {k}", f"{quote_ident(k)} IS NULL")
        for k in keys
        if k not in never_null
    ]
    rules += [
        Rule(
            f"negative value in decimal partition column {c} (deltalake writes those wrongly)",
            f"{quote_ident(c)} < 0",
        )
        for c in decimal_partitions
    ]
    for column in (main_columns or {}).values():
        name = quote_ident(column.name)
        if not column.nullable and column.name not in keys and column.name not in never_null:
            rules.append(Rule(f"NULL in NOT NULL column {column.name}", f"{name} IS NULL"))
        staged = (staging_columns or {}).get(column.name)
        below = nested_not_null(column.type, staged.type) if staged else None
        rules += [_null_below_rule(column.name, place) for place in below or []]
        if column.invariant:
            rules.append(
                Rule(
                    f"invariant on {column.name} ({column.invariant})",
                    f"({column.invariant}) IS NOT TRUE",
                )
            )
        if column.generation:
            rules.append(
                Rule(
                    f"generated column {column.name} ({column.generation})",
                    f"{name} IS DISTINCT FROM ({column.generation})",
                )
            )
    for key, expression in sorted((main_configuration or {}).items()):
        if key.startswith(CONSTRAINT_PREFIX) and expression:
            name = key[len(CONSTRAINT_PREFIX) :]
            rules.append(
                Rule(f"CHECK constraint {name} ({expression})", f"({expression}) IS NOT TRUE")
            )
    return rules


def _null_below_rule(column: str, place: NotNullBelow) -> Rule:
    named = ".".join((column, *place.path))
    if place.kind == FIELD:
        return Rule(f"NULL in NOT NULL field {named}", _null_below_non_null(column, place.path))
    what = _path_sql(column, place.path)
    if place.kind == ELEMENTS:
        return Rule(f"NULL element in {named}, whose elements are NOT NULL", "FALSE", what)
    return Rule(f"NULL value in {named}, whose values are NOT NULL", "FALSE", f"map_values({what})")


def _path_sql(column: str, path: FieldPath) -> str:
    return _steps(column, path)[-1]


def _steps(column: str, path: FieldPath) -> list[str]:
    """SQL of the column, then of each struct field on the way down `path`."""
    steps = [quote_ident(column)]
    for name in path:
        steps.append(f"{steps[-1]}['{name.replace(chr(39), chr(39) * 2)}']")
    return steps


def _null_below_non_null(column: str, path: FieldPath) -> str:
    """SQL true where the struct field at `path` is NULL and every struct above it is not
    (a NULL struct holds no field to be NULL)."""
    steps = _steps(column, path)
    return " AND ".join([*(f"{s} IS NOT NULL" for s in steps[:-1]), f"{steps[-1]} IS NULL"])


ROWS = "rows"


def audit_sql(table: str, rules: Sequence[Rule]) -> str:
    """One aggregate query: the row count, and per rule the rows that break it."""
    counts = [
        f"sum(CASE WHEN {rule.violation} THEN 1 ELSE 0 END) AS r{i}" for i, rule in enumerate(rules)
    ]
    # The only text from outside is main's own constraint and generation expressions,
    # which delta-rs evaluates as SQL on every write anyway.
    return f"SELECT {', '.join([f'count(*) AS {ROWS}', *counts])} FROM {table}"  # noqa: S608


def element_audit_sql(table: str, rules: Sequence[Rule]) -> list[tuple[str, str]]:
    """(count name, query) for the rules on arrays' elements: the NULL elements, through
    unnest (delta-rs's engine cannot compare a NULL with nested elements in place)."""
    unnested = "SELECT count(*) AS n FROM (SELECT unnest({}) AS v FROM {}) WHERE v IS NULL"
    return [
        (f"r{i}", unnested.format(rule.elements, table))  # column paths we quote
        for i, rule in enumerate(rules)
        if rule.elements is not None
    ]


def violations(rules: Sequence[Rule], counts: Mapping[str, int | None]) -> list[tuple[Rule, int]]:
    """(rule, rows breaking it) for every rule some row breaks, from audit_sql's answer."""
    found = []
    for i, rule in enumerate(rules):
        count = int(counts.get(f"r{i}") or 0)
        if count:
            found.append((rule, count))
    return found


def refusal(found: Sequence[tuple[Rule, int]]) -> str:
    listed = "; ".join(
        f"{rule.label}: {count} {'values' if rule.elements else 'rows'}" for rule, count in found
    )
    return f"staging has rows main would refuse ({listed}); fix or drop those rows in staging"
