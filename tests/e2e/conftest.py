"""Fixtures of the end-to-end tests: a fresh emulator, operator and job runner per test."""

from __future__ import annotations

import warnings

import pytest

from tests.e2e.emulator.cluster import OPERATOR_TOKEN, RunningCluster
from tests.e2e.emulator.jobrunner import JobRunner
from tests.e2e.emulator.rbac import HELM, OPERATOR, Authorizer, render_chart
from tests.e2e.harness import Kubectl, Operator

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def chart_rbac():
    """The chart's RBAC of a cluster-wide install, as helm renders it (None without helm)."""
    if not HELM.exists():
        warnings.warn(
            "no helm in .tools/bin (make test fetches it): RBAC is not enforced", stacklevel=1
        )
        return None
    return render_chart()


@pytest.fixture
def cluster(chart_rbac):
    """The API emulator, enforcing the chart's RBAC on the operator's requests."""
    authorizer = (
        Authorizer.from_manifests(chart_rbac, {OPERATOR_TOKEN: OPERATOR})
        if chart_rbac is not None
        else None
    )
    running = RunningCluster(authorizer).start()
    yield running
    running.stop()
    assert running.emulator is not None
    assert not running.emulator.pruned, f"a real API server drops: {running.emulator.pruned}"
    if authorizer is not None:
        assert not authorizer.refused, authorizer.refused


@pytest.fixture
def kubectl(cluster):
    return Kubectl(cluster)


@pytest.fixture
def runner(kubectl, tmp_path):
    job_runner = JobRunner(kubectl.api, tmp_path / "pods").start()
    yield job_runner
    job_runner.stop()
    assert not job_runner.errors, job_runner.errors


@pytest.fixture
def operator(cluster, tmp_path, request):
    process = Operator(cluster, tmp_path).start()
    yield process
    process.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(process.logs()[-20000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
