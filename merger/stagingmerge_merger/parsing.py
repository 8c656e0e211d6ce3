"""The values of the command-line options both CLIs (and the operator's spec) share:
key columns, column lists, byte sizes, row counts. Pure; a bad value is InvalidInputError.
"""

from __future__ import annotations

import math

from .errors import InvalidInputError


def parse_keys(text: str) -> tuple[str, ...]:
    """`a,b` -> ("a", "b"); refuse an empty list and repeated names."""
    keys = tuple(k.strip() for k in text.split(","))
    if not text.strip() or any(not k for k in keys):
        raise InvalidInputError(
            f"--keys must list one or more column names separated by commas, got {text!r}"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidInputError(f"--keys names {', '.join(repeated)} more than once")
    return keys


def parse_columns(text: str, option: str) -> tuple[str, ...]:
    """`a, b` -> ("a", "b"); empty text is no columns; a name twice is refused."""
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InvalidInputError(f"{option} names {', '.join(repeated)} more than once")
    return columns


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


MAX_SIZE = 2**50  # 1 PiB: anything larger is a typo, not a machine


def parse_size(text: str, option: str) -> int:
    """`512M`, `2G`, `1.5G`, `100000` (bytes): a memory size."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)] if unit else raw)
    except ValueError:
        raise InvalidInputError(
            f"{option} must be a size such as 512M or 2G, got {text!r}"
        ) from None
    if not math.isfinite(value) or not 0 < value * _SIZE_UNITS[unit] <= MAX_SIZE:
        raise InvalidInputError(
            f"{option} must be a positive size up to 1P, got {text.strip()[:40]!r}"
        )
    return max(1, int(value * _SIZE_UNITS[unit]))


def parse_batch_rows(value: int, option: str = "--batch-rows") -> int:
    if value <= 0:
        raise InvalidInputError(f"{option} must be a positive number of rows, got {value}")
    return value
