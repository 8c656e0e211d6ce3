"""An HTTP fault proxy for the object-store tests, on loopback between the merge and one
emulator (moto's S3, fake-gcs-server, Azurite).

It forwards every request as it came and, on the requests a rule picks (by method, a
pattern of the path and which match it is), does what real stores do now and then:
answer late, answer 503 or 429 (a throttling storm), or **apply the request and lose the
answer** (the store has the object; the client's connection drops before a byte of the
response). Toxiproxy works on TCP bytes, so it cannot pick "the 2nd PUT of a commit file"
nor drop only the answer of a request the store applied; this proxy works on requests, so
it can (Toxiproxy's toxics on bytes, where it is built, are the other half of issue 26).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import ClientSession, ClientTimeout, web

# hop-by-hop headers, and the lengths aiohttp sets itself from the body it sends
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"}
SLOW_DOWN = (
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Rule:
    """Act on the matching requests number `nth` to `nth + times - 1` (1-based)."""

    method: str  # a regular expression matching the whole method ("PUT|POST", ".*")
    path: str  # a regular expression searched in the path and query, percent-decoded
    # "lose-answer" | "reset" (before the store sees it) | "cut" (mid-body) | "status"
    # | "delay"
    action: str
    nth: int = 1
    times: int = 1
    status: int = 503
    seconds: float = 0.0  # "delay": this long, plus up to `jitter` more
    jitter: float = 0.0
    cut_after: int = 1024  # "cut": body bytes received before the connection drops
    seen: int = 0
    fired: int = 0
    done: int = 0  # fired requests the store has answered (a "delay" ends late)

    def picks(self, method: str, path: str) -> bool:
        if not re.fullmatch(self.method, method) or not re.search(self.path, path):
            return False
        self.seen += 1
        if self.nth <= self.seen < self.nth + self.times:
            self.fired += 1
            return True
        return False


@dataclass
class Seen:
    method: str
    path: str
    status: int | str  # the store's answer, or what the proxy did instead


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of the emulator
    rules: list[Rule] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    port: int = 0

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(30)
        assert self.port, "the fault proxy did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.requests.clear()

    # --- the server, on its own event loop -----------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        ready.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=120), auto_decompress=False)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _close(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        where = unquote(request.path_qs)  # GCS names the object in the query
        rule = next((r for r in self.rules if r.picks(request.method, where)), None)
        if rule is not None and rule.action == "cut":
            # the connection drops after `cut_after` bytes of the body have arrived
            await request.content.read(rule.cut_after)
            self.requests.append(Seen(request.method, request.path, "cut"))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        body = await request.read()
        if rule is not None and rule.action == "status":
            self.requests.append(Seen(request.method, request.path, f"refused {rule.status}"))
            return web.Response(
                status=rule.status,
                body=SLOW_DOWN,
                headers={"Content-Type": "application/xml", "Retry-After": "0"},
            )
        if rule is not None and rule.action == "reset":
            # the connection drops mid-request: the store never sees it
            self.requests.append(Seen(request.method, request.path, "reset"))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if rule is not None and rule.action == "delay":
            await asyncio.sleep(rule.seconds + random.random() * rule.jitter)
        # the store sees its own address as Host (fake-gcs-server routes by it; S3's
        # signature covers it, which moto does not check; Azure's does not)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {*HOP, "host"}}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding", "Accept"),
        ) as answer:
            payload = await answer.read()
            if rule is not None and rule.action == "lose-answer":
                # applied by the store; the client's connection drops before any answer
                self.requests.append(Seen(request.method, request.path, f"lost {answer.status}"))
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)  # written nowhere: the connection is gone
            self.requests.append(Seen(request.method, request.path, answer.status))
            if rule is not None:
                rule.done += 1
            out = web.Response(status=answer.status, body=payload if payload else None)
            for key, value in answer.headers.items():
                if key.lower() not in HOP:
                    out.headers.add(key, value)
            if request.method == "HEAD" and "Content-Length" in answer.headers:
                out.headers["Content-Length"] = answer.headers["Content-Length"]
            return out
