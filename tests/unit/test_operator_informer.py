"""informer.py: the loop per scope that delivers the merge Jobs' events and the resync,
against a scripted stand-in for kube.Kube's job_snapshot/watch_jobs (ScriptedKube below);
then kube.Kube's side of it with the real client's Watch over a canned HTTP response. The
watch against a real API server (and its 410s) runs in tests/e2e/test_faults.py.

No assertion here depends on timing: the loop is driven by the script, the test waits on
threading.Events (with a generous bound that only a hang would reach)."""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import threading
from collections.abc import Collection, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from stagingmerge_operator.informer import Informer, owner_of, request_timeout, window_seconds
from stagingmerge_operator.kube import Kube

HANG = 10.0  # seconds: reached only if the loop hangs
SELECTOR = "app.kubernetes.io/managed-by=stagingmerge-operator"


def job(name: str, owner: str | None, rv: str = "1", namespace: str = "ns") -> dict[str, Any]:
    refs = [{"apiVersion": "stagingmerge.io/v1alpha1", "name": owner, "controller": True}]
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": rv,
            "ownerReferences": refs if owner else [],
        }
    }


def event(type_: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "object": obj}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "Job", "metadata": {"resourceVersion": rv}})


def status_event(code: int) -> dict[str, Any]:  # what the API server sends
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    reason = "Expired" if code == 410 else "InternalError"
    return event("ERROR", {**status, "code": code, "reason": reason, "message": "too old"})


class ScriptedKube:
    """job_snapshot and watch_jobs play a script, one entry per call: a list answer is
    (jobs, resourceVersion) or an exception; a watch window is a list of events, an
    exception (raised at once), or a list whose last item is an exception (raised after
    the events before it). When a script runs out, the call records it and blocks until
    `release` is set (a long window), then yields nothing. Every call goes to `timeline`."""

    def __init__(self, snapshots: list[Any], windows: list[Any], timeline: list[Any]) -> None:
        self.snapshots, self.windows, self.timeline = list(snapshots), list(windows), timeline
        self.watch_calls: list[tuple[Any, ...]] = []
        self.exhausted = threading.Event()
        self.release = threading.Event()

    def _park(self) -> None:
        self.exhausted.set()
        self.release.wait(HANG)

    def job_snapshot(self, namespace: str | None, selector: str) -> tuple[list[Any], str]:
        self.timeline.append(("list", namespace))
        if not self.snapshots:
            self._park()
            return [], "0"
        answer = self.snapshots.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    def watch_jobs(
        self,
        namespace: str | None,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        request_timeout: float,
    ) -> Iterator[dict[str, Any]]:
        call = (namespace, selector, resource_version, timeout_seconds, request_timeout)
        self.watch_calls.append(call)
        self.timeline.append(("watch", namespace, resource_version))
        if not self.windows:
            self._park()
            return iter([])
        window = self.windows.pop(0)
        if isinstance(window, BaseException):
            raise window
        return self._play(window)

    @staticmethod
    def _play(window: list[Any]) -> Iterator[dict[str, Any]]:
        for item in window:
            if isinstance(item, BaseException):
                raise item
            yield item


class Recorder:
    """on_job and resync for the informer: each call goes to the timeline."""

    def __init__(
        self, timeline: list[Any], fail_on: Collection[str] = (), fail_resyncs: int = 0
    ) -> None:
        self.timeline, self.fail_on, self.fail_resyncs = timeline, fail_on, fail_resyncs
        self.resyncs = 0
        self.resync_threads: list[str] = []

    def on_job(self, namespace: str, name: str) -> None:
        self.timeline.append(("job", namespace, name))
        if name in self.fail_on:
            raise Exception(f"reconciling {name} failed")  # any exception, not a chosen one

    def resync(self) -> None:
        self.resyncs += 1
        self.resync_threads.append(threading.current_thread().name)
        self.timeline.append(("resync",))
        if self.resyncs <= self.fail_resyncs:
            raise Exception("listing merges failed")


