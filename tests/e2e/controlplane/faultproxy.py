"""A fault proxy in front of the real kube-apiserver, for the answers a real server will
not give on demand: 5xx and 429 storms, a 409 on create, slow answers that time a client
out, and a watch that ends with 410 Gone (as a real server ends one whose resourceVersion
is too old: a 200 stream carrying one ERROR event).

It terminates TLS with the API server's own certificate (the pods trust that CA) and
forwards everything else unchanged (bearer tokens included) over TLS to the server, so
authentication, RBAC and admission stay the real server's. A pod is pointed at it with
KUBERNETES_SERVICE_PORT (an env entry wins over the in-cluster variables)."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.e2e.controlplane.pki import Pki

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Fault:
    """Answer the next `times` requests matching `method` and `path` (a regex over the URL
    path; `watch` True/False narrows to watches or not) with `status`, or, with
    status None, forward them after `delay` seconds."""

    method: str
    path: str
    times: int
    status: int | None = None
    delay: float = 0.0
    watch: bool | None = None
    hits: list[str] = field(default_factory=list)

    def matches(self, method: str, url: str) -> bool:
        parts = urlsplit(url)
        # kopf sends watch=true, the kubernetes client watch=True
        watching = [v.lower() for v in parse_qs(parts.query).get("watch", [])] == ["true"]
        return (
            self.times > 0
            and method == self.method
            and re.fullmatch(self.path, parts.path) is not None
            and (self.watch is None or self.watch == watching)
        )


def _status_body(code: int) -> bytes:
    reason = {409: "AlreadyExists", 410: "Expired", 429: "TooManyRequests",
              500: "InternalError", 503: "ServiceUnavailable"}.get(code, "Unknown")  # fmt: skip
    return json.dumps({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
        "reason": reason, "message": f"injected by the fault proxy: {reason}",
    }).encode()  # fmt: skip


class FaultProxy:
    def __init__(self, pki: Pki, upstream_port: int) -> None:
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._upstream = ssl.create_default_context(cafile=str(pki.ca))
        self._upstream_port = upstream_port
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:  # quiet: the audit log has it all
                pass

            def handle_one(self) -> None:
                proxy.serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving.load_cert_chain(pki.server.cert, pki.server.key)
        self._server.socket = serving.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])

    def start(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _fault_for(self, method: str, url: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, url):
                    fault.times -= 1
                    fault.hits.append(f"{method} {url}")
                    return fault
        return None

    def serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        fault = self._fault_for(request.command, request.path)
        if fault is not None and fault.status is not None:
            if fault.status == 410 and fault.watch:
                event = {"type": "ERROR", "object": json.loads(_status_body(410))}
                self._answer(request, 200, json.dumps(event).encode() + b"\n")
            else:
                self._answer(request, fault.status, _status_body(fault.status))
            return
        if fault is not None:
            time.sleep(fault.delay)
        self._forward(request, body)

    def _answer(self, request: http.server.BaseHTTPRequestHandler, code: int, body: bytes) -> None:
        request.send_response(code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _forward(self, request: http.server.BaseHTTPRequestHandler, body: bytes | None) -> None:
        upstream = http.client.HTTPSConnection(
            "127.0.0.1", self._upstream_port, context=self._upstream, timeout=600
        )
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            request.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP:
                    request.send_header(key, value)
            request.send_header("Transfer-Encoding", "chunked")
            request.end_headers()
            # chunk by chunk: a watch is one long response whose events must arrive now
            while chunk := response.read1(65536):
                request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                request.wfile.flush()
            request.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            request.close_connection = True  # the client sees a dropped connection
        finally:
            upstream.close()
