"""The tests of the control plane itself and of the README's story: here `kubectl` is the
real binary (the shared fixtures of tests/e2e/conftest.py give an API client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import cluster_release
from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import Cli, Release


@pytest.fixture
def kubectl(kubectl_cli: Cli) -> Cli:
    return kubectl_cli


@pytest.fixture
def release(
    control_plane: ControlPlane, kubectl_cli: Cli, helm: Cli, crd: None
) -> Iterator[Release]:
    """`helm install` of the chart cluster-wide, as the README says; uninstalled after."""
    installed = cluster_release(control_plane, kubectl_cli, helm).install()
    yield installed
    still = helm.run("status", installed.name, "-n", installed.namespace).returncode == 0
    if still or installed.pods():  # the uninstall test uninstalls it itself
        installed.uninstall()