def lasting_clock() -> Any:
    """Every window looks as if it lasted a minute: no backoff between windows."""
    ticks = itertools.count(step=60.0)
    return lambda: next(ticks)


def informer(
    kube: ScriptedKube, recorder: Recorder, namespaces: tuple[str, ...] = (), **kwargs: Any
) -> Informer:
    kwargs.setdefault("poll_seconds", 15)
    kwargs.setdefault("clock", lasting_clock())
    kwargs.setdefault("initial_backoff", 0.0)
    return Informer(kube, namespaces, SELECTOR, recorder.on_job, recorder.resync, **kwargs)


def run_script(kube: ScriptedKube, inf: Informer) -> None:
    """Start the informer, wait until it has played the whole script, stop it."""
    inf.start()
    try:
        assert kube.exhausted.wait(HANG), "the informer did not reach the end of the script"
    finally:
        inf.stop()
        kube.release.set()
        assert inf.join(HANG), "the informer did not stop"


# --- the loop -----------------------------------------------------------------------------


def test_events_reach_on_job_with_the_owner_and_resync_follows_the_list_and_every_window():
    timeline: list[Any] = []
    kube = ScriptedKube(
        snapshots=[([job("a-g1", "a", "5"), job("cron", None, "6")], "10")],
        windows=[
            [event("ADDED", job("b-g1", "b", "11")), event("MODIFIED", job("a-g1", "a", "12"))],
            [bookmark("15")],  # a quiet window: only the version moved on
            [event("DELETED", job("b-g1", "b", "16"))],
        ],
        timeline=timeline,
    )
    recorder = Recorder(timeline)
    run_script(kube, informer(kube, recorder))

    assert timeline == [
        ("list", None),
        ("job", "ns", "a"),  # the listed Jobs, as today; "cron" is nobody's merge
        ("resync",),  # right after the first list
        ("watch", None, "10"),  # from the list's version
        ("job", "ns", "b"),
        ("job", "ns", "a"),
        ("resync",),  # after the window
        ("watch", None, "12"),  # resumed from the last event: no list in between
        ("resync",),  # a bookmark is no Job event
        ("watch", None, "15"),  # ...but it moves the version on
        ("job", "ns", "b"),  # a deleted Job concerns its merge too
        ("resync",),
        ("watch", None, "16"),  # the script ran out here: the informer was stopped
    ]


def test_a_window_lasts_the_poll_period_and_the_client_waits_a_margin_longer():
    timeline: list[Any] = []
    kube = ScriptedKube([([], "1")], [[]], timeline)
    run_script(kube, informer(kube, Recorder(timeline), poll_seconds=15))
    assert {call[3:] for call in kube.watch_calls} == {(15, 25.0)}
    assert all(call[1] == SELECTOR for call in kube.watch_calls)
    assert (window_seconds(0.2), window_seconds(15.0), window_seconds(300.5)) == (1, 15, 301)
    assert request_timeout(1) > 1 and request_timeout(300) == 360


@pytest.mark.parametrize(
    "gone",
    [
        ApiException(status=410, reason="Expired: too old resource version"),  # recent clients
        [status_event(410)],  # a client that yields the ERROR event
        [event("ADDED", job("b-g1", "b", "11")), ApiException(status=410, reason="Expired")],
    ],
    ids=["raised", "event", "after-an-event"],
)
def test_410_gone_lists_again_and_watches_from_the_new_list(gone, caplog):
    caplog.set_level(logging.INFO, logger="stagingmerge.operator")
    timeline: list[Any] = []
    kube = ScriptedKube(
        snapshots=[([], "10"), ([job("a-g2", "a", "40")], "50")],
        windows=[gone, [event("MODIFIED", job("a-g2", "a", "51"))]],
        timeline=timeline,
    )
    recorder = Recorder(timeline)
    run_script(kube, informer(kube, recorder))

    assert [entry for entry in timeline if entry[0] == "list"] == [("list", None)] * 2
    # never again from a version the server dropped
    assert [entry[2] for entry in timeline if entry[0] == "watch"] == ["10", "50", "51"]
    assert timeline[-6:] == [
        ("list", None),
        ("job", "ns", "a"),
        ("watch", None, "50"),  # no resync after a re-list: the window that ended had one
        ("job", "ns", "a"),
        ("resync",),
        ("watch", None, "51"),
    ]
    assert recorder.resyncs == 3  # after the first list, after each of the two windows
    # normal (the version got too old), so not a warning
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "Job watch lists again (all namespaces): 410 Gone")
    ]


