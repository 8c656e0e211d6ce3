"""Toxiproxy on loopback, for the storage-fault tests: the real TCP fault proxy (built by
tools/build_toxiproxy.py into .tools/), driven through its HTTP API. Its toxics act on
bytes (bandwidth, latency, slicer, reset_peer, limit_data); tests/faults/http_proxy.py
acts on requests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


class Toxiproxy:
    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> Path | None:
        """The newest toxiproxy-server built into .tools/ (None: not built, e.g. no Go)."""
        built = sorted(
            REPO.glob(".tools/toxiproxy/*/bin/toxiproxy-server"), key=lambda p: p.stat().st_mtime
        )
        return built[-1] if built else None

    def start(self) -> Toxiproxy:
        binary = self.binary()
        assert binary is not None
        self._proc = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:  # readiness: its API answers
            try:
                self._call("GET", "/version")
                return self
            except OSError:
                assert self._proc.poll() is None, "toxiproxy-server exited"
                assert time.monotonic() < deadline, "toxiproxy-server did not answer"
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    def proxy(self, name: str, upstream: str) -> str:
        """A new proxy to `upstream` (host:port); returns its http://host:port."""
        made = self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": True},
        )
        return f"http://{made['listen']}"

    def toxic(self, proxy: str, kind: str, stream: str, **attributes: Any) -> None:
        """Add a toxic (`stream`: "upstream", the client's bytes to the store, or
        "downstream")."""
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {"type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes},
        )

    def remove(self, proxy: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}")

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return text.decode()  # /version answers plain text
