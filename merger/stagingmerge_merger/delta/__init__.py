"""The one way into a Delta table: every read of a Delta log or data file goes through
this package, and every write.

- `table.py`: delta-rs (deltalake), wherever it can do the job: opening both tables,
  scanning and querying them (column mapping, deletion vectors, checkpoints, partition
  values, every reader feature delta-rs supports), appending to main and rewriting its
  files. The only module that imports deltalake.
- `log.py`: our own reading of `_delta_log/`, only for what delta-rs cannot tell: a log
  no Delta writer leaves (a torn or empty commit, a gap, a dangling `_last_checkpoint`),
  which delta-rs takes as valid or as passing trouble; which commit versions exist; which
  files one commit added.
- `files.py`: our own reading of data files, only where delta-rs has no call for it: the
  files of a version with their key statistics, the key columns of just the files other
  writers added (the catch-up before a commit), Parquet footers (what a read costs;
  encodings delta-rs decodes wrongly without an error).
"""

from .table import (
    QUERY_TABLE,
    SCAN_CONFIG,
    CommitConflictError,
    Handoff,
    Table,
    TableNotFoundError,
    plain_schema,
    translate_errors,
)

__all__ = [
    "QUERY_TABLE",
    "SCAN_CONFIG",
    "CommitConflictError",
    "Handoff",
    "Table",
    "TableNotFoundError",
    "plain_schema",
    "translate_errors",
]