@pytest.mark.parametrize(
    "trouble",
    [
        [status_event(500)],
        OSError("connection reset"),
        kubernetes.client.exceptions.ApiException(status=403, reason="Forbidden"),
        ValueError("a bug in a deserializer"),  # not even that ends the thread
    ],
    ids=["error-event", "oserror", "forbidden", "bug"],
)
def test_an_error_in_the_watch_lists_again(trouble, caplog):
    timeline: list[Any] = []
    kube = ScriptedKube([([], "10"), ([], "20")], [trouble, []], timeline)
    run_script(kube, informer(kube, Recorder(timeline)))
    assert [e for e in timeline if e[0] != "resync"] == [
        ("list", None),
        ("watch", None, "10"),
        ("list", None),
        ("watch", None, "20"),
        ("watch", None, "20"),
    ]
    assert caplog.records and all(r.levelno >= logging.WARNING for r in caplog.records)


def test_a_failed_list_is_retried_before_anything_is_watched():
    timeline: list[Any] = []
    kube = ScriptedKube([OSError("unreachable"), ([], "7")], [[]], timeline)
    recorder = Recorder(timeline)
    run_script(kube, informer(kube, recorder))
    assert timeline[:4] == [("list", None), ("list", None), ("resync",), ("watch", None, "7")]


def test_an_exception_in_on_job_or_resync_does_not_stop_the_loop():
    timeline: list[Any] = []
    kube = ScriptedKube(
        snapshots=[([job("bad-g1", "bad", "1"), job("a-g1", "a", "2")], "10")],
        windows=[
            [event("MODIFIED", job("bad-g1", "bad", "11")), event("ADDED", job("b-g1", "b", "12"))],
            [event("MODIFIED", job("c-g1", "c", "13"))],
        ],
        timeline=timeline,
    )
    recorder = Recorder(timeline, fail_on={"bad"}, fail_resyncs=2)
    run_script(kube, informer(kube, recorder))
    jobs = [entry[2] for entry in timeline if entry[0] == "job"]
    assert jobs == ["bad", "a", "bad", "b", "c"]
    assert recorder.resyncs == 3  # the first two raised; the loop went on
    assert [entry[2] for entry in timeline if entry[0] == "watch"] == ["10", "12", "13"]


def test_a_watch_that_ends_at_once_backs_off_instead_of_spinning():
    timeline: list[Any] = []
    kube = ScriptedKube([([], "10")], [[], [], [], [], [], []], timeline)
    inf = informer(kube, Recorder(timeline), poll_seconds=4, clock=lambda: 0.0, initial_backoff=1)
    waits: list[float | None] = []

    class Counted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait(0)  # the wait is recorded, not spent

    inf._stop = Counted()  # the loop's only way to pause
    run_script(kube, inf)
    # one wait per window that ended at once, doubling, capped at the poll period
    # (so the resync after each window still comes at least once per poll period)
    assert waits == [1, 2, 4, 4, 4, 4]


