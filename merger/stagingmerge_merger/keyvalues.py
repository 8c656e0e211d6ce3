"""Key values as Python sees them: a date as its day number since 1970-01-01.

Delta's dates reach year 9999 and past it (a 32-bit day count); Python's `date` ends at
9999-12-31 and cannot even be built for the rest. Every key value that leaves Arrow for
Python (ranges, tuples, cut points, file statistics, the key index's prefixes) goes
through here, so all of them compare with one another, in the dates' order, whatever the
year; predicates.sql_literal writes them back as `CAST(n AS DATE)`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def as_number_array(values: Any) -> Any:
    """An Arrow array (or chunked array) with a date32 type as its int32 day numbers."""
    return values.cast(pa.int32()) if pa.types.is_date32(values.type) else values


def as_numbers(table: pa.Table) -> pa.Table:
    """`table` with every date32 column as its day numbers."""
    for i, field in enumerate(table.schema):
        if pa.types.is_date32(field.type):
            table = table.set_column(i, field.name, as_number_array(table.column(i)))
    return table
