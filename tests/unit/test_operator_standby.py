"""The standby's /healthz: answered while waiting for the Lease, the port freed after."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from stagingmerge_operator.standby import healthz_while_waiting
from tests.e2e.controlplane.plane import free_port


def test_answers_healthz_then_frees_the_port_for_kopf() -> None:
    port = free_port()
    with healthz_while_waiting(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
    with socket.socket() as s:  # kopf binds it next (aiohttp sets SO_REUSEADDR too)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))


def test_no_port_no_server() -> None:
    with healthz_while_waiting(None):
        pass
