"""Server-side printing: the meta.k8s.io/v1 Table an API server answers to `kubectl get`.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
columns it is given. For a custom resource the columns are the CRD's
additionalPrinterColumns after `Name`; a `date` column is served as an age ("5m"), as the
apiextensions server does; a missing value is null (kubectl prints `<none>`). Built-in
kinds get the default columns the API server uses for a kind without its own printer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

DEFAULT_COLUMNS = [
    {"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
]


def wants_table(accept: str) -> bool:
    return any(
        "as=Table" in part and "g=meta.k8s.io" in part and "v=v1" in part
        for part in accept.split(",")
    )


def human_duration(seconds: float) -> str:
    """Kubernetes' duration.HumanDuration, as `AGE` columns print it."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def dig(obj: Any, json_path: str) -> Any:
    """The value at a simple `.a.b.c` JSONPath (what printer columns use), or None."""
    value = obj
    for part in json_path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def cell(column: dict[str, Any], value: Any, now: datetime) -> Any:
    if value is None:
        return None
    if column["type"] == "date":
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return human_duration((now - stamp).total_seconds())
    if column["type"] == "integer" and isinstance(value, int | float):
        return int(value)
    return value


def table(
    objects: list[dict[str, Any]], columns: list[dict[str, Any]] | None, resource_version: str
) -> dict[str, Any]:
    columns = columns if columns is not None else DEFAULT_COLUMNS
    now = datetime.now(UTC)
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
    ] + [
        {
            "name": c["name"],
            "type": c["type"],
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = [
        {
            "cells": [obj["metadata"]["name"]]
            + [cell(c, dig(obj, c["jsonPath"]), now) for c in columns],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in objects
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
