"""The pure halves of the merge: option values (parsing.py), the schema model and its
checks (schema.py), the SQL predicates over keys (predicates.py)."""

import datetime as dt
import json

import pytest

from stagingmerge_merger import parsing, predicates, schema
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.predicates import KeyRange


def schema_json(*fields: tuple[str, object, bool]) -> str:
    return json.dumps(
        {
            "type": "struct",
            "fields": [
                {"name": n, "type": t, "nullable": nullable, "metadata": {}}
                for n, t, nullable in fields
            ],
        }
    )


MAIN = schema_json(
    ("source_url", "string", False),
    ("cert_index", "long", False),
    ("all_domains", {"type": "array", "elementType": "string", "containsNull": False}, False),
    ("note", "string", True),
)


class TestKeys:
    def test_parses_a_comma_list(self):
        assert parsing.parse_keys(" source_url , cert_index ") == ("source_url", "cert_index")

    @pytest.mark.parametrize("text", ["", " ", "a,,b", ","])
    def test_refuses_empty_names(self, text):
        with pytest.raises(InvalidInputError, match="one or more column names"):
            parsing.parse_keys(text)

    def test_refuses_a_repeated_name(self):
        with pytest.raises(InvalidInputError, match="names a more than once"):
            parsing.parse_keys("a,b,a")

    @pytest.mark.parametrize("value", [0, -1])
    def test_batch_rows_must_be_positive(self, value):
        with pytest.raises(InvalidInputError, match="positive"):
            parsing.parse_batch_rows(value)


class TestSchemas:
    def test_identical_schemas_pass_and_list_not_null_columns(self):
        cols = schema.columns_of(MAIN)
        required = schema.check_compatible(cols, cols, ["source_url", "cert_index"])
        assert required == ["source_url", "cert_index", "all_domains"]

    def test_column_order_and_metadata_do_not_matter(self):
        staging = json.loads(MAIN)
        staging["fields"].reverse()
        staging["fields"][0]["metadata"] = {"comment": "x"}
        schema.check_compatible(schema.columns_of(MAIN), schema.columns_of(staging), ["cert_index"])

    def test_nullable_staging_into_not_null_main_is_allowed(self):
        staging = schema_json(
            ("source_url", "string", True),
            ("cert_index", "long", True),
            (
                "all_domains",
                {"type": "array", "elementType": "string", "containsNull": False},
                True,
            ),
            ("note", "string", True),
        )
        schema.check_compatible(schema.columns_of(MAIN), schema.columns_of(staging), ["cert_index"])

    @pytest.mark.parametrize(
        ("main_nested", "staging_nested", "fits"),
        [
            (True, False, True),  # Spark CTAS main, Spark DataFrame staging
            (True, True, True),
            (False, False, True),
            (False, True, False),  # staging could hold a NULL main forbids there
        ],
    )
    def test_nested_nullability_may_only_widen_into_main(self, main_nested, staging_nested, fits):
        def table(nested: bool) -> dict:
            struct = {
                "type": "struct",
                "fields": [{"name": "cn", "type": "string", "nullable": nested, "metadata": {}}],
            }
            mapping = {
                "type": "map",
                "keyType": "string",
                "valueType": {"type": "array", "elementType": struct, "containsNull": nested},
                "valueContainsNull": nested,
            }
            return schema.columns_of(
                schema_json(("cert_index", "long", False), ("m", mapping, True))
            )

        if fits:
            schema.check_compatible(table(main_nested), table(staging_nested), ["cert_index"])
        else:
            with pytest.raises(InvalidInputError, match="column types differ: m"):
                schema.check_compatible(table(main_nested), table(staging_nested), ["cert_index"])

    @pytest.mark.parametrize(
        ("staging", "message"),
        [
            (
                schema_json(("source_url", "string", False), ("cert_index", "long", False)),
                "main has columns staging lacks: all_domains, note",
            ),
            (
                schema_json(
                    ("source_url", "string", False),
                    ("cert_index", "long", False),
                    (
                        "all_domains",
                        {"type": "array", "elementType": "string", "containsNull": False},
                        False,
                    ),
                    ("note", "string", True),
                    ("extra", "integer", True),
                ),
                "staging has columns main lacks: extra",
            ),
            (
                schema_json(
                    ("source_url", "string", False),
                    ("cert_index", "string", False),
                    (
                        "all_domains",
                        {"type": "array", "elementType": "string", "containsNull": False},
                        False,
                    ),
                    ("note", "string", True),
                ),
                r"column types differ: cert_index \(main long, staging string\)",
            ),
        ],
    )
    def test_mismatches_are_named(self, staging, message):
        with pytest.raises(InvalidInputError, match=message):
            schema.check_compatible(
                schema.columns_of(MAIN), schema.columns_of(staging), ["cert_index"]
            )

    def test_missing_key_column(self):
        with pytest.raises(InvalidInputError, match="staging has no key column nope"):
            schema.check_keys(schema.columns_of(MAIN), ["cert_index", "nope"], "staging")

    def test_key_column_of_unsupported_type(self):
        with pytest.raises(InvalidInputError, match="all_domains in main has type array"):
            schema.check_keys(schema.columns_of(MAIN), ["all_domains"], "main")

    def test_partitioning_of_a_new_main(self):
        with_date = schema.columns_of(
            schema_json(("seen_date", "string", False), ("k", "long", False))
        )
        assert schema.partition_for_new_main(with_date, ()) == ["seen_date"]
        assert schema.partition_for_new_main(schema.columns_of(MAIN), ()) == []
        assert schema.partition_for_new_main(with_date, ("k",)) == ["k"]
        with pytest.raises(InvalidInputError, match="--partition-by names x"):
            schema.partition_for_new_main(with_date, ("x",))


