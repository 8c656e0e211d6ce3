"""One interface over the places tables live in the tests: a local folder, a moto bucket, an
Azurite container or a fake-gcs-server bucket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

KEYS = ["source_url", "cert_index"]


@dataclass
class Store:
    kind: str
    root: str  # a folder, or s3://bucket
    options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    server: Any = None  # tests.s3.MotoS3 or tests.azure.Azurite

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write(self, name: str, table: pa.Table, **kwargs: Any) -> str:
        write_deltalake(
            self.uri(name),
            table,
            mode=kwargs.pop("mode", "append"),
            storage_options=self.options or None,
            **kwargs,
        )
        return self.uri(name)

    def table(self, name: str) -> DeltaTable:
        return DeltaTable(self.uri(name), storage_options=self.options or None)

    def table_at(self, name: str, version: int) -> DeltaTable:
        return DeltaTable(self.uri(name), version=version, storage_options=self.options or None)

    def rows(self, name: str) -> pa.Table:
        from tests.helpers import read

        table = read(self.table(name))
        return table.select(sorted(table.column_names)).sort_by(
            [(k, "ascending") for k in KEYS if k in table.column_names]
        )

    def keys(self, name: str) -> list[tuple[Any, ...]]:
        from tests.helpers import read

        table = read(self.table(name), KEYS)
        return sorted(zip(*(table[k].to_pylist() for k in KEYS), strict=True))

    def objects(self, name: str) -> list[str]:
        if self.kind in ("s3", "azure", "gcs"):
            container = self.root.split("://", 1)[1]
            prefix = name.rstrip("/") + "/"
            return [k.removeprefix(prefix) for k in self.server.keys(container, prefix)]
        from pathlib import Path

        base = Path(self.root) / name
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def exists(self, name: str) -> bool:
        return bool(self.objects(name))