def test_with_several_scopes_only_the_first_runs_the_resync():
    timeline: list[Any] = []
    scripts = {
        ns: ScriptedKube([([job(f"{ns}-g1", ns, "1", ns)], "10")], [[], []], timeline)
        for ns in ("a", "b")
    }

    class PerScope:
        def job_snapshot(self, namespace, selector):
            return scripts[namespace].job_snapshot(namespace, selector)

        def watch_jobs(self, namespace, *args):
            return scripts[namespace].watch_jobs(namespace, *args)

    recorder = Recorder(timeline)
    inf = Informer(PerScope(), ("a", "b"), SELECTOR, recorder.on_job, recorder.resync, 15,
                   initial_backoff=0.0, clock=lasting_clock())  # fmt: skip
    inf.start()
    assert all(s.exhausted.wait(HANG) for s in scripts.values())
    inf.stop()
    for s in scripts.values():
        s.release.set()
    assert inf.join(HANG)

    assert sorted(t.name for t in inf.threads) == ["informer-a", "informer-b"]
    assert set(recorder.resync_threads) == {"informer-a"}
    assert recorder.resyncs == 3  # after a's list and a's two windows; none from b
    assert {("job", "a", "a"), ("job", "b", "b")} <= set(timeline)
    assert [c[2] for c in scripts["b"].watch_calls] == ["10", "10", "10"]


def test_stop_ends_a_backoff_at_once():
    timeline: list[Any] = []
    waiting = threading.Event()
    kube = ScriptedKube([([], "10")], [OSError("reset")], timeline)

    class Recorded(Recorder):
        def resync(self) -> None:
            super().resync()
            if self.resyncs == 2:  # after the failed window: next comes an hour's backoff
                waiting.set()

    recorder = Recorded(timeline)
    inf = informer(kube, recorder, poll_seconds=7200, initial_backoff=3600)
    inf.start()
    assert waiting.wait(HANG)
    inf.stop()
    assert inf.join(HANG), "stop() did not wake the backoff"
    assert [e for e in timeline if e[0] == "list"] == [("list", None)]  # it never listed again


def test_stop_ends_a_window_at_the_next_event_and_closes_the_request():
    timeline: list[Any] = []
    closed = threading.Event()

    def endless() -> Iterator[dict[str, Any]]:
        try:
            for rv in itertools.count(11):  # a window that never ends by itself
                yield event("MODIFIED", job("a-g1", "a", str(rv)))
        finally:
            closed.set()

    class Endless(ScriptedKube):
        def watch_jobs(self, *args: Any) -> Iterator[dict[str, Any]]:
            super().watch_jobs(*args)
            self.window = endless()  # held here: only close() ends it, not the collector
            return self.window

    kube = Endless([([], "10")], [[]], timeline)

    class Stopping(Recorder):
        def on_job(self, namespace: str, name: str) -> None:
            super().on_job(namespace, name)
            inf.stop()  # stop() arrives while the window is open

    recorder = Stopping(timeline)
    inf = informer(kube, recorder)
    inf.start()
    assert inf.join(HANG)
    assert closed.is_set()
    assert [e for e in timeline if e[0] == "job"] == [("job", "ns", "a")]
    assert recorder.resyncs == 1  # the first; a stopped window is not followed by one


def test_only_a_controlling_stagingmerge_owns_a_job():
    def job_with(*refs):
        return {"metadata": {"ownerReferences": list(refs)}}

    mine = {"apiVersion": "stagingmerge.io/v1alpha1", "name": "m", "controller": True}
    assert owner_of(job_with(mine)) == "m"
    assert owner_of(job_with({**mine, "controller": False})) is None
    assert owner_of(job_with({**mine, "apiVersion": "batch/v1", "name": "cron"})) is None
    assert owner_of({"metadata": {}}) is None


# --- kube.Kube's side: the real client's Watch over a canned response ----------------------


