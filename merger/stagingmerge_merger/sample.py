"""Deterministic Certificate Transparency-like rows, for the demo, the tests and the benchmark.

The rows have the 20 columns of the CT stream (see the README) and realistic sizes:
`as_der` is ~1.6 KB of random base64, a row is ~2 KB. Everything is vectorised
with pyarrow so that a million rows take seconds, and a given `seed` always gives
the same bytes.

Command line (used by `make demo`)::

    python -m stagingmerge_merger.sample demo DIR
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

LOGS: tuple[tuple[str, str], ...] = (
    ("Google 'Argon2025h2' log", "https://ct.googleapis.com/logs/us1/argon2025h2/"),
    ("Google 'Xenon2025h2' log", "https://ct.googleapis.com/logs/eu1/xenon2025h2/"),
    ("Cloudflare 'Nimbus2025'", "https://ct.cloudflare.com/logs/nimbus2025/"),
    ("DigiCert Wyvern2025h2 Log", "https://wyvern.ct.digicert.com/2025h2/"),
    ("Sectigo 'Elephant2025h2'", "https://elephant2025h2.ct.sectigo.com/"),
    ("Let's Encrypt 'Oak2025h2'", "https://oak.ct.letsencrypt.org/2025h2/"),
    ("TrustAsia Log2025b", "https://ct2025-b.trustasia.com/log2025b/"),
    ("Sectigo 'Tiger2025h2'", "https://tiger2025h2.ct.sectigo.com/"),
)

AS_DER_BYTES = 1200  # 1,600 base64 characters, as the issue asks
_ISSUERS = (
    "/C=US/O=Let's Encrypt/CN=R10",
    "/C=US/O=Let's Encrypt/CN=E5",
    "/C=US/O=Google Trust Services/CN=WR1",
    "/C=GB/ST=Greater Manchester/L=Salford/O=Sectigo Limited/CN=Sectigo RSA DV CA",
)


def ct_schema() -> pa.Schema:
    """The Arrow schema of a CT entry row (all columns non-nullable, as upstream)."""
    return pa.schema(
        [
            pa.field("cert_index", pa.int64(), nullable=False),
            pa.field("update_type", pa.string(), nullable=False),
            pa.field("seen", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("seen_date", pa.string(), nullable=False),
            pa.field("source_name", pa.string(), nullable=False),
            pa.field("source_url", pa.string(), nullable=False),
            pa.field("cert_link", pa.string(), nullable=False),
            pa.field("serial_number", pa.string(), nullable=False),
            pa.field("fingerprint", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("sha1", pa.string(), nullable=False),
            pa.field("not_before", pa.int64(), nullable=False),
            pa.field("not_after", pa.int64(), nullable=False),
            pa.field("is_ca", pa.bool_(), nullable=False),
            pa.field("signature_algorithm", pa.string(), nullable=False),
            pa.field("subject_aggregated", pa.string(), nullable=False),
            pa.field("issuer_aggregated", pa.string(), nullable=False),
            pa.field(
                "all_domains",
                pa.list_(pa.field("item", pa.string(), nullable=False)),
                nullable=False,
            ),
            pa.field("as_der", pa.string(), nullable=False),
            pa.field(
                "chain", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False
            ),
        ]
    )


def _arange(stop: int, step: int = 1, type_: pa.DataType | None = None) -> pa.Array:
    return pa.array(range(0, stop, step), type_ or pa.int64())


def _fixed_width_strings(text: str, width: int, count: int) -> pa.Array:
    """Cut `text` into `count` strings of `width` characters without a Python loop."""
    offsets = _arange(width * count + 1, width, pa.int32())
    return pa.StringArray.from_buffers(count, offsets.buffers()[1], pa.py_buffer(text.encode()))


def _random_bytes(rng: random.Random, width: int, count: int) -> list[bytes]:
    """`count * width` random bytes in chunks of whole rows (randbytes caps one call)."""
    rows_per_chunk = max(1, (1 << 24) // width)
    return [
        rng.randbytes(width * min(rows_per_chunk, count - start))
        for start in range(0, count, rows_per_chunk)
    ]


def _hex(rng: random.Random, nbytes: int, count: int) -> pa.Array:
    text = "".join(chunk.hex() for chunk in _random_bytes(rng, nbytes, count))
    return _fixed_width_strings(text, nbytes * 2, count)


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def ct_table(
    log_ids: Sequence[int] | pa.Array,
    cert_indexes: Sequence[int] | pa.Array,
    *,
    seed: int,
    seen_start: datetime = datetime(2025, 11, 1, tzinfo=UTC),
    seen_step: timedelta = timedelta(milliseconds=5),
) -> pa.Table:
    """CT rows for the given (log, index) pairs, in the given order.

    `log_ids` index `LOGS`. Row *i* is seen at `seen_start + i * seen_step`, so
    `seen_date` (the usual partition column) follows arrival order.
    """
    logs = pa.array(log_ids, pa.int32())
    indexes = pa.array(cert_indexes, pa.int64())
    count = len(indexes)
    if len(logs) != count:
        raise ValueError("log_ids and cert_indexes differ in length")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    source_url = pa.array([url for _, url in LOGS]).take(logs)
    source_name = pa.array([name for name, _ in LOGS]).take(logs)
    index_text = indexes.cast(pa.string())
    start_us = int(seen_start.timestamp() * 1_000_000)
    step_us = int(seen_step / timedelta(microseconds=1))
    seen = pa.array(range(start_us, start_us + step_us * count, step_us)[:count], pa.int64())
    seen = seen.cast(pa.timestamp("us", tz="UTC"))
    sha1 = _hex(rng, 20, count)
    not_before = pa.array(
        (1_760_000_000 + rng.randrange(86_400 * 90) for _ in range(count)), pa.int64()
    )
    host = _join("host", pc.multiply(indexes, 7).cast(pa.string()), ".example.")
    host = _join(host, pa.array(["com", "net", "org", "io"]).take(pc.bit_wise_and(indexes, 3)))
    issuer = pa.array(_ISSUERS).take(pc.bit_wise_and(pc.cast(logs, pa.int64()), 3))
    # AS_DER_BYTES is a multiple of 3, so the base64 of the whole buffer cuts into rows.
    der = "".join(
        base64.b64encode(chunk).decode() for chunk in _random_bytes(rng, AS_DER_BYTES, count)
    )
    columns: dict[str, pa.Array] = {
        "cert_index": indexes,
        "update_type": pa.array(["X509LogEntry", "PrecertLogEntry"]).take(
            pc.bit_wise_and(indexes, 1)
        ),
        "seen": seen,
        "seen_date": pc.strftime(seen, format="%Y-%m-%d"),
        "source_name": source_name,
        "source_url": source_url,
        "cert_link": _join(source_url, "ct/v1/get-entries?start=", index_text, "&end=", index_text),
        "serial_number": _hex(rng, 16, count),
        "fingerprint": pc.utf8_upper(sha1),
        "sha256": _hex(rng, 32, count),
        "sha1": sha1,
        "not_before": not_before,
        "not_after": pc.add(not_before, 86_400 * 90),
        "is_ca": pc.equal(pc.bit_wise_and(indexes, 63), 0),
        "signature_algorithm": pa.array(["sha256, rsa", "ecdsa, sha384"]).take(
            pc.bit_wise_and(pc.cast(logs, pa.int64()), 1)
        ),
        "subject_aggregated": _join("/CN=", host),
        "issuer_aggregated": issuer,
        "all_domains": pa.ListArray.from_arrays(
            _arange(2 * count + 1, 2, pa.int32()),
            # values interleaved as host_0, www.host_0, host_1, ...
            pa.concat_arrays([host, _join("www.", host)]).take(
                pc.add(
                    pc.shift_right(_arange(2 * count), 1),
                    pc.multiply(pc.bit_wise_and(_arange(2 * count), 1), count),
                )
            ),
        ),
        "as_der": _fixed_width_strings(der, AS_DER_BYTES * 4 // 3, count),
        "chain": pa.ListArray.from_arrays(_arange(count + 1, 1, pa.int32()), issuer),
    }
    return pa.Table.from_arrays(list(columns.values()), schema=ct_schema())


def interleaved_keys(logs: int, per_log: int, first_index: int = 0) -> tuple[list[int], list[int]]:
    """Keys in arrival order as a live writer sees them: every log, round robin.

    Returns parallel lists (log id, cert_index): log *l* contributes indexes
    `first_index .. first_index + per_log - 1`, interleaved with the other logs.
    """
    log_ids = [log for _ in range(per_log) for log in range(logs)]
    indexes = [first_index + i for i in range(per_log) for _ in range(logs)]
    return log_ids, indexes


def write_demo(folder: Path) -> tuple[Path, Path]:
    """Write a small main and a staging table that overlaps it and repeats itself.

    main: 3 logs x 2,000 entries. staging: 3 logs x 1,000 entries of which the
    first 500 of each log are already in main, plus 150 rows fetched twice.
    """
    from deltalake import write_deltalake

    main_uri, staging_uri = folder / "main", folder / "staging"
    if main_uri.exists() or staging_uri.exists():
        raise SystemExit(f"{folder} already holds a demo; remove it first")
    logs, indexes = interleaved_keys(3, 2_000)
    write_deltalake(main_uri, ct_table(logs, indexes, seed=1), partition_by=["seen_date"])
    s_logs, s_indexes = interleaved_keys(3, 1_000, first_index=1_500)
    staging = ct_table(
        s_logs + s_logs[:150],
        s_indexes + s_indexes[:150],
        seed=2,
        seen_start=datetime(2025, 11, 3, tzinfo=UTC),
    )
    write_deltalake(staging_uri, staging)
    return main_uri, staging_uri


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stagingmerge_merger.sample")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write a demo main + staging table pair under DIR")
    demo.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    main_uri, staging_uri = write_demo(args.dir)
    sys.stdout.write(f"main={main_uri} staging={staging_uri}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
