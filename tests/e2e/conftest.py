"""Fixtures of the end-to-end tests: a fresh emulator, operator and job runner per test."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import RunningCluster
from tests.e2e.harness import Kubectl, Operator
from tests.e2e.jobrunner import JobRunner

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster():
    running = RunningCluster().start()
    yield running
    running.stop()


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