class CannedResponse:
    """What urllib3 hands the client for a watch: lines of JSON, then the end."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.closed = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield from (self.body[i : i + 7] for i in range(0, len(self.body), 7))  # split lines

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class CannedBatch:
    def __init__(self, response: CannedResponse) -> None:
        self.response, self.calls = response, []

    def list_namespaced_job(self, namespace: str, **kwargs: Any) -> Any:
        self.calls.append((namespace, kwargs))
        if kwargs.get("watch"):
            return self.response
        items = [kubernetes.client.V1Job(metadata=kubernetes.client.V1ObjectMeta(name="a-g1"))]
        meta = kubernetes.client.V1ListMeta(resource_version="10")
        return kubernetes.client.V1JobList(items=items, metadata=meta)


def canned_kube(*events: dict[str, Any]) -> tuple[Kube, CannedBatch]:
    kube = Kube(api=kubernetes.client.ApiClient())
    batch = CannedBatch(CannedResponse(*events))
    kube._batch = batch
    return kube, batch


def test_kube_lists_with_the_selector_and_returns_the_version_to_watch_from():
    kube, batch = canned_kube()
    jobs, version = kube.job_snapshot("ns", SELECTOR)
    assert version == "10" and [j["metadata"]["name"] for j in jobs] == ["a-g1"]
    assert batch.calls[0][1]["label_selector"] == SELECTOR


def test_kube_watch_yields_plain_events_and_bookmarks_and_raises_410():
    kube, batch = canned_kube(
        event("ADDED", job("a-g1", "a", "11")),
        bookmark("15"),
        status_event(410),
        event("ADDED", job("never", "a", "16")),
    )
    seen = []
    with pytest.raises(ApiException) as gone:
        for e in kube.watch_jobs("ns", SELECTOR, "10", 15, 25.0):
            seen.append((e["type"], e["object"]["metadata"]["resourceVersion"]))
    assert gone.value.status == 410  # the client raises it: it never retries with a timeout
    assert seen == [("ADDED", "11"), ("BOOKMARK", "15")]
    assert batch.response.closed
    namespace, sent = batch.calls[0]
    assert namespace == "ns"
    assert sent["watch"] is True and sent["label_selector"] == SELECTOR
    assert sent["resource_version"] == "10" and sent["allow_watch_bookmarks"] is True
    assert (sent["timeout_seconds"], sent["_request_timeout"]) == (15, 25.0)


def test_kube_watch_closes_the_request_when_the_caller_stops_early():
    kube, batch = canned_kube(event("ADDED", job("a-g1", "a", "11")), bookmark("15"))
    events = kube.watch_jobs("ns", SELECTOR, "10", 15, 25.0)
    assert next(events)["type"] == "ADDED"
    events.close()  # type: ignore[attr-defined]
    assert batch.response.closed


# --- handlers.py: the wiring ---------------------------------------------------------------


def test_configure_starts_the_informer_and_cleanup_stops_it(monkeypatch):
    monkeypatch.setenv("STAGINGMERGE_DEFAULT_IMAGE", "ghcr.io/stagingmerge/merge:1")
    monkeypatch.setenv("STAGINGMERGE_QUEUE_POLL_SECONDS", "15")
    kopf = pytest.importorskip("kopf")
    handlers = importlib.import_module("stagingmerge_operator.handlers")
    made: list[Any] = []

    class Started:
        def __init__(self, kube, namespaces, selector, *, on_job, resync, poll_seconds):
            self.namespaces, self.selector = namespaces, selector
            self.on_job, self.resync, self.poll_seconds = on_job, resync, poll_seconds
            self.started = self.stopped = False
            made.append(self)

        def start(self):
            self.started = True

        def stop(self):
            self.stopped = True

    class Reconciled:
        def __init__(self):
            self.calls: list[Any] = []

        def reconcile(self, namespace, name):
            self.calls.append((namespace, name))

        def reconcile_unfinished(self):
            self.calls.append("unfinished")

    reconciled = Reconciled()
    monkeypatch.setattr(handlers, "Informer", Started)
    monkeypatch.setattr(handlers, "Kube", lambda **_: object())
    monkeypatch.setattr(handlers, "reconciler", lambda: reconciled)
    monkeypatch.setattr(handlers.metrics, "serve", lambda port: None)
    monkeypatch.setattr(handlers, "_informer", None)

    handlers.configure(settings=kopf.OperatorSettings())
    [informer_] = made  # one informer; no poller thread of its own any more
    assert informer_.started and not hasattr(handlers, "_Poller")
    assert informer_.selector == SELECTOR and informer_.poll_seconds == 15
    assert informer_.namespaces == handlers.CONFIG.namespaces
    informer_.on_job("ns", "m")
    informer_.resync()
    assert reconciled.calls == [("ns", "m"), "unfinished"]
    handlers.stop_informer()
    assert informer_.stopped
