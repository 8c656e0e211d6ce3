"""The README's kubectl story, played by the real kubectl binary against the emulator.

apply → wait → get (a Table the emulator prints from the CRD's printer columns) → jsonpath
→ describe → events → delete, each output checked. Run `pytest tests/e2e/test_story.py -s`
to see the transcript the README quotes (temporary paths shortened to `…`).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.e2e.harness import KUBECTL, KubectlCli, wait_for
from tests.helpers import ct, write

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECTL.exists(), reason="run tools/get_helm.py (make test does)"),
]
NAME = "argon-backfill-0042"


def test_the_readme_story(cluster, kubectl, operator, runner, tmp_path):
    main, staging = tmp_path / "lake" / "main", tmp_path / "lake" / "staging" / "run-0042"
    write(main, ct([0, 1] * 500, [i // 2 for i in range(1000)], seed=1))
    write(staging, ct([0, 1] * 400, [400 + i // 2 for i in range(800)], seed=2))
    write(staging, ct([0, 1] * 50, [700 + i // 2 for i in range(100)], seed=3))
    manifest = tmp_path / "backfill.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "stagingmerge.io/v1alpha1",
                "kind": "StagingMerge",
                "metadata": {"name": NAME},
                "spec": {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}},
            },
            sort_keys=False,
        )
    )
    cli = KubectlCli(cluster, tmp_path)
    transcript: list[str] = []

    def run(*args: str) -> str:
        output = cli(*args)
        transcript.append(f"$ kubectl {' '.join(args)}\n{output}".replace(str(tmp_path), "…"))
        return output

    assert run("apply", "-f", str(manifest)).strip() == (
        f"stagingmerge.stagingmerge.io/{NAME} created"
    )
    assert "condition met" in run(
        "wait", "--for=condition=Succeeded", f"smerge/{NAME}", "--timeout=600s"
    )
    table = run("get", "smerge")
    header, row = table.splitlines()
    assert header.split() == ["NAME", "MAIN", "STATUS", "PROGRESS", "INSERTED", "AGE"]
    metrics = json.loads(run("get", "smerge", NAME, "-o", "jsonpath={.status.metrics}"))
    assert (metrics["inserted"], metrics["skipped_existing"], metrics["skipped_duplicates"]) == (
        600,
        200,
        100,
    )
    assert row.split()[:6] == [NAME, str(main), "Succeeded", "1/1", "batches", "600"]
    wide = run("get", "smerge", "-o", "wide")
    assert wide.split()[6:8] == ["SKIPPED", "JOB"] and f"{NAME}-g1" in wide
    described = run("describe", "smerge", NAME)
    assert "Reason:                Merged" in described or "Merged" in described
    assert "Events:" in described and "Started" in described.split("Events:")[1]
    events = run("events", "--for", f"smerge/{NAME}")
    assert all(reason in events for reason in ("Started", "Merging", "Merged"))
    assert run("delete", "smerge", NAME).startswith(
        f'stagingmerge.stagingmerge.io "{NAME}" deleted'
    )
    assert "No resources found" in run("get", "smerge")
    wait_for(lambda: kubectl.jobs() == [], what="the Job collected with its owner")
    print("\n" + "\n".join(transcript))
