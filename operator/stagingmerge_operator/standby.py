"""A standby's liveness endpoint: `/healthz` answered while waiting for the Lease.

kopf serves the real endpoint only once it runs, and an instance waiting for the Lease
has not started kopf. Without this, a kubelet would see the standby's liveness probe
fail, restart it over and over (CrashLoopBackOff), and a Deployment with two replicas
would never become Available. The server is closed before kopf binds the same port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path.split("?")[0] == "/healthz"
        body = b'{"standby": true}' if found else b""
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a probe every few seconds is not worth a log line


@contextmanager
def healthz_while_waiting(port: int | None) -> Iterator[None]:
    """Answer `/healthz` on `port` (all interfaces, as kopf does) for the block's
    duration; nothing when `port` is None (no liveness endpoint configured)."""
    if not port:
        yield
        return
    server = ThreadingHTTPServer(("0.0.0.0", port), _Healthz)  # noqa: S104 - a probe port
    thread = threading.Thread(target=server.serve_forever, name="standby-healthz", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()  # the port is free for kopf's endpoint
        thread.join()
