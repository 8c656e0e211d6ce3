"""The README's story on the real control plane (issue 23, part 4): the operator that
`helm install` started merges a StagingMerge applied with the real kubectl; the Job runs
as a pod of the node agent; delete cascades through the real garbage collector; `helm
upgrade` adds a CRD field; `helm uninstall` leaves the CRD and every StagingMerge. Run
with `-s` for the transcript."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import CHART, Cli, Release
from tests.helpers import ct, expected_union, rows, write

NAME = "argon-backfill-0042"
# The first run on the real server found what the emulator never showed: right after
# `helm install` the API server's discovery does not know the new CRD yet, and
# OwnerReferencesPermissionEnforcement answers the Job's blockOwnerDeletion with a 403.
# The operator now retries that answer; this story runs straight after the install, so
# it keeps that fix honest.


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
    assert outcome == "True", release.logs()[-5000:]
    # what the README's reader types; it answers at once now (settled, above, also sees a
    # False, which `kubectl wait` would sit out until its timeout)
    assert "condition met" in run(
        "wait", "--for=condition=Succeeded", f"smerge/{NAME}", "--timeout=600s"
    )
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

    release.uninstall()
    assert kubectl("get", "crd", "stagingmerges.stagingmerge.io", "-o", "name").strip()
    kept = json.loads(kubectl("get", "smerge", "-n", namespace, "-o", "json"))["items"]
    assert [m["metadata"]["name"] for m in kept] == ["kept"]
    assert kept[0]["status"]["phase"] == "Succeeded"


CRD_FILE = Path("files") / "stagingmerge.io_stagingmerges.yaml"


def chart_with_a_new_field(copy: Path, field: str) -> Path:
    """The chart as its next release might be: the same, plus one optional spec field in
    the CRD (what a minor version adds)."""
    shutil.copytree(CHART, copy)
    crd = yaml.safe_load((copy / CRD_FILE).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"][field] = {"type": "string", "description": "added by the upgrade"}
    (copy / CRD_FILE).write_text(yaml.safe_dump(crd, sort_keys=False))
    return copy


def test_helm_upgrade_adds_a_crd_field(
    control_plane: ControlPlane, kubectl: Cli, release: Release, namespace: str, tmp_path: Path
) -> None:
    """The CRD is a chart template, so `helm upgrade` changes it (a crds/ file would be
    installed once and never again). Before: the real kubectl refuses the new field
    (server-side field validation, Strict); after: it is stored and the merge runs."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write(main, ct([0] * 4, range(4), seed=1))
    write(staging, ct([0] * 4, range(2, 6), seed=2))
    merge = yaml.safe_load(manifest("annotated", main, staging))
    merge["spec"]["ticket"] = "BACKFILL-42"
    refused = kubectl.run("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(merge))
    assert refused.returncode != 0 and 'unknown field "spec.ticket"' in refused.stderr

    release.chart = chart_with_a_new_field(tmp_path / "chart", "ticket")
    try:
        # a pod annotation changes the Deployment too, so the upgrade rolls the operator
        release.upgrade("--set", "operator.podAnnotations.upgraded=yes")
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(merge))
        stored = kubectl("get", "smerge", "annotated", "-n", namespace,
                         "-o", "jsonpath={.spec.ticket}")  # fmt: skip
        assert stored == "BACKFILL-42"
        assert settled(control_plane, kubectl, namespace, "annotated") == "True"
        assert rows(main).num_rows == 6 and not staging.exists()
    finally:
        # back to this chart's CRD, so the rest of the session sees the schema it ships
        release.chart = CHART
        release.upgrade("--set", "operator.podAnnotations.upgraded=back")
