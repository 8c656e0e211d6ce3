"""The real components failing under a merge: kube-apiserver and etcd restarted, the
node agent (the kubelet's stand-in) killed with the merge pod's process. Each ends with
main exactly the union, staging deleted once, and one Job for the generation.

Each merge holds right after its first commit (STAGINGMERGE_PAUSE) while the component
is down, so the fault lands mid-merge on any machine, however fast or slow."""

from __future__ import annotations

import signal
from pathlib import Path

import pyarrow as pa
import pytest

from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import Kubectl, Pods, Release, slow_tables, spec_for, wait_for
from tests.helpers import expected_union, rows

pytestmark = pytest.mark.e2e


def held_merge(kubectl: Kubectl, tmp_path: Path, name: str) -> tuple[Path, Path, Path, pa.Table]:
    """A merge applied and held after its first commit: (pause, main, staging, expected)."""
    main, staging = slow_tables(tmp_path, files=10)
    expected = expected_union(rows(main), rows(staging))
    pause = tmp_path / "pause"
    hooks = kubectl.hooks(STAGINGMERGE_PAUSE=f"batch-after-commit:{pause}")
    kubectl.apply(name, spec_for(main, staging, batchRows=20, **hooks))
    wait_for(lambda: Path(f"{pause}.waiting").exists(), what=f"{name}'s first commit")
    return pause, main, staging, expected


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_component_restarted_mid_merge(
    component: str, control_plane: ControlPlane, kubectl: Kubectl, operator: Release,
    runner: Pods, tmp_path: Path,
) -> None:  # fmt: skip
    pause, main, staging, expected = held_merge(kubectl, tmp_path, "survivor")

    control_plane.restart(component, signal.SIGKILL)  # a crash, not a clean stop
    Path(f"{pause}.go").touch()

    assert kubectl.wait("survivor", "True")["reason"] == "Merged", operator.logs()[-5000:]
    assert rows(main).equals(expected) and not staging.exists()
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["survivor-g1"]
    assert len(runner.attempts_of("survivor-g1")) == 1


def test_the_node_agent_killed_mid_merge(
    control_plane: ControlPlane, kubectl: Kubectl, operator: Release, tmp_path: Path
) -> None:
    """The agent goes and its processes with it (a node lost with its containers). When it
    is back, it reports the merge's container as gone (ContainerStatusUnknown, 137); the
    real Job controller starts a replacement pod, which finishes the merge."""
    pause, main, staging, expected = held_merge(kubectl, tmp_path, "orphan")

    control_plane.restart("node-1")  # SIGTERM: the agent kills its pods' processes, exits
    Path(f"{pause}.go").touch()  # the replacement pod holds at the same point: let it go

    assert kubectl.wait("orphan", "True")["reason"] == "Merged", operator.logs()[-5000:]
    pods = kubectl.items(kubectl.core.list_namespaced_pod(
        kubectl.namespace, label_selector="batch.kubernetes.io/job-name=orphan-g1"
    ))  # fmt: skip
    ends = sorted(
        (p["status"]["phase"], p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"])
        for p in pods
    )
    assert ends == [("Failed", "ContainerStatusUnknown"), ("Succeeded", "Completed")]
    assert rows(main).equals(expected) and not staging.exists()
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["orphan-g1"]
