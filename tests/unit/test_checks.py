import json

from stagingmerge_merger import checks
from stagingmerge_merger.schema import Column


def test_rules_cover_keys_not_null_constraints_invariants_and_generated_columns():
    main = {
        "k": Column("k", '"long"', False),
        "v": Column("v", '"long"', False, generation="k * 2"),
        "w": Column("w", '"string"', True, invariant="w <> ''"),
    }
    rules = checks.rules_for(
        ["k"], main, {"delta.constraints.positive": "v > 0", "delta.appendOnly": "true"}
    )
    labels = [r.label for r in rules]
    assert labels == [
        "NULL in key column k",
        "NULL in NOT NULL column v",
        "generated column v (k * 2)",
        "invariant on w (w <> '')",
        "CHECK constraint positive (v > 0)",
    ]
    assert rules[-1].violation == "(v > 0) IS NOT TRUE"  # NULL fails, as in delta-rs
    assert rules[2].violation == '"v" IS DISTINCT FROM (k * 2)'


def test_columns_that_cannot_be_null_are_not_checked():
    main = {"k": Column("k", '"long"', False), "v": Column("v", '"long"', False)}
    rules = checks.rules_for(["k"], main, {}, never_null={"k", "v"})
    assert rules == []


def test_audit_sql_and_the_refusal_message():
    rules = checks.rules_for(["k"], None, None, decimal_partitions=["d"])
    sql = checks.audit_sql("t", rules)
    assert sql.startswith("SELECT count(*) AS rows, sum(CASE WHEN") and sql.endswith("FROM t")
    found = checks.violations(rules, {"rows": 10, "r0": 0, "r1": 3})
    assert [(r.label, n) for r, n in found] == [
        ("negative value in decimal partition column d (deltalake writes those wrongly)", 3)
    ]
    assert "d (deltalake writes those wrongly): 3 rows" in checks.refusal(found)


def test_struct_fields_main_requires_are_checked_only_where_staging_allows_null():
    def struct(nullable: bool) -> str:
        inner = {
            "type": "struct",
            "fields": [{"name": "it's", "type": "long", "nullable": nullable}],
        }
        outer = [{"name": "cn", "type": "string", "nullable": nullable}]
        outer.append({"name": "deep", "type": inner, "nullable": True})
        return json.dumps({"type": "struct", "fields": outer}, sort_keys=True)

    main = {"k": Column("k", '"long"', False), "s": Column("s", struct(False), True)}
    staging = {"k": Column("k", '"long"', False), "s": Column("s", struct(True), True)}
    rules = checks.rules_for(["k"], main, {}, never_null={"k"}, staging_columns=staging)
    assert [(r.label, r.violation) for r in rules] == [
        ("NULL in NOT NULL field s.cn", """"s" IS NOT NULL AND "s"['cn'] IS NULL"""),
        (
            "NULL in NOT NULL field s.deep.it's",
            """"s" IS NOT NULL AND "s"['deep'] IS NOT NULL AND "s"['deep']['it''s'] IS NULL""",
        ),
    ]
    same = checks.rules_for(["k"], main, {}, never_null={"k"}, staging_columns=main)
    assert same == []


def test_elements_and_values_main_requires_are_counted_by_queries_of_their_own():
    def column(nullable: bool) -> str:
        array = {"type": "array", "elementType": "string", "containsNull": nullable}
        mapping = {"type": "map", "keyType": "string", "valueType": "long",
                   "valueContainsNull": nullable}  # fmt: skip
        fields = [{"name": "it's", "type": array, "nullable": True},
                  {"name": "m", "type": mapping, "nullable": True}]  # fmt: skip
        return json.dumps({"type": "struct", "fields": fields}, sort_keys=True)

    main = {"k": Column("k", '"long"', False), "s": Column("s", column(False), True)}
    staging = {"k": Column("k", '"long"', False), "s": Column("s", column(True), True)}
    rules = checks.rules_for(["k"], main, {}, never_null={"k"}, staging_columns=staging)
    assert [(r.label, r.elements) for r in rules] == [
        ("NULL element in s.it's, whose elements are NOT NULL", """"s"['it''s']"""),
        ("NULL value in s.m, whose values are NOT NULL", """map_values("s"['m'])"""),
    ]
    query = "SELECT count(*) AS n FROM (SELECT unnest({}) AS v FROM t) WHERE v IS NULL"
    assert checks.element_audit_sql("t", rules) == [
        ("r0", query.format(""""s"['it''s']""")),
        ("r1", query.format("""map_values("s"['m'])""")),
    ]
    assert "s.m, whose values are NOT NULL: 2 values" in checks.refusal([(rules[1], 2)])
