"""The README's story on the real control plane (issue 23, part 4): the operator that
`helm install` started merges a StagingMerge applied with the real kubectl; the Job runs
as a pod of the node agent; delete cascades through the real garbage collector; `helm
uninstall` leaves the CRD and every StagingMerge. Run with `-s` for the transcript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.real.conftest import RELEASE, Cli, Release
from tests.helpers import ct, expected_union, rows, write

NAME = "argon-backfill-0042"
# Found by the first run on the real server: right after `helm install`, the API server's
# RESTMapper does not know the new CRD yet, so OwnerReferencesPermissionEnforcement refuses
# the Job's blockOwnerDeletion with a 403, and the operator marks the merge Failed
# (JobRefused) instead of retrying. Strict: the fix must remove this mark.
pytestmark = pytest.mark.xfail(
    strict=True, reason="operator treats a transient 403 (CRD not yet mapped) as final"
)


def manifest(name: str, main: Path, staging: Path) -> str:
    return yaml.safe_dump({
        "apiVersion": "stagingmerge.io/v1alpha1", "kind": "StagingMerge",
        "metadata": {"name": name},
        "spec": {"main": {"uri": str(main)}, "staging": {"uri": str(staging)}},
    }, sort_keys=False)  # fmt: skip


def settled(plane: ControlPlane, kubectl: Cli, namespace: str, name: str) -> str:
    """The Succeeded condition's status once it is True or False (never a time guess)."""

    def check() -> str | None:
        merge = json.loads(kubectl("get", "smerge", name, "-n", namespace, "-o", "json"))
        for condition in (merge.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Succeeded" and condition["status"] in ("True", "False"):
                return str(condition["status"])
        return None

    result: str = plane.wait(check, f"{name} settled")
    return result


def jobs(kubectl: Cli, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl("get", "jobs", "-n", namespace, "-o", "json"))[
        "items"
    ]
    return items


def test_the_readme_story(
    control_plane: ControlPlane, kubectl: Cli, release: Release, namespace: str, tmp_path: Path
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    main, staging = tmp_path / "lake" / "main", tmp_path / "lake" / "staging" / "run-0042"
    write(main, ct([0, 1] * 500, [i // 2 for i in range(1000)], seed=1))
    write(staging, ct([0, 1] * 400, [400 + i // 2 for i in range(800)], seed=2))
    write(staging, ct([0, 1] * 50, [700 + i // 2 for i in range(100)], seed=3))
    expected = expected_union(rows(main), rows(staging))
    path = tmp_path / "backfill.yaml"
    path.write_text(manifest(NAME, main, staging))
    transcript: list[str] = []

    def run(*args: str) -> str:
        output = kubectl(*args, "-n", namespace)
        shown = f"$ kubectl {' '.join(args)}\n{output}".replace(str(tmp_path), "…")
        transcript.append(shown.replace(namespace, "ct-lake"))
        return output

    assert run("apply", "-f", str(path)).strip() == f"stagingmerge.stagingmerge.io/{NAME} created"
    outcome = settled(control_plane, kubectl, namespace, NAME)
    assert outcome == "True", release.operator_log()[-5000:]
    assert rows(main).equals(expected) and not staging.exists()

    header, row = run("get", "smerge").splitlines()
    assert header.split() == ["NAME", "MAIN", "STATUS", "PROGRESS", "INSERTED", "AGE"]
    assert row.split()[:6] == [NAME, str(main), "Succeeded", "1/1", "batches", "600"]
    metrics = json.loads(run("get", "smerge", NAME, "-o", "jsonpath={.status.metrics}"))
    assert (metrics["inserted"], metrics["skipped_existing"], metrics["skipped_duplicates"]) == (
        600, 200, 100,
    )  # fmt: skip
    (job,) = jobs(kubectl, namespace)
    assert job["metadata"]["name"] == f"{NAME}-g1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "StagingMerge"
    described = run("describe", "smerge", NAME)
    assert "Events:" in described and "Merged" in described.split("Events:")[1]
    events = run("events", "--for", f"smerge/{NAME}")
    assert all(reason in events for reason in ("Started", "Merged"))

    assert run("delete", "smerge", NAME).startswith(
        f'stagingmerge.stagingmerge.io "{NAME}" deleted'
    )
    control_plane.wait(lambda: jobs(kubectl, namespace) == [], "the garbage collector's cascade")
    print("\n" + "\n".join(transcript))


def test_uninstall_keeps_the_crd_and_every_merge(
    control_plane: ControlPlane, kubectl: Cli, release: Release, namespace: str, tmp_path: Path
) -> None:
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 10, range(10), seed=1))
    write(staging, ct([0] * 10, range(5, 15), seed=2))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest("kept", main, staging))
    assert settled(control_plane, kubectl, namespace, "kept") == "True"

    release.helm("uninstall", RELEASE, "-n", release.namespace, "--wait")
    try:
        assert kubectl("get", "crd", "stagingmerges.stagingmerge.io", "-o", "name").strip()
        kept = json.loads(kubectl("get", "smerge", "-n", namespace, "-o", "json"))["items"]
        assert [m["metadata"]["name"] for m in kept] == ["kept"]
        assert release.operator_pod() is None
    finally:
        release.install()  # the session's other tests keep their operator
