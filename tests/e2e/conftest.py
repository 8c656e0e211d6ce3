"""Fixtures of the end-to-end tests: one real control plane per session (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and the node agent; see
tests/e2e/controlplane/README.md), a namespace per test, and in it an operator that
`helm install` started from the chart, watching that namespace alone."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.controlplane.plane import ControlPlane, bin_dir
from tests.e2e.harness import GUARD_SECONDS, HELM, Cli, Kubectl, Pods, Release, wait_for

pytestmark = pytest.mark.e2e
CLUSTER_RELEASE, CLUSTER_RELEASE_NAMESPACE = "sm", "stagingmerge-system"
OPERATOR_RELEASE = "op"  # every test's own, in its namespace


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    folder = bin_dir()
    if folder is None:
        pytest.skip("no control plane built: run `python tools/build_k8s.py` (make test does)")
    plane = ControlPlane(folder, tmp_path_factory.mktemp("controlplane")).start()
    plane.start_node()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kubectl_cli(control_plane: ControlPlane) -> Cli:
    return Cli(control_plane.bin / "kubectl", control_plane.admin)


@pytest.fixture(scope="session")
def helm(control_plane: ControlPlane) -> Cli:
    if not HELM.exists():
        pytest.skip("no helm in .tools/bin: run tools/get_helm.py (make test does)")
    return Cli(HELM, control_plane.admin)


def cluster_release(plane: ControlPlane, kubectl_cli: Cli, helm: Cli) -> Release:
    """The chart installed as the README says: cluster-wide, in stagingmerge-system (which
    enforces the restricted Pod Security level), the CRD with it."""
    if kubectl_cli.run("get", "namespace", CLUSTER_RELEASE_NAMESPACE).returncode != 0:
        kubectl_cli("create", "namespace", CLUSTER_RELEASE_NAMESPACE)
        kubectl_cli("label", "namespace", CLUSTER_RELEASE_NAMESPACE,
                    "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip
    return Release(plane, kubectl_cli, helm, CLUSTER_RELEASE, CLUSTER_RELEASE_NAMESPACE)


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane, kubectl_cli: Cli, helm: Cli) -> None:
    """The CRD as a user gets it: the first `helm install` of the chart puts it there and
    `helm uninstall` keeps it (so the per-namespace releases install without it)."""
    installed = cluster_release(control_plane, kubectl_cli, helm).install()
    installed.uninstall()
    assert kubectl_cli("get", "crd", "stagingmerges.stagingmerge.io", "-o", "name").strip()


@pytest.fixture
def namespace(
    kubectl_cli: Cli, control_plane: ControlPlane, crd: None, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A namespace of the test's own, deleted by the real namespace controller after. It
    enforces the restricted Pod Security level (the operator's and the merge's pods must
    be admitted there) unless the test is marked `pod_security(level)`."""
    marker = request.node.get_closest_marker("pod_security")
    level = marker.args[0] if marker else "restricted"
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl_cli("create", "namespace", name)
    kubectl_cli("label", "namespace", name, f"pod-security.kubernetes.io/enforce={level}")
    wait_for(
        lambda: kubectl_cli.run("get", "serviceaccount", "default", "-n", name).returncode == 0,
        f"the default ServiceAccount of {name}",
    )
    yield name
    kubectl_cli("delete", "namespace", name, "--wait=false")


@pytest.fixture
def kubectl(control_plane: ControlPlane, namespace: str) -> Kubectl:
    return Kubectl(control_plane.admin, namespace)


@pytest.fixture
def install_operator(
    control_plane: ControlPlane, kubectl_cli: Cli, helm: Cli, namespace: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Release]]:  # fmt: skip
    """`install_operator(*helm_values, name=..., **operator_env)`: the chart installed in
    the test's namespace, watching it alone; uninstalled (with --wait) after the test."""
    installed: list[Release] = []

    def install(*values: str, name: str = OPERATOR_RELEASE, **env: str) -> Release:
        release = Release(control_plane, kubectl_cli, helm, name, namespace, watch=[namespace],
                          values=list(values), env=env, crds=False)  # fmt: skip
        installed.append(release)
        return release.install()

    yield install
    failed = getattr(request.node, "rep_call", None)
    for release in installed:
        if failed is not None and failed.failed:
            print(f"--- operator {release.name} ---\n{release.logs()[-20000:]}")
        release.uninstall()


@pytest.fixture
def operator(install_operator: Callable[..., Release]) -> Release:
    return install_operator()


@pytest.fixture
def runner(control_plane: ControlPlane, kubectl: Kubectl) -> Pods:
    return Pods(control_plane, kubectl)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-timeout's guard for these tests is the harness's (a real control plane and
    pods on 2 loaded cores); every wait inside is on progress, not on time."""
    for item in items:
        if "e2e" in str(item.path) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(GUARD_SECONDS))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
