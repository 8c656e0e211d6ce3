"""S3 failure modes, each against a real S3 API (moto) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from stagingmerge_merger.contract import Outcome
from tests.helpers import ct, run_cli, run_cli_after_first_batch
from tests.ports import free_port
from tests.s3 import ACCESS_KEY, SECRET_KEY, MotoS3
from tests.stores import Store

pytestmark = pytest.mark.s3


def test_store_outage_mid_merge_exits_1_keeps_staging_and_a_rerun_completes(bucket):
    server = MotoS3().start()  # a server of its own, to stop mid-merge
    try:
        store = Store(
            "s3", f"s3://{bucket}", options=server.options, env=server.options, server=server
        )
        store.write("main", ct([0] * 10, range(10), seed=1))
        for part in range(30):
            store.write(
                "staging", ct([0, 1] * 5, [part * 5 + i // 2 for i in range(10)], seed=part)
            )
        staging_objects = store.objects("staging")
        result = run_cli_after_first_batch(
            "--main",
            store.uri("main"),
            "--staging",
            store.uri("staging"),
            "--batch-rows",
            "10",
            then=lambda _: server.stop(),
            env=server.options,
        )
        metrics = result.metrics
        assert result.code == 1, result.stderr
        assert metrics["outcome"] == Outcome.FAILED
        assert (
            "Connection refused" in metrics["error"] or "error sending request" in metrics["error"]
        )
        assert metrics["batches"] < 30

        server.start()  # same port, same data
        assert store.objects("staging") == staging_objects
        keys = store.keys("main")
        assert len(keys) == len(set(keys))

        rerun = run_cli(
            "--main",
            store.uri("main"),
            "--staging",
            store.uri("staging"),
            "--batch-rows",
            "10",
            env=server.options,
        )
        assert rerun.code == 0, rerun.stderr
        keys = store.keys("main")
        log0, log1 = ct([0, 1], [0, 0])["source_url"].to_pylist()
        assert keys == sorted([(log0, i) for i in range(150)] + [(log1, i) for i in range(150)])
        assert not store.exists("staging")
    finally:
        server.stop()


@pytest.fixture
def authenticating_s3():
    """A moto server process that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_rejected_credentials_are_invalid_input_and_never_printed(authenticating_s3, tmp_path):
    env = {
        "AWS_ENDPOINT_URL": authenticating_s3,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    metrics_file = tmp_path / "metrics.json"
    result = run_cli(
        "--main",
        "s3://lake/main",
        "--staging",
        "s3://lake/staging",
        "--metrics-file",
        str(metrics_file),
        env=env,
    )
    assert result.code == 2, result.stderr
    assert "refused the credentials" in result.error_lines[0]
    everything = result.stdout + result.stderr + metrics_file.read_text()
    assert SECRET_KEY not in everything and ACCESS_KEY not in everything