class TestPredicates:
    TYPES = {"source_url": "string", "cert_index": "long", "day": "date"}

    def test_literals_are_exact_and_escaped(self):
        assert predicates.sql_literal("it's", "string") == "'it''s'"
        assert predicates.sql_literal(-5, "long") == "-5"
        assert predicates.sql_literal(dt.date(2025, 1, 2), "date") == "CAST(20090 AS DATE)"
        with pytest.raises(TypeError):
            predicates.sql_literal("5", "long")
        with pytest.raises(TypeError):
            predicates.sql_literal(True, "integer")

    def test_identifiers_are_quoted(self):
        assert predicates.quote_ident('we"ird') == '"we""ird"'

    def test_range_predicate_has_a_term_per_prefix(self):
        pred = predicates.range_predicate(
            ["source_url", "cert_index"],
            self.TYPES,
            [KeyRange(("a",), 1, 5), KeyRange(("b",), 7, 7)],
        )
        assert pred == (
            '("cert_index" BETWEEN 1 AND 5 AND "source_url" = \'a\') OR '
            '("cert_index" = 7 AND "source_url" = \'b\')'
        )

    def test_single_key_range(self):
        assert (
            predicates.range_predicate(["cert_index"], self.TYPES, [KeyRange((), 3, 9)])
            == '"cert_index" BETWEEN 3 AND 9'
        )

    def test_many_prefixes_collapse_to_column_bounds(self):
        ranges = [
            KeyRange((f"u{i:03}",), i, i + 1) for i in range(predicates.MAX_PREDICATE_GROUPS + 1)
        ]
        pred = predicates.range_predicate(["source_url", "cert_index"], self.TYPES, ranges)
        assert pred == (
            "\"cert_index\" BETWEEN 0 AND 65 AND \"source_url\" BETWEEN 'u000' AND 'u064'"
        )

    def test_no_ranges_no_predicate(self):
        assert predicates.range_predicate(["cert_index"], self.TYPES, []) is None

    def test_keys_in_predicate_groups_by_prefix(self):
        pred = predicates.keys_in_predicate(
            ["source_url", "cert_index"], self.TYPES, [("a", 2), ("b", 1), ("a", 1)]
        )
        assert pred == (
            '("source_url" = \'a\' AND "cert_index" IN (1, 2)) OR '
            '("source_url" = \'b\' AND "cert_index" IN (1))'
        )


class TestImpliedFeatures:
    @pytest.mark.parametrize(
        ("version", "named", "fields", "missing"),
        [
            (7, ["timestampNtz"], [("a", "long", False)], ["invariants"]),
            (7, ["timestampNtz", "invariants"], [("a", "long", False)], []),
            (7, ["timestampNtz"], [("a", "long", True)], []),
            (2, None, [("a", "long", False)], []),  # legacy protocols imply invariants
            (
                7,
                [],
                [("s", {"type": "struct", "fields": [{"name": "x", "type": "long",
                                                      "nullable": False}]}, True)],
                ["invariants"],
            ),
        ],
    )  # fmt: skip
    def test_not_null_needs_invariants_listed(self, version, named, fields, missing):
        assert (
            schema.undeclared_features(version, named, schema.columns_of(schema_json(*fields)))
            == missing
        )
