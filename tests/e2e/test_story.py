"""The README's kubectl story, played against the emulator: apply, wait, get, read metrics.

`render_table` prints a StagingMerge the way `kubectl get smerge` does, from the CRD's
additionalPrinterColumns (the emulator has no server-side printing). Run with
`pytest tests/e2e/test_story.py -s` to see the transcript the README quotes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ct, write

pytestmark = pytest.mark.e2e
CRD = yaml.safe_load(
    (
        Path(__file__).resolve().parents[2] / "crds" / "stagingmerge.io_stagingmerges.yaml"
    ).read_text()
)


def dig(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def age(stamp: str) -> str:
    seconds = int(
        (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    )
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def render_table(objects: list[dict[str, Any]]) -> str:
    columns = [
        c for c in CRD["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")
    ]
    header = ["NAME"] + [c["name"].upper() for c in columns]
    rows = []
    for obj in objects:
        cells = [obj["metadata"]["name"]]
        for column in columns:
            value = dig(obj, column["jsonPath"])
            cells.append(
                age(value)
                if column["type"] == "date" and value
                else "<none>"
                if value is None
                else str(value)
            )
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def test_the_readme_story(kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "lake" / "main", tmp_path / "lake" / "staging" / "run-0042"
    write(main, ct([0, 1] * 500, [i // 2 for i in range(1000)], seed=1))
    write(staging, ct([0, 1] * 400, [400 + i // 2 for i in range(800)], seed=2))
    write(staging, ct([0, 1] * 50, [700 + i // 2 for i in range(100)], seed=3))

    kubectl.apply(
        "argon-backfill-0042",
        {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}, "batchRows": 500},
    )
    condition = kubectl.wait("argon-backfill-0042", "True")
    merge = kubectl.get("argon-backfill-0042")
    table = render_table([merge])
    metrics = merge["status"]["metrics"]
    events = [
        f"{e['type']:<8} {e['reason']:<8} {e['message']}"
        for e in kubectl.events("argon-backfill-0042")
    ]
    print("\n$ kubectl wait --for=condition=Succeeded smerge/argon-backfill-0042")
    print("stagingmerge.stagingmerge.io/argon-backfill-0042 condition met")
    print("\n$ kubectl get smerge\n" + table)
    print("\n$ kubectl get smerge argon-backfill-0042 -o jsonpath='{.status.metrics}'")
    print(json.dumps(metrics))
    print("\n$ kubectl get smerge argon-backfill-0042 -o yaml   # status only")
    print(
        yaml.safe_dump(
            {"status": {k: v for k, v in merge["status"].items() if k != "metrics"}},
            sort_keys=False,
        )
    )
    print("$ kubectl events --for smerge/argon-backfill-0042\n" + "\n".join(events))

    assert condition["reason"] == "Merged"
    assert table.splitlines()[0].split() == [
        "NAME",
        "STATUS",
        "PROGRESS",
        "INSERTED",
        "SKIPPED",
        "AGE",
    ]
    assert table.splitlines()[1].split()[:5] == [
        "argon-backfill-0042",
        "Succeeded",
        "2/2",
        "batches",
        str(metrics["inserted"]),
    ]
    assert (metrics["inserted"], metrics["skipped_existing"], metrics["skipped_duplicates"]) == (
        600,
        200,
        100,
    )
